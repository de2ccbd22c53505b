"""Event-time watermarks per partition, and the idle rule so silent partitions do not freeze alerts.

The rule (documented in the README):

- a partition's watermark is the highest event time seen on it minus the allowed lateness;
- when a partition has received nothing for ``idle_timeout`` of wall-clock time, its
  watermark follows the wall clock instead: ``now - allowed_lateness - idle_timeout``;
- a watermark never moves backwards.

While events flow, deadlines are judged purely on event time, so replaying recorded events
at any speed gives the same alerts; the wall clock only matters once a partition is idle.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_WATERMARK = -(2**62)


@dataclass(slots=True)
class Clock:
    """A partition's event-time clock, committed with its state."""

    high_ms: int = NO_WATERMARK
    watermark_ms: int = NO_WATERMARK


def idle_watermark(
    clock: Clock, *, now_ms: int, last_arrival_ms: int, allowed_lateness_ms: int, idle_timeout_ms: int
) -> int | None:
    """The watermark an idle partition moves to, or None if it is not idle (or would not move).

    ``last_arrival_ms`` is when (wall clock) the partition last delivered a record, or when
    it was assigned: a replay of old events is not overtaken by the wall clock before its
    first record arrives.

    Examples
    --------
    >>> c = Clock(high_ms=10_000, watermark_ms=9_000)
    >>> idle_watermark(c, now_ms=530_000, last_arrival_ms=500_000, allowed_lateness_ms=1_000, idle_timeout_ms=60_000)
    >>> idle_watermark(c, now_ms=600_000, last_arrival_ms=500_000, allowed_lateness_ms=1_000, idle_timeout_ms=60_000)
    539000
    """
    if now_ms - last_arrival_ms < idle_timeout_ms:
        return None
    mark = now_ms - allowed_lateness_ms - idle_timeout_ms
    return mark if mark > clock.watermark_ms else None
