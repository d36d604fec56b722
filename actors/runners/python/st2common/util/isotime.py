# st2common.util.isotime: ISO 8601 timestamps as StackStorm writes them
# ("2024-01-02T03:04:05.000006Z").

import datetime
import re

from st2common.util import date as date_utils

__all__ = ["format", "validate", "parse", "add_utc_tz"]

ISO8601_FORMAT = "%Y-%m-%dT%H:%M:%S"
ISO8601_FORMAT_MICROSECOND = "%Y-%m-%dT%H:%M:%S.%f"
ISO8601_UTC_REGEX = (
    r"^\d{4}\-\d{2}\-\d{2}(\s|T)\d{2}:\d{2}:\d{2}(\.\d{3,6})?(Z|\+00|\+0000|\+00:00)$"
)


def format(dt, usec=True, offset=True):
    """`dt` (a datetime or an ISO string) as text; UTC is written "Z"
    when `offset`, other offsets as "+HH:MM"."""
    if isinstance(dt, str):
        dt = parse(dt)
    text = dt.strftime(ISO8601_FORMAT_MICROSECOND if usec else ISO8601_FORMAT)
    if offset:
        delta = dt.utcoffset() if dt.tzinfo else datetime.timedelta(0)
        if not delta:
            text += "Z"
        else:
            minutes = int(delta.total_seconds() // 60)
            sign = "+" if minutes >= 0 else "-"
            text += "%s%02d:%02d" % (sign, abs(minutes) // 60, abs(minutes) % 60)
    return text


def validate(value, raise_exception=True):
    """Whether `value` is a UTC ISO 8601 timestamp (a datetime always is)."""
    if isinstance(value, datetime.datetime) or (
        isinstance(value, str) and re.match(ISO8601_UTC_REGEX, value)
    ):
        return True
    if raise_exception:
        raise ValueError("Datetime value does not match expected format.")
    return False


def parse(value, preserve_original_tz=False, validate_value=True):
    """An ISO 8601 string as an aware UTC datetime."""
    if validate_value:
        validate(value, raise_exception=True)
    if isinstance(value, datetime.datetime):
        return date_utils.convert_to_utc(value)
    return date_utils.parse(value, preserve_original_tz=preserve_original_tz)


def add_utc_tz(dt):
    """`dt` marked as UTC."""
    return date_utils.add_utc_tz(dt)
