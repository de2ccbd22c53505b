"""A customer's state and the rule that advances it by one event.

:class:`JourneyState` is everything the tracker keeps about one customer: where they are in
the journey, their value, their pending deadlines and open alerts, the event ids it has
seen and their pending propensity predictions. It is a plain mutable record: the batch
engine (:mod:`models.partition`) loads it, applies a batch of events with the functions of
``models/``, and the store writes it back whole. Nothing here does I/O.

The journey part is a function of the *set* of events applied, not of their arrival order:
first/last seen are min/max, the stage is the furthest reached, counts add up, and the
recent path is ordered by event time. So redelivered and out-of-order events are safe.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from enum import IntEnum

from models.durations import DAY_MS
from models.events import TouchpointEvent
from models.journey_map import JourneyMap


class Outcome(IntEnum):
    """What applying one event did."""

    DUPLICATE = 0
    APPLIED = 1
    TOO_LATE = 2
    ERASED = 3  # the customer was erased after this event happened: it must not bring them back
    FORWARDED = 4  # an anonymous event of a visitor merged into a customer: sent on to the customer


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """A stall or drop-off alert that has fired and not yet been resolved."""

    touchpoint: str
    anchor_ms: int
    expected_ms: int
    stage: str
    severity: str
    next_touchpoint: str | None = None


@dataclass(slots=True)
class PendingPrediction:
    """A propensity prediction made at a scoring point, waiting for its label.

    ``features`` are kept as they were when the customer was scored: the model must learn
    from what it saw, not from the customer's later state.
    """

    scored_ms: int
    touchpoint: str
    proba: float | None
    predicted: bool | None
    model_version: int
    features: dict[str, float]


@dataclass(slots=True)
class Exposure:
    """An alert whose effect is measured (models/uplift.py): what the customer does in the window after it.

    ``at_ms``: when the alert opened (its event time); ``rank``: the rank of the customer's stage then;
    ``converted``: they reached a later stage within the window; ``revenue_cents``: net order value in it.
    """

    type: str
    at_ms: int
    holdout: bool
    rank: int
    converted: bool = False
    revenue_cents: int = 0


@dataclass(slots=True)
class JourneyState:
    """Everything kept about one customer (times are event time, epoch ms; money in cents)."""

    customer_id: str
    stage: str
    stage_since_ms: int
    first_seen_ms: int
    last_seen_ms: int
    events: int = 0
    touchpoints: dict[str, int] = field(default_factory=dict)
    touchpoint_last_ms: dict[str, int] = field(default_factory=dict)
    path: list[tuple[int, str, str]] = field(default_factory=list)  # (event time, touchpoint, channel or "")
    channel: str | None = None  # acquisition channel: of the earliest event that named one
    channel_ms: int | None = None
    # Value, in integer cents of the configured currency (sums are exact in any order)
    orders: int = 0
    gross_cents: int = 0
    refunded_cents: int = 0
    first_order_ms: int | None = None
    first_order_cents: int | None = None
    last_order_ms: int | None = None
    value_days: dict[int, int] = field(default_factory=dict)  # event-time day -> net cents
    order_days: dict[int, int] = field(default_factory=dict)  # event-time day -> orders
    # Deadlines (models/deadlines.py): the furthest critical-path touchpoint reached and when
    crit: int | None = None
    crit_ms: int = 0
    stall_due: int | None = None
    stall_open: OpenAlert | None = None
    drop_due: int | None = None
    drop_open: OpenAlert | None = None
    # A deadline already overdue when it was set (late history) fires no earlier than this watermark
    hold_ms: int | None = None
    # 64-bit digest of each event id -> its event time, for events newer than last_seen - dedupe window
    seen: dict[int, int] = field(default_factory=dict, repr=False)
    # Upsell propensity (models/propensity.py)
    upsells: list[int] = field(default_factory=list)  # upsell times, newest kept
    predictions: list[PendingPrediction] = field(default_factory=list, repr=False)
    score: tuple[float | None, int, int] | None = None  # latest (probability, scored ms, model version)
    upsell_alert_ms: int | None = None  # scoring point of the latest upsell_opportunity alert
    # Identity (models/identity.py). A customer: their anonymous ids -> True once that visitor's
    # history is merged in. A visitor merged into a customer keeps only these two (a marker).
    anonymous_ids: dict[str, bool] = field(default_factory=dict)
    merged_into: str | None = None
    merged_ms: int | None = None
    # KPIs (models/kpis.py): the second order's time (repeat purchase), the weeks with activity
    # since the first-seen week (bit k: week k, k <= 12; retention cohorts), and the alerts whose
    # effect is being measured (models/uplift.py)
    second_order_ms: int | None = None
    active_weeks: int = 0
    exposures: list[Exposure] = field(default_factory=list)

    @property
    def revenue_cents(self) -> int:
        """Orders minus refunds, never below zero."""
        return max(0, self.gross_cents - self.refunded_cents)


@dataclass(frozen=True, slots=True)
class StateLimits:
    """How much history a customer's state keeps.

    ``dedupe_window_ms``: how long (event time, behind ``last_seen``) event ids are
    remembered; an older event cannot be proven new and is refused as ``TOO_LATE``.
    ``path_length``: touchpoints kept in the recent path. ``value_days_kept``: days of
    per-day revenue kept behind the newest one (the longest rolling window).
    """

    dedupe_window_ms: int = 30 * DAY_MS
    path_length: int = 20
    value_days_kept: int = 365


def event_digest(event_id: str) -> int:
    """A 64-bit digest of an event id: what the dedupe set remembers (8 bytes instead of the id).

    Two of one customer's ids inside one dedupe window collide with a chance below 1e-13.

    Examples
    --------
    >>> event_digest("9b2f") == event_digest("9b2f"), event_digest("a") == event_digest("b")
    (True, False)
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


