"""Event-time watermarks per partition, with an idle rule so silent partitions do not freeze alerts.

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
class PartitionClock:
    """What one partition has shown of event time, and when (wall clock) it last showed anything."""

    high_ms: int = NO_WATERMARK
    last_arrival_wall_ms: int | None = None
    watermark_ms: int = NO_WATERMARK


class Watermarks:
    """Watermarks of the partitions a worker owns.

    Examples
    --------
    >>> w = Watermarks(allowed_lateness_ms=1_000, idle_timeout_ms=60_000)
    >>> w.observe(0, event_ms=10_000, wall_ms=500_000)
    9000
    >>> w.observe(0, event_ms=4_000, wall_ms=500_100)   # a late event: never moves it back
    9000
    >>> w.current(0, wall_ms=530_000)                    # quiet, but not idle yet
    9000
    >>> w.current(0, wall_ms=600_000)                    # idle for 100 s: follows the wall clock
    539000
    """

    def __init__(self, *, allowed_lateness_ms: int, idle_timeout_ms: int) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.partitions: dict[int, PartitionClock] = {}

    def restore(self, partition: int, high_ms: int, watermark_ms: int) -> None:
        """Resume from persisted values (after a restart or a rebalance)."""
        clock = self.partitions.setdefault(partition, PartitionClock())
        clock.high_ms = max(clock.high_ms, high_ms)
        clock.watermark_ms = max(clock.watermark_ms, watermark_ms)

    def observe(self, partition: int, event_ms: int, wall_ms: int) -> int:
        """Account for one event; return the partition's watermark after it."""
        clock = self.partitions.setdefault(partition, PartitionClock())
        clock.last_arrival_wall_ms = wall_ms
        if event_ms > clock.high_ms:
            clock.high_ms = event_ms
            clock.watermark_ms = max(clock.watermark_ms, event_ms - self.allowed_lateness_ms)
        return clock.watermark_ms

    def current(self, partition: int, wall_ms: int) -> int:
        """The partition's watermark now, applying the idle rule."""
        clock = self.partitions.setdefault(partition, PartitionClock())
        if clock.last_arrival_wall_ms is None:
            # Just assigned: the idle timer starts now, so a replay of old events is not
            # overtaken by the wall clock before its first event arrives.
            clock.last_arrival_wall_ms = wall_ms
        if wall_ms - clock.last_arrival_wall_ms >= self.idle_timeout_ms:
            idle_mark = wall_ms - self.allowed_lateness_ms - self.idle_timeout_ms
            clock.watermark_ms = max(clock.watermark_ms, idle_mark)
        return clock.watermark_ms

    def forget(self, partition: int) -> None:
        """Drop a partition this worker no longer owns."""
        self.partitions.pop(partition, None)
