"""Per-customer journey state and the rule that advances it by one event.

This is the reference semantics. The Redis store applies the same rule inside one Lua
script (``streams/journey_store.lua``); an integration test checks both agree.

The state is a function of the *set* of events applied, not of their arrival order:
first/last seen are min/max, the stage is the furthest reached, counts add up, and the
recent path is ordered by event time. So redelivered and out-of-order events are safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum

from models.events import TouchpointEvent
from models.journey_map import JourneyMap


class Outcome(IntEnum):
    """What applying one event did. Values are what the Redis script returns."""

    DUPLICATE = 0
    APPLIED = 1
    TOO_LATE = 2


@dataclass(frozen=True, slots=True)
class JourneyState:
    """Where one customer is in the journey (times are event time, epoch ms)."""

    customer_id: str
    stage: str
    stage_since_ms: int
    first_seen_ms: int
    last_seen_ms: int
    events: int
    touchpoints: dict[str, int] = field(default_factory=dict)
    touchpoint_last_ms: dict[str, int] = field(default_factory=dict)
    path: tuple[tuple[int, str], ...] = ()
    channel: str | None = None
    channel_ms: int | None = None
    # event id -> event time, for events newer than last_seen minus the dedupe window
    seen: dict[str, int] = field(default_factory=dict, repr=False)


def advance(
    state: JourneyState | None,
    event: TouchpointEvent,
    journey: JourneyMap,
    *,
    dedupe_window_ms: int,
    path_length: int,
) -> tuple[JourneyState, Outcome]:
    """Apply one event to a customer's state.

    Parameters
    ----------
    state
        The current state, or None for a customer never seen.
    event
        A valid event of this customer.
    journey
        The journey map (stage of each touchpoint, order of stages).
    dedupe_window_ms
        How long (event time, behind ``last_seen``) event ids are remembered. An event
        older than that cannot be proven new, so it is refused as ``TOO_LATE``.
    path_length
        How many of the most recent touchpoints the path keeps.

    Returns
    -------
    tuple[JourneyState, Outcome]
        The new state (the same object when nothing changed) and what happened.

    Examples
    --------
    >>> jm = JourneyMap(("awareness", "purchase"), {"visit": "awareness", "buy": "purchase"})
    >>> buy = TouchpointEvent("e2", "c1", "buy", 2000)
    >>> s, _ = advance(None, buy, jm, dedupe_window_ms=10**9, path_length=5)
    >>> s, _ = advance(s, TouchpointEvent("e1", "c1", "visit", 1000), jm, dedupe_window_ms=10**9, path_length=5)
    >>> s.stage, s.first_seen_ms, s.last_seen_ms, s.path
    ('purchase', 1000, 2000, ((1000, 'visit'), (2000, 'buy')))
    >>> advance(s, buy, jm, dedupe_window_ms=10**9, path_length=5)[1].name
    'DUPLICATE'
    """
    ts, tp = event.ts_ms, event.touchpoint
    stage = journey.stage_of(tp)
    if state is None:
        new = JourneyState(
            customer_id=event.customer_id,
            stage=stage,
            stage_since_ms=ts,
            first_seen_ms=ts,
            last_seen_ms=ts,
            events=1,
            touchpoints={tp: 1},
            touchpoint_last_ms={tp: ts},
            path=((ts, tp),),
            channel=event.channel,
            channel_ms=ts if event.channel is not None else None,
            seen={event.event_id: ts},
        )
        return new, Outcome.APPLIED
    # Too old first: its id may already be forgotten, so whether it was seen is unknowable.
    if ts < state.last_seen_ms - dedupe_window_ms:
        return state, Outcome.TOO_LATE
    if event.event_id in state.seen:
        return state, Outcome.DUPLICATE

    rank, current = journey.rank(stage), journey.rank(state.stage)
    if rank > current:
        new_stage, since = stage, ts
    elif rank == current:
        new_stage, since = state.stage, min(state.stage_since_ms, ts)
    else:
        new_stage, since = state.stage, state.stage_since_ms

    channel, channel_ms = state.channel, state.channel_ms
    # The acquisition channel is the earliest one seen; ties go to the smaller name so
    # that the result does not depend on arrival order.
    if event.channel is not None and (
        channel_ms is None or (ts, event.channel) < (channel_ms, channel or "")
    ):
        channel, channel_ms = event.channel, ts

    last_seen = max(state.last_seen_ms, ts)
    horizon = last_seen - dedupe_window_ms
    seen = {eid: t for eid, t in state.seen.items() if t >= horizon}
    seen[event.event_id] = ts
    new = replace(
        state,
        stage=new_stage,
        stage_since_ms=since,
        first_seen_ms=min(state.first_seen_ms, ts),
        last_seen_ms=last_seen,
        events=state.events + 1,
        touchpoints={**state.touchpoints, tp: state.touchpoints.get(tp, 0) + 1},
        touchpoint_last_ms={**state.touchpoint_last_ms, tp: max(state.touchpoint_last_ms.get(tp, ts), ts)},
        path=tuple(sorted((*state.path, (ts, tp))))[-path_length:],
        channel=channel,
        channel_ms=channel_ms,
        seen=seen,
    )
    return new, Outcome.APPLIED