def new_state(event: TouchpointEvent, journey: JourneyMap) -> JourneyState:
    """The state of a customer never seen before, as it is before their first event is applied."""
    ts = event.ts_ms
    # a survey moves no one: a customer whose first event is a survey answer starts in the first stage
    return JourneyState(event.customer_id, journey.stage_of(event.touchpoint) or journey.stages[0], ts, ts, ts)


def apply_event(
    state: JourneyState | None, event: TouchpointEvent, journey: JourneyMap, limits: StateLimits
) -> tuple[JourneyState, Outcome]:
    """Apply one event to a customer's journey and value, **in place**.

    Parameters
    ----------
    state
        The customer's state, or None for a customer never seen (a new one is made).
    event
        A valid event of this customer (its value already checked and in the configured currency).
    journey
        The journey map (stage of each touchpoint, order of stages, value roles).
    limits
        How much history is kept.

    Returns
    -------
    tuple[JourneyState, Outcome]
        The state (changed only if the event was applied) and what happened.

    Examples
    --------
    >>> jm = JourneyMap(("awareness", "purchase"), {"visit": "awareness", "buy": "purchase"},
    ...                 value_roles={"buy": "order"})
    >>> lim = StateLimits(dedupe_window_ms=10**9, path_length=5)
    >>> buy = TouchpointEvent("e2", "c1", "buy", 2000, value=9.99)
    >>> s, _ = apply_event(None, buy, jm, lim)
    >>> s, _ = apply_event(s, TouchpointEvent("e1", "c1", "visit", 1000), jm, lim)
    >>> s.stage, s.first_seen_ms, s.last_seen_ms, s.path, s.orders, s.revenue_cents
    ('purchase', 1000, 2000, [(1000, 'visit', ''), (2000, 'buy', '')], 1, 999)
    >>> apply_event(s, buy, jm, lim)[1].name
    'DUPLICATE'
    """
    ts, tp = event.ts_ms, event.touchpoint
    if state is None:
        state = new_state(event, journey)
    else:
        # Too old first: its id may already be forgotten, so whether it was seen is unknowable.
        if ts < state.last_seen_ms - limits.dedupe_window_ms:
            return state, Outcome.TOO_LATE
        if event_digest(event.event_id) in state.seen:
            return state, Outcome.DUPLICATE

    stage = journey.stage_of(tp)
    rank, current = journey.rank_of(stage), journey.rank_of(state.stage)
    if rank > current:  # a stage removed from the map by a reload ranks -1: below every stage
        state.stage, state.stage_since_ms = stage, ts
    elif rank == current and ts < state.stage_since_ms:
        state.stage_since_ms = ts

    # The acquisition channel is the earliest one seen; ties go to the smaller name so that
    # the result does not depend on arrival order.
    if event.channel is not None and (
        state.channel_ms is None or (ts, event.channel) < (state.channel_ms, state.channel or "")
    ):
        state.channel, state.channel_ms = event.channel, ts

    if ts < state.first_seen_ms:
        state.first_seen_ms = ts
    if ts > state.last_seen_ms:
        state.last_seen_ms = ts
    state.events += 1
    state.touchpoints[tp] = state.touchpoints.get(tp, 0) + 1
    if ts > state.touchpoint_last_ms.get(tp, ts - 1):
        state.touchpoint_last_ms[tp] = ts
    bisect.insort(state.path, (ts, tp, event.channel or ""))
    if len(state.path) > limits.path_length:
        del state.path[: len(state.path) - limits.path_length]

    horizon = state.last_seen_ms - limits.dedupe_window_ms
    seen = state.seen
    if state.events % 8 == 0:  # forget ids below the horizon now and then, not on every event
        for digest in [d for d, t in seen.items() if t < horizon]:
            del seen[digest]
    seen[event_digest(event.event_id)] = ts

    role = journey.value_roles.get(tp)
    if role is not None:
        _add_value(state, role, ts, to_cents(event.value or 0.0), limits.value_days_kept)
    return state, Outcome.APPLIED


def to_cents(value: float) -> int:
    """Money as integer cents (rounded half to even).

    Examples
    --------
    >>> to_cents(59.9), to_cents(0.125)
    (5990, 12)
    """
    return round(value * 100)


def _add_value(state: JourneyState, role: str, ts: int, cents: int, days_kept: int) -> None:
    day = ts // DAY_MS
    if role == "order":
        state.value_days[day] = state.value_days.get(day, 0) + cents
        state.order_days[day] = state.order_days.get(day, 0) + 1
        state.orders += 1
        state.gross_cents += cents
        # earliest order first; ties to the smaller amount, so arrival order does not matter
        if state.first_order_ms is None or (ts, cents) < (state.first_order_ms, state.first_order_cents or 0):
            if state.first_order_ms is not None:  # the old first order is now the second
                state.second_order_ms = min(state.first_order_ms, state.second_order_ms or state.first_order_ms)
            state.first_order_ms, state.first_order_cents = ts, cents
        elif state.second_order_ms is None or ts < state.second_order_ms:
            state.second_order_ms = ts
        if state.last_order_ms is None or ts > state.last_order_ms:
            state.last_order_ms = ts
    else:
        state.value_days[day] = state.value_days.get(day, 0) - cents
        state.refunded_cents += cents
    newest = max(state.value_days)
    for d in [d for d in state.value_days if d <= newest - days_kept]:
        del state.value_days[d]
        state.order_days.pop(d, None)
