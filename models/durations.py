"""Human-friendly durations (``90s``, ``2h``, ``3d``) to and from seconds."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | float | int) -> float:
    """Parse a duration into seconds.

    Parameters
    ----------
    text
        A number of seconds, or one or more ``<number><unit>`` parts with the
        units ``ms``, ``s``, ``m``, ``h``, ``d``, ``w`` (``1h30m``).

    Returns
    -------
    float
        The duration in seconds.

    Raises
    ------
    ValueError
        When the text is not a non-negative duration.

    Examples
    --------
    >>> parse_duration("90s")
    90.0
    >>> parse_duration("1h30m")
    5400.0
    >>> parse_duration(2.5)
    2.5
    >>> parse_duration("3 parsecs")
    Traceback (most recent call last):
    ...
    ValueError: not a duration: '3 parsecs' (use e.g. 90s, 15m, 2h, 3d)
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 3d)")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return float(text)
    s = text.strip().replace(" ", "")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        return parse_duration(value)
    pos, total = 0, 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 3d)")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds in the largest units that keep it short.

    Examples
    --------
    >>> format_duration(5400)
    '1h30m'
    >>> format_duration(45)
    '45s'
    >>> format_duration(0.25)
    '250ms'
    """
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    rest = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            out.append(f"{n}{unit}")
        if len(out) == 2:
            break
    return "".join(out) or "0s"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with a ``Z`` (any date, before 1970 too).

    Examples
    --------
    >>> iso(0), iso(762523200123), iso(-1)
    ('1970-01-01T00:00:00.000Z', '1994-03-01T12:00:00.123Z', '1969-12-31T23:59:59.999Z')
    """
    day, rest = divmod(ms, DAY_MS)
    seconds, milli = divmod(rest, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_date(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{milli:03d}Z"


@functools.lru_cache(maxsize=4096)
def _date(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).date().isoformat()
