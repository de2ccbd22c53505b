"""Rolling revenue in event time, from per-day buckets summed on read.

A customer's revenue is kept as ``{day: amount}``, the day being the event-time bucket of
each purchase. A window sum ("revenue over the last 30 days") is computed when it is read,
against the reader's ``now``: as time passes, old days simply fall out of the window, so no
job has to rescan every customer to age their totals. :func:`prune` bounds the map by
dropping days that no window can reach any more.

A late purchase lands in the bucket of its own event time, not of its arrival: it counts
in exactly the windows that contain the moment it happened, and in none once that moment
has aged out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from models.durations import DAY_MS


def bucket_of(ts_ms: int, bucket_ms: int = DAY_MS) -> int:
    """The bucket (by default the UTC day number) an event time falls in.

    Examples
    --------
    >>> bucket_of(0), bucket_of(DAY_MS - 1), bucket_of(DAY_MS)
    (0, 0, 1)
    >>> bucket_of(1_700_000_000_000)
    19675
    >>> bucket_of(-1)   # floor, so times before 1970 are still in the right day
    -1
    """
    if bucket_ms <= 0:
        raise ValueError(f"bucket_ms must be positive, not {bucket_ms}")
    return ts_ms // bucket_ms


def window_sum(buckets: Mapping[int, float], now_ms: int, window_days: int) -> float:
    """Sum of the day buckets within the last ``window_days`` days, ``now``'s day included.

    The window is the days ``(day(now) − window_days, day(now)]``; days after ``now`` (an
    event time ahead of the reader's clock) are not counted yet. Refunds may make buckets
    negative; the total is floored at 0.0, since revenue over a window is never negative.
    With non-negative buckets the sum only grows with ``window_days``.

    Examples
    --------
    >>> now = 10 * DAY_MS + 5_000                       # during day 10
    >>> buckets = {10: 20.0, 9: 5.0, 3: 100.0, 11: 7.0}
    >>> window_sum(buckets, now, 1), window_sum(buckets, now, 2), window_sum(buckets, now, 30)
    (20.0, 25.0, 125.0)

    A late purchase made on day 4 but seen on day 10 counts in day 4's bucket:

    >>> late = {**buckets, bucket_of(4 * DAY_MS + 1): 50.0}
    >>> window_sum(late, now, 7), window_sum(late, now, 6)
    (75.0, 25.0)
    >>> window_sum({10: 5.0, 9: -30.0}, now, 2)          # refunds beyond the revenue
    0.0
    """
    if window_days < 0:
        raise ValueError(f"window_days must not be negative, not {window_days}")
    today = bucket_of(now_ms)
    first = today - window_days
    # fsum: exact, so the result does not depend on the mapping's order (a Redis hash has none).
    total = math.fsum(amount for day, amount in buckets.items() if first < day <= today)
    return max(total, 0.0)


def prune(buckets: Mapping[int, float], now_ms: int, keep_days: int) -> dict[int, float]:
    """The buckets that a window of up to ``keep_days`` days, read at ``now`` or later, can still reach.

    Days before ``day(now) − keep_days + 1`` are dropped; days after ``now`` are kept
    (they come into windows later). Pass the longest window that is ever read.

    Examples
    --------
    >>> prune({10: 20.0, 9: 5.0, 3: 100.0, 11: 7.0}, 10 * DAY_MS, keep_days=2)
    {10: 20.0, 9: 5.0, 11: 7.0}
    """
    if keep_days < 0:
        raise ValueError(f"keep_days must not be negative, not {keep_days}")
    first = bucket_of(now_ms) - keep_days
    return {day: amount for day, amount in buckets.items() if day > first}
