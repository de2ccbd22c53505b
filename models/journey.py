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
    path: tuple[tuple[int, str, str], ...] = ()  # (event time, touchpoint, channel or "")
    channel: str | None = None
    channel_ms: int | None = None
    # Value, in cents of the configured currency (integers: sums are exact in any order)
    orders: int = 0
    gross_cents: int = 0
    refunded_cents: int = 0
    first_order_ms: int | None = None
    first_order_cents: int | None = None
    last_order_ms: int | None = None
    value_days: dict[int, int] = field(default_factory=dict)  # event-time day -> net cents
    order_days: dict[int, int] = field(default_factory=dict)  # event-time day -> orders
    # event id -> event time, for events newer than last_seen minus the dedupe window
    seen: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def revenue_cents(self) -> int:
        """Orders minus refunds, never below zero."""
        return max(0, self.gross_cents - self.refunded_cents)


def advance(
    state: JourneyState | None,
    event: TouchpointEvent,
    journey: JourneyMap,
    *,
    dedupe_window_ms: int,
    path_length: int,
    value_days_kept: int = 365,
) -> tuple[JourneyState, Outcome]:
    """Apply one event to a customer's state.

    Parameters
    ----------
    state
        The current state, or None for a customer never seen.
    event
        A valid event of this customer (its value already in the configured currency).
    journey
        The journey map (stage of each touchpoint, order of stages, value roles).
    dedupe_window_ms
        How long (event time, behind ``last_seen``) event ids are remembered. An event
        older than that cannot be proven new, so it is refused as ``TOO_LATE``.
    path_length
        How many of the most recent touchpoints the path keeps.
    value_days_kept
        Days of per-day revenue kept behind the newest one (the longest rolling window).

    Returns
    -------
    tuple[JourneyState, Outcome]
        The new state (the same object when nothing changed) and what happened.

    Examples
    --------
    >>> jm = JourneyMap(("awareness", "purchase"), {"visit": "awareness", "buy": "purchase"},
    ...                 value_roles={"buy": "order"})
    >>> buy = TouchpointEvent("e2", "c1", "buy", 2000, value=9.99)
    >>> s, _ = advance(None, buy, jm, dedupe_window_ms=10**9, path_length=5)
    >>> s, _ = advance(s, TouchpointEvent("e1", "c1", "visit", 1000), jm, dedupe_window_ms=10**9, path_length=5)
    >>> s.stage, s.first_seen_ms, s.last_seen_ms, s.path, s.orders, s.revenue_cents
    ('purchase', 1000, 2000, ((1000, 'visit', ''), (2000, 'buy', '')), 1, 999)
    >>> advance(s, buy, jm, dedupe_window_ms=10**9, path_length=5)[1].name
    'DUPLICATE'
    """
    ts, tp = event.ts_ms, event.touchpoint
    stage = journey.stage_of(tp)
    if state is None:
        state = JourneyState(event.customer_id, stage, ts, ts, ts, 0)
    else:
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
    if event.channel is not None and (channel_ms is None or (ts, event.channel) < (channel_ms, channel or "")):
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
        path=tuple(sorted((*state.path, (ts, tp, event.channel or ""))))[-path_length:],
        channel=channel,
        channel_ms=channel_ms,
        seen=seen,
    )
    role = journey.value_roles.get(tp)
    if role is not None:
        new = _add_value(new, role, ts, to_cents(event.value or 0.0), value_days_kept)
    return new, Outcome.APPLIED


def to_cents(value: float) -> int:
    """Money as integer cents (rounded half to even, like the Redis side).

    Examples
    --------
    >>> to_cents(59.9), to_cents(0.125)
    (5990, 12)
    """
    return round(value * 100)


def _add_value(state: JourneyState, role: str, ts: int, cents: int, days_kept: int) -> JourneyState:
    day = ts // 86_400_000
    value_days = dict(state.value_days)
    order_days = dict(state.order_days)
    if role == "order":
        value_days[day] = value_days.get(day, 0) + cents
        order_days[day] = order_days.get(day, 0) + 1
        first_ms, first_cents = state.first_order_ms, state.first_order_cents
        # earliest order first; ties to the smaller amount, so arrival order does not matter
        if first_ms is None or (ts, cents) < (first_ms, first_cents or 0):
            first_ms, first_cents = ts, cents
        state = replace(
            state,
            orders=state.orders + 1,
            gross_cents=state.gross_cents + cents,
            first_order_ms=first_ms,
            first_order_cents=first_cents,
            last_order_ms=ts if state.last_order_ms is None else max(state.last_order_ms, ts),
        )
    else:
        value_days[day] = value_days.get(day, 0) - cents
        state = replace(state, refunded_cents=state.refunded_cents + cents)
    newest = max(value_days)
    keep = {d for d in value_days if d > newest - days_kept}
    return replace(
        state,
        value_days={d: v for d, v in value_days.items() if d in keep},
        order_days={d: n for d, n in order_days.items() if d in keep},
    )
