"""Gap analysis: expected (PERT) against actual transition times, conversion and drop-off rates.

The store keeps, per event-time day, counts that add up across days (so a sliding window
is a sum): customers reaching each touchpoint and stage for the first time, transitions
along each flow activity with their duration in log-scale buckets (four per doubling, so a
percentile read from them is within ±9 %), and drop-off alerts per stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.journey_map import JourneyMap


def bucket_seconds(bucket: int) -> float:
    """Geometric middle of a duration bucket ``b = floor(4 log2 s)``.

    Examples
    --------
    >>> round(bucket_seconds(0), 3), round(bucket_seconds(4), 3)
    (1.091, 2.181)
    """
    return 2 ** ((bucket + 0.5) / 4)


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q``-quantile (0..1) of durations in a bucket histogram, or None when empty.

    Examples
    --------
    >>> import math
    >>> h = {math.floor(4 * math.log2(s)): 1 for s in (60, 120, 3600)}
    >>> round(percentile(h, 0.5))  # 120 s, read back within the ±9 % of its bucket
    117
    """
    total = sum(histogram.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket_seconds(bucket)
    return bucket_seconds(max(histogram))  # pragma: no cover - rank <= total


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def gap_report(journey: JourneyMap, counts: Mapping[str, int]) -> dict[str, Any]:
    """Per stage and per flow activity: what the map expects and what customers actually do.

    ``counts`` are the summed fields the store keeps: ``r|tp``, ``c|x>y``, ``t|x>y|bucket``,
    ``s|stage``, ``d|stage``.
    """
    stages = []
    for i, stage in enumerate(journey.stages):
        reached = counts.get(f"s|{stage}", 0)
        nxt = counts.get(f"s|{journey.stages[i + 1]}", 0) if i + 1 < len(journey.stages) else None
        dropped = counts.get(f"d|{stage}", 0)
        stages.append(
            {
                "stage": stage,
                "reached": reached,
                "converted_to_next": _rate(nxt, reached) if nxt is not None else None,
                "drop_offs": dropped,
                "drop_off_rate": _rate(dropped, reached),
                "max_silence_seconds": journey.max_silence_s.get(stage),
            }
        )
    activities = []
    if journey.flow is not None:
        timings = {(t.activity.source, t.activity.target): t for t in journey.flow.activity_timings()}
        for a in journey.flow.activities:
            edge = f"{a.source}>{a.target}"
            hist = {
                int(field.rsplit("|", 1)[1]): n for field, n in counts.items() if field.startswith(f"t|{edge}|")
            }
            median, p90 = percentile(hist, 0.5), percentile(hist, 0.9)
            activities.append(
                {
                    "from": a.source,
                    "to": a.target,
                    "critical": timings[(a.source, a.target)].critical,
                    "expected_seconds": round(a.expected, 1),
                    "sigma_seconds": round(a.sigma, 1),
                    "actual_median_seconds": round(median, 1) if median is not None else None,
                    "actual_p90_seconds": round(p90, 1) if p90 is not None else None,
                    "median_vs_expected": round(median / a.expected, 2) if median and a.expected else None,
                    "transitions": counts.get(f"c|{edge}", 0),
                    "conversion_rate": _rate(counts.get(f"c|{edge}", 0), counts.get(f"r|{a.source}", 0)),
                }
            )
    return {"stages": stages, "activities": activities}
