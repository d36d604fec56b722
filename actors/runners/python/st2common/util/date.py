# st2common.util.date: timezone-aware datetimes in UTC.

import datetime

__all__ = ["get_datetime_utc_now", "add_utc_tz", "convert_to_utc", "parse"]


def get_datetime_utc_now():
    """The current time, aware, in UTC."""
    return datetime.datetime.now(datetime.timezone.utc)


def add_utc_tz(dt):
    """`dt` marked as UTC; an aware datetime must already be UTC."""
    if dt.tzinfo and dt.utcoffset() != datetime.timedelta(0):
        raise ValueError("datetime value %s is not in UTC" % dt)
    return dt.replace(tzinfo=datetime.timezone.utc)


def convert_to_utc(dt):
    """`dt` in UTC; a naive datetime is taken to be UTC already."""
    if dt.tzinfo is None:
        return add_utc_tz(dt)
    return dt.astimezone(datetime.timezone.utc)


def parse(value, preserve_original_tz=False):
    """An ISO 8601 string as an aware datetime, in UTC unless
    `preserve_original_tz`; a string without an offset is UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(text)
    if dt.tzinfo is None:
        return add_utc_tz(dt)
    if preserve_original_tz:
        return dt
    return convert_to_utc(dt)
