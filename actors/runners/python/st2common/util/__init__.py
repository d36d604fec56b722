# st2common.util: the time helpers packs import (isotime, date).
