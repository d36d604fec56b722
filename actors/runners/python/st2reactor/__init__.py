# Squall's stand-in for StackStorm's st2reactor package: only what sensors
# import (st2reactor.sensor.base).
