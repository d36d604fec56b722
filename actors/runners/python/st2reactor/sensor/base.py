# The base classes StackStorm sensors subclass, written for Squall with
# StackStorm's interface: `Sensor` (passive: run() blocks for the sensor's
# life) and `PollingSensor` (run() calls poll() every poll_interval
# seconds). Squall's sensor wrapper builds them with a sensor_service and
# the pack's config, and calls setup(), then run(); add_trigger(),
# update_trigger() and remove_trigger() as rules create, change and remove
# the sensor's triggers; cleanup() when the sensor stops.

import abc
import time

__all__ = ["BaseSensor", "Sensor", "PollingSensor"]


class BaseSensor(metaclass=abc.ABCMeta):
    """What every sensor has: its sensor_service and its pack's config."""

    def __init__(self, sensor_service, config=None):
        self._sensor_service = sensor_service
        self.sensor_service = sensor_service
        self._config = config or {}
        self.config = self._config

    @abc.abstractmethod
    def setup(self):
        """Runs once, before run()."""

    @abc.abstractmethod
    def run(self):
        """The sensor's main loop."""

    @abc.abstractmethod
    def cleanup(self):
        """Runs once, when the sensor stops."""

    @abc.abstractmethod
    def add_trigger(self, trigger):
        """A rule created a trigger of one of the sensor's types."""

    @abc.abstractmethod
    def update_trigger(self, trigger):
        """A trigger of one of the sensor's types changed."""

    @abc.abstractmethod
    def remove_trigger(self, trigger):
        """No enabled rule uses this trigger any more."""


class Sensor(BaseSensor):
    """A passive sensor: run() blocks for as long as the sensor lives."""

    @abc.abstractmethod
    def run(self):
        """Blocks; dispatches triggers as events come."""


class PollingSensor(BaseSensor):
    """A sensor whose poll() runs every poll_interval seconds."""

    def __init__(self, sensor_service, config=None, poll_interval=5):
        super(PollingSensor, self).__init__(
            sensor_service=sensor_service, config=config
        )
        self._poll_interval = poll_interval

    @abc.abstractmethod
    def poll(self):
        """Looks once; dispatches what it finds."""

    def run(self):
        while True:
            self.poll()
            time.sleep(self._poll_interval)

    def get_poll_interval(self):
        return self._poll_interval

    def set_poll_interval(self, poll_interval):
        self._poll_interval = poll_interval
