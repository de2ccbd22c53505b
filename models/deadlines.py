"""Absence detection: each customer's pending deadlines, and which alerts open or resolve.

A customer has at most two deadlines, both in event time:

- **stall**: after the furthest critical-path touchpoint reached (``critical_path[crit]``),
  the next critical touchpoint is due within TE + z·σ of that activity;
- **drop-off**: after the last event, the customer may stay silent at most the current
  stage's ``max_silence``.

A deadline fires when the partition's watermark passes it: the batch engine
(:mod:`models.partition`) calls :func:`fire_due` for a customer in record order, the moment
the watermark crosses that customer's earliest deadline, so the outcome depends only on the
order of the records, never on batch boundaries or timer ticks. An event that arrives first
(even a late one) moves the deadline instead.

**Late history does not cry wolf.** A deadline that is already overdue when it is set
(the event that set it arrived after the watermark had passed its due time: a customer's
history arriving late) does not fire at once: it is *held* until the watermark has moved
``late_grace_ms`` further, giving the rest of that customer's late history the chance to
arrive and move it. A late history that arrives in order therefore opens no alert for a
stall that never existed in event time.
"""

from __future__ import annotations

from models.alerts import AlertFacts, AlertStatus, AlertType
from models.journey import JourneyState, OpenAlert
from models.journey_map import JourneyMap


def resolve_open(state: JourneyState, at_ms: int) -> list[AlertFacts]:
    """Resolve every open alert of a profile that ends (an anonymous visitor merged into a customer)."""
    out = [_facts(t, AlertStatus.RESOLVED, state.customer_id, opened, at_ms)
           for t, opened in ((AlertType.STALLED_CRITICAL_PATH, state.stall_open), (AlertType.DROP_OFF, state.drop_open))
           if opened is not None]
    state.stall_open = state.drop_open = None
    state.stall_due = state.drop_due = None
    return out


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


def next_deadline(state: JourneyState) -> int | None:
    """The earliest watermark at which :func:`fire_due` would open an alert, None if none would.

    Examples
    --------
    >>> st = JourneyState("c1", "s", 0, 0, 0, stall_due=500, drop_due=300)
    >>> next_deadline(st)
    300
    >>> st.hold_ms = 400
    >>> next_deadline(st)
    400
    """
    due = [d for d, open_ in ((state.stall_due, state.stall_open), (state.drop_due, state.drop_open))
           if d is not None and open_ is None]
    if not due:
        return None
    return max(min(due), state.hold_ms) if state.hold_ms is not None else min(due)


def fire_due(state: JourneyState, journey: JourneyMap, watermark_ms: int) -> list[AlertFacts]:
    """Open the alerts whose deadline the watermark has passed (in place); return their facts.

    Examples
    --------
    >>> from models.journey_map import parse_journey_map
    >>> jm = parse_journey_map({"stages": [{"name": "s", "max_silence": "1h"}], "touchpoints": {"a": {"stage": "s"}}})
    >>> st = JourneyState("c1", "s", 0, 0, 0, 1, path=[(0, "a", "")], drop_due=3_600_000)
    >>> facts = fire_due(st, jm, watermark_ms=3_600_000)
    >>> [(f.type.value, f.status.value, f.touchpoint, f.at_ms) for f in facts], st.drop_due
    ([('drop_off', 'open', 'a', 3600000)], None)
    """
    if state.hold_ms is not None and watermark_ms < state.hold_ms:
        return []
    out: list[AlertFacts] = []
    cid = state.customer_id
    if state.stall_due is not None and state.stall_open is None and state.stall_due <= watermark_ms:
        if state.crit is not None and state.crit + 1 < len(journey.critical_path):
            tp = journey.critical_path[state.crit]
            stage = journey.stage_of(tp) if tp in journey.touchpoints else state.stage
            alert = OpenAlert(
                touchpoint=tp,
                anchor_ms=state.crit_ms,
                expected_ms=journey.stall_after_ms[state.crit],
                stage=stage,
                severity=journey.severity.get(stage, "medium"),
                next_touchpoint=journey.critical_path[state.crit + 1],
            )
            state.stall_open = alert
            out.append(_facts(AlertType.STALLED_CRITICAL_PATH, AlertStatus.OPEN, cid, alert, watermark_ms))
        state.stall_due = None  # (a map reload may have shortened the critical path: nothing to fire)
    if state.drop_due is not None and state.drop_open is None and state.drop_due <= watermark_ms:
        alert = OpenAlert(
            touchpoint=state.path[-1][1],
            anchor_ms=state.last_seen_ms,
            expected_ms=state.drop_due - state.last_seen_ms,
            stage=state.stage,
            severity=journey.severity.get(state.stage, "medium"),
        )
        state.drop_due = None
        state.drop_open = alert
        out.append(_facts(AlertType.DROP_OFF, AlertStatus.OPEN, cid, alert, watermark_ms))
    return out


def after_event(
    state: JourneyState,
    touchpoint: str,
    ts_ms: int,
    journey: JourneyMap,
    *,
    watermark_ms: int,
    late_grace_ms: int,
) -> list[AlertFacts]:
    """Account for one applied event (``state`` is the state after it, changed in place):
    progress along the critical path, resolutions, and the new deadlines.

    ``watermark_ms`` is the partition's watermark when the event arrived: a new deadline that
    is already at or below it is held until ``watermark_ms + late_grace_ms`` (see the module
    docstring).

    Examples
    --------
    >>> from models.journey_map import parse_journey_map
    >>> jm = parse_journey_map({"stages": [{"name": "s", "max_silence": "1h"}], "touchpoints": {"a": {"stage": "s"}}})
    >>> st = JourneyState("c1", "s", 0, 0, 0, 1, path=[(0, "a", "")])
    >>> after_event(st, "a", 0, jm, watermark_ms=-1, late_grace_ms=600_000), st.drop_due, st.hold_ms
    ([], 3600000, None)

    The same event arriving when the watermark is already two hours on: held ten minutes more.

    >>> after_event(st, "a", 0, jm, watermark_ms=7_200_000, late_grace_ms=600_000), st.hold_ms
    ([], 7800000)
    """
    out: list[AlertFacts] = []
    cid = state.customer_id
    pos = journey.critical_index.get(touchpoint)
    if pos is not None:
        if state.crit is None or pos > state.crit:
            opened = state.stall_open
            if opened is not None and pos > journey.critical_index.get(opened.touchpoint, -1):
                out.append(_facts(AlertType.STALLED_CRITICAL_PATH, AlertStatus.RESOLVED, cid, opened, ts_ms))
                state.stall_open = None
            state.crit, state.crit_ms = pos, ts_ms
        elif pos == state.crit and ts_ms > state.crit_ms:
            state.crit_ms = ts_ms
    if state.drop_open is not None and ts_ms > state.drop_open.anchor_ms:
        out.append(_facts(AlertType.DROP_OFF, AlertStatus.RESOLVED, cid, state.drop_open, ts_ms))
        state.drop_open = None

    state.stall_due = None
    crit = state.crit
    if state.stall_open is None and crit is not None and crit < len(journey.stall_after_ms):
        after = journey.stall_after_ms[crit]
        if after > 0:
            state.stall_due = state.crit_ms + after
    silence = journey.max_silence_ms.get(state.stage)
    state.drop_due = state.last_seen_ms + silence if state.drop_open is None and silence else None
    due = [d for d in (state.stall_due, state.drop_due) if d is not None]
    state.hold_ms = watermark_ms + late_grace_ms if due and min(due) <= watermark_ms else None
    return out
