"""Gap analysis: expected (PERT) against actual transition times, conversion and drop-off rates.

The store keeps, per event-time day, counts that add up across days (so a sliding window
is a sum): customers reaching each touchpoint and stage for the first time, transitions
along each flow activity with their duration in log-scale buckets (four per doubling, so a
percentile read from them is within ±9 %), and drop-off alerts per stage. Each counter is kept
per segment — the customer's acquisition channel and their weekly cohort — and the whole is the
sum over channels (:func:`whole`), so a segmented report costs one more counter, not two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from models.journey import DAY_MS, JourneyState
from models.journey_map import JourneyMap

CHANNEL_SEGMENT, COHORT_SEGMENT = "ch:", "co:"


def segments(channel: str, week: int) -> tuple[str, str]:
    """The two segments a customer's gap counters are kept under: their acquisition channel (as
    aggregates name it) and their weekly cohort (week of first seen).

    Examples
    --------
    >>> segments("email", 2917)
    ('ch:email', 'co:2917')
    """
    return f"{CHANNEL_SEGMENT}{channel}", f"{COHORT_SEGMENT}{week}"


def whole(counts: Mapping[str, int]) -> dict[str, int]:
    """The counters of everyone: every counter is kept once per channel segment, so the whole is their sum.

    Examples
    --------
    >>> whole({"ch:email|r|signup": 2, "ch:other|r|signup": 1, "co:2917|r|signup": 3, "k|b": 9})
    {'r|signup': 3}
    """
    out: dict[str, int] = {}
    for key, n in counts.items():
        if key.startswith(CHANNEL_SEGMENT):
            name = key.split("|", 1)[1]
            out[name] = out.get(name, 0) + n
    return out


def segment(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
    """The counters of one segment (``ch:email``, ``co:2917``), without its prefix.

    Examples
    --------
    >>> segment({"ch:email|r|signup": 2, "co:2917|r|signup": 3}, "co:2917")
    {'r|signup': 3}
    """
    start = prefix + "|"
    return {k[len(start):]: v for k, v in counts.items() if k.startswith(start)}


def duration_bucket(seconds: float) -> int:
    """The histogram bucket of a transition time: ``floor(4 log2 s)``, at least 1 s.

    Examples
    --------
    >>> duration_bucket(1), duration_bucket(60), duration_bucket(0.2)
    (0, 23, 0)
    """
    return math.floor(4 * math.log2(max(1.0, seconds)))


def event_increments(
    state: JourneyState, touchpoint: str, ts_ms: int, journey: JourneyMap, *, rank_before: int
) -> list[tuple[int, str]]:
    """The gap counters one applied event adds, as ``(event-time day, field)`` pairs.

    ``state`` is the customer's state right after the event and ``rank_before`` their stage's
    rank before it (-1 for a new customer). Counted: ``r|tp`` the first time a customer does a
    touchpoint; ``c|x>y`` and ``t|x>y|bucket`` for a flow activity when its target is done for
    the first time after its source (or a late source arrives before a target done once);
    ``s|stage`` for every stage reached for the first time. Each lands on the event-time day
    of the moment it describes.

    Examples
    --------
    >>> from models.journey_map import parse_journey_map
    >>> jm = parse_journey_map({"stages": ["a", "b"], "touchpoints": {"x": {"stage": "a"}, "y": {"stage": "b"}},
    ...     "flow": [{"from": "x", "to": "y", "optimistic": "1m", "likely": "2m", "pessimistic": "3m"}]})
    >>> st = JourneyState("c1", "b", 60_000, 0, 60_000, 2, touchpoints={"x": 1, "y": 1},
    ...                   touchpoint_last_ms={"x": 0, "y": 60_000})
    >>> event_increments(st, "y", 60_000, jm, rank_before=0)
    [(0, 's|b'), (0, 'r|y'), (0, 'c|x>y'), (0, 't|x>y|23')]
    """
    out: list[tuple[int, str]] = []
    day = ts_ms // DAY_MS
    rank = journey.rank_of(state.stage)
    for r in range(rank_before + 1, rank + 1):
        out.append((day, f"s|{journey.stages[r]}"))
    if state.touchpoints.get(touchpoint) != 1:
        return out
    out.append((day, f"r|{touchpoint}"))
    last = state.touchpoint_last_ms
    # the first time this touchpoint: it converts from the steps done before it...
    for x in journey.flow_sources.get(touchpoint, ()):
        tx = last.get(x)
        if tx is not None and tx <= ts_ms:
            out += _transition(x, touchpoint, tx, ts_ms)
    # ... and a late first step converts to the steps already done (once) after it
    for y in journey.flow_targets.get(touchpoint, ()):
        ty = last.get(y)
        if ty is not None and ty >= ts_ms and state.touchpoints.get(y) == 1:
            out += _transition(touchpoint, y, ts_ms, ty)
    return out


def _transition(x: str, y: str, tx: int, ty: int) -> list[tuple[int, str]]:
    day = ty // DAY_MS
    return [(day, f"c|{x}>{y}"), (day, f"t|{x}>{y}|{duration_bucket((ty - tx) / 1000)}")]


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
