"""How records spell time: RFC 3339 UTC to the millisecond, and the times a record may hold."""

from __future__ import annotations

import datetime
import math
import re

from pytest_lrun.core.text import shown_value

__all__ = ["finite_float", "parse_time", "rfc3339", "to_millis"]

_UTC = datetime.timezone.utc


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)


_MS = datetime.timedelta(milliseconds=1)


# What Python's datetime can hold (the years 1 to 9999), in milliseconds since the epoch.
_MIN_MS = (datetime.datetime.min.replace(tzinfo=_UTC) - _EPOCH) // _MS


_MAX_MS = (datetime.datetime.max.replace(tzinfo=_UTC) - _EPOCH) // _MS


# RFC 3339 section 5.6 (a date-time): the fraction may have any length, the offset may be Z or +hh:mm.
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)


def finite_float(value: object) -> float | None:
    """``value`` as a finite float; None for a bool, a non-number, NaN, infinity or ``10**400``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def to_millis(ts: object) -> int | None:
    """``ts`` unix seconds in whole milliseconds (nearest); None unless a number in the years 1 to 9999."""
    seconds = finite_float(ts)
    if seconds is None or not math.isfinite(scaled := seconds * 1000):
        return None
    millis = round(scaled)
    return millis if _MIN_MS <= millis <= _MAX_MS else None


def rfc3339(ts: float) -> str:
    """Unix seconds ``ts`` as an RFC 3339 UTC time to the millisecond: ``2026-11-25T14:30:12.415Z``.

    :raises ValueError: ``ts`` is not finite, or outside the years 1 to 9999
    """
    millis = to_millis(ts)
    if millis is None:
        raise ValueError(f"not a time of the years 1 to 9999: {ts!r}")
    moment = _EPOCH + millis * _MS
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def parse_time(value: object, what: str = "a time") -> float:
    """Unix seconds of a record's time, to the millisecond.

    ``value`` is an RFC 3339 string (any offset; ``Z`` is what :func:`rfc3339`
    writes; digits past the millisecond are dropped) or, from records written by
    0.1.0, a number of unix seconds.

    :param what: names the value in errors (e.g. ``run record field 'created_at'``)
    :raises ValueError: anything else, a time that does not exist, or one outside the years 1 to 9999
        (a number that is not finite among them)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        millis = to_millis(value)
    else:
        match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"{what} must be an RFC 3339 time, not {shown_value(value)}")
        year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
        try:
            moment = datetime.datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=_UTC
            )
        except ValueError as exc:  # 2026-02-30, 25:00, ...
            raise ValueError(f"{what} is not a valid time: {shown_value(value)} ({exc})") from None
        offset_s = 0 if sign is None else (int(off_h) * 60 + int(off_m)) * (-60 if sign == "-" else 60)
        millis = (moment - _EPOCH) // _MS - offset_s * 1000 + int((fraction or "0")[:3].ljust(3, "0"))
        if not _MIN_MS <= millis <= _MAX_MS:
            millis = None
    if millis is None:
        raise ValueError(f"{what} must be a finite time in the years 1 to 9999, not {shown_value(value)}")
    return millis / 1000
