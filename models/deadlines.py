"""Absence detection: each customer's pending deadlines, and which alerts open or resolve.

A customer has at most two deadlines, both in event time:

- **stall**: after the furthest critical-path touchpoint reached (``critical_path[crit]``),
  the next critical touchpoint is due within TE + z·σ of that activity;
- **drop-off**: after the last event, the customer may stay silent at most the current
  stage's ``max_silence``.

A deadline fires when the watermark passes it; an event that arrives first (even a late
one) moves it instead. To make the outcome depend only on the order of events — not on
batch boundaries or timer ticks — every event is judged against the watermark *as it was
when the event arrived*: a deadline that was already due then fires before the event is
applied (and the event then resolves it). This is the reference semantics; the Redis
script implements the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from models.alerts import AlertFacts, AlertStatus, AlertType
from models.journey import JourneyState
from models.journey_map import JourneyMap


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An alert that has fired and not yet been resolved."""

    touchpoint: str
    anchor_ms: int
    expected_ms: int
    stage: str
    severity: str
    next_touchpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Deadlines:
    """A customer's pending deadlines and open alerts."""

    crit: int | None = None  # index into journey.critical_path of the furthest critical touchpoint reached
    crit_ms: int = 0  # last time the customer did that touchpoint
    stall_due: int | None = None
    stall_open: OpenAlert | None = None
    drop_due: int | None = None
    drop_open: OpenAlert | None = None


def _facts(kind: AlertType, status: AlertStatus, customer_id: str, alert: OpenAlert, at_ms: int) -> AlertFacts:
    return AlertFacts(
        type=kind,
        status=status,
        customer_id=customer_id,
        stage=alert.stage,
        touchpoint=alert.touchpoint,
        anchor_ms=alert.anchor_ms,
        expected_ms=alert.expected_ms,
        at_ms=at_ms,
        next_touchpoint=alert.next_touchpoint,
        severity=alert.severity,
    )


def fire_due(
    deadlines: Deadlines, state: JourneyState, journey: JourneyMap, watermark_ms: int
) -> tuple[Deadlines, list[AlertFacts]]:
    """Open the alerts whose deadline the watermark has passed.

    Examples
    --------
    >>> from models.journey_map import parse_journey_map
    >>> jm = parse_journey_map({"stages": [{"name": "s", "max_silence": "1h"}], "touchpoints": {"a": {"stage": "s"}}})
    >>> st = JourneyState("c1", "s", 0, 0, 0, 1, path=((0, "a"),))
    >>> dl, facts = fire_due(Deadlines(drop_due=3_600_000), st, jm, watermark_ms=3_600_000)
    >>> [(f.type.value, f.status.value, f.touchpoint) for f in facts], dl.drop_due
    ([('drop_off', 'open', 'a')], None)
    """
    out: list[AlertFacts] = []
    cid = state.customer_id
    if deadlines.stall_due is not None and deadlines.stall_open is None and deadlines.stall_due <= watermark_ms:
        assert deadlines.crit is not None
        tp = journey.critical_path[deadlines.crit]
        stage = journey.stage_of(tp)
        alert = OpenAlert(
            touchpoint=tp,
            anchor_ms=deadlines.crit_ms,
            expected_ms=journey.stall_after_ms[deadlines.crit],
            stage=stage,
            severity=journey.severity.get(stage, "medium"),
            next_touchpoint=journey.critical_path[deadlines.crit + 1],
        )
        deadlines = replace(deadlines, stall_due=None, stall_open=alert)
        out.append(_facts(AlertType.STALLED_CRITICAL_PATH, AlertStatus.OPEN, cid, alert, watermark_ms))
    if deadlines.drop_due is not None and deadlines.drop_open is None and deadlines.drop_due <= watermark_ms:
        alert = OpenAlert(
            touchpoint=state.path[-1][1],
            anchor_ms=state.last_seen_ms,
            expected_ms=journey.max_silence_ms[state.stage] or 0,
            stage=state.stage,
            severity=journey.severity.get(state.stage, "medium"),
        )
        deadlines = replace(deadlines, drop_due=None, drop_open=alert)
        out.append(_facts(AlertType.DROP_OFF, AlertStatus.OPEN, cid, alert, watermark_ms))
    return deadlines, out


def after_event(
    deadlines: Deadlines, state: JourneyState, touchpoint: str, ts_ms: int, journey: JourneyMap
) -> tuple[Deadlines, list[AlertFacts]]:
    """Account for one applied event (``state`` is the state after it): progress, resolutions, new deadlines."""
    out: list[AlertFacts] = []
    crit, crit_ms, stall_open, drop_open = deadlines.crit, deadlines.crit_ms, deadlines.stall_open, deadlines.drop_open
    pos = journey.critical_index.get(touchpoint)
    if pos is not None:
        if crit is None or pos > crit:
            if stall_open is not None and pos > journey.critical_index[stall_open.touchpoint]:
                out.append(
                    _facts(AlertType.STALLED_CRITICAL_PATH, AlertStatus.RESOLVED, state.customer_id, stall_open, ts_ms)
                )
                stall_open = None
            crit, crit_ms = pos, ts_ms
        elif pos == crit and ts_ms > crit_ms:
            crit_ms = ts_ms
    if drop_open is not None and ts_ms > drop_open.anchor_ms:
        out.append(_facts(AlertType.DROP_OFF, AlertStatus.RESOLVED, state.customer_id, drop_open, ts_ms))
        drop_open = None

    stall_due = None
    if stall_open is None and crit is not None and journey.stall_after_ms[crit] > 0:
        stall_due = crit_ms + journey.stall_after_ms[crit]
    silence = journey.max_silence_ms.get(state.stage)
    drop_due = state.last_seen_ms + silence if drop_open is None and silence else None
    return Deadlines(crit, crit_ms, stall_due, stall_open, drop_due, drop_open), out
