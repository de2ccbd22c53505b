"""Journey state: redelivered and out-of-order events give the state in-order delivery would."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import TouchpointEvent
from models.journey import JourneyState, Outcome, StateLimits, apply_event, event_digest
from models.journey_map import JourneyMap

JM = JourneyMap(
    ("awareness", "consideration", "purchase"),
    {"visit": "awareness", "signup": "consideration", "view": "consideration", "buy": "purchase",
     "refund": "purchase"},
    value_roles={"buy": "order", "refund": "refund"},
)
DAY = 86_400_000
WINDOW = 30 * DAY


def apply_all(events: list[TouchpointEvent], path_length: int = 4) -> tuple[JourneyState | None, list[Outcome]]:
    state, outcomes = None, []
    for e in events:
        state, outcome = apply_event(state, e, JM, StateLimits(dedupe_window_ms=WINDOW, path_length=path_length))
        outcomes.append(outcome)
    return state, outcomes


def comparable(state: JourneyState | None) -> JourneyState | None:
    """The state without its dedupe set, which is pruned now and then (every 8th event), so its
    size depends on when the pruning ran, not on what it means."""
    if state is None:
        return None
    out = copy.deepcopy(state)
    out.seen = {}
    return out


def ev(eid: str, tp: str, ts: int, channel: str | None = None, value: float | None = None) -> TouchpointEvent:
    if value is None and JM.value_roles.get(tp):
        value = 10.0
    return TouchpointEvent(eid, "c1", tp, ts, channel, value)


def test_a_customer_moves_forward_and_never_back():
    state, _ = apply_all([ev("1", "visit", 1000), ev("2", "buy", 2000), ev("3", "view", 3000)])
    assert state is not None
    assert (state.stage, state.stage_since_ms) == ("purchase", 2000)
    assert (state.first_seen_ms, state.last_seen_ms, state.events) == (1000, 3000, 3)
    assert state.touchpoints == {"visit": 1, "buy": 1, "view": 1}


def test_a_late_event_does_not_move_last_seen_back_but_is_counted():
    state, outcomes = apply_all([ev("1", "buy", 5000), ev("2", "visit", 1000)])
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert state is not None
    assert (state.first_seen_ms, state.last_seen_ms, state.stage) == (1000, 5000, "purchase")
    assert state.path == [(1000, "visit", ""), (5000, "buy", "")]


def test_a_late_event_in_the_current_stage_moves_stage_since_back_to_when_it_was_reached():
    state, _ = apply_all([ev("1", "signup", 5000), ev("2", "view", 3000)])
    assert state is not None and state.stage_since_ms == 3000


def test_redelivery_changes_nothing():
    once, _ = apply_all([ev("1", "visit", 1000), ev("2", "buy", 2000)])
    twice, outcomes = apply_all([ev("1", "visit", 1000), ev("2", "buy", 2000), ev("1", "visit", 1000)])
    assert outcomes[-1] is Outcome.DUPLICATE
    assert comparable(once) == comparable(twice)


def test_events_older_than_the_dedupe_window_are_refused_not_double_counted():
    state, outcomes = apply_all([ev("1", "visit", 0), ev("2", "buy", WINDOW + 10), ev("1", "visit", 0)])
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.TOO_LATE]
    assert state is not None and state.events == 2
    more, _ = apply_all([ev("1", "visit", 0), ev("2", "buy", WINDOW + 10),
                         *(ev(f"n{i}", "visit", WINDOW + 20 + i) for i in range(8))])
    assert more is not None and event_digest("1") not in more.seen  # forgotten out of the window: bounded memory


def test_acquisition_channel_is_the_earliest_one():
    state, _ = apply_all([ev("1", "visit", 5000, "email"), ev("2", "visit", 1000, "search"), ev("3", "buy", 9000)])
    assert state is not None and (state.channel, state.channel_ms) == ("search", 1000)


events_strategy = st.lists(
    st.builds(
        ev,
        eid=st.text("abcdef", min_size=1, max_size=3),
        tp=st.sampled_from(sorted(JM.touchpoints)),
        ts=st.integers(0, 10 * DAY),
        channel=st.one_of(st.none(), st.sampled_from(["email", "search"])),
        value=st.one_of(st.none(), st.floats(0, 500, allow_nan=False).map(lambda v: round(v, 2))),
    ),
    min_size=1,
    max_size=25,
    unique_by=lambda e: e.event_id,
)


@settings(max_examples=300)
@given(events=events_strategy, data=st.data())
def test_state_depends_on_the_set_of_events_not_their_order_or_redelivery(events, data):
    shuffled = data.draw(st.permutations(events))
    redelivered = data.draw(st.lists(st.sampled_from(events), max_size=10))
    in_order, _ = apply_all(sorted(events, key=lambda e: e.ts_ms))
    jumbled, outcomes = apply_all([*shuffled, *redelivered])
    assert comparable(jumbled) == comparable(in_order)
    assert outcomes.count(Outcome.APPLIED) == len(events)
    assert jumbled is not None and jumbled.events == len(events)
    assert len(jumbled.path) == min(4, len(events))


def test_purchases_and_refunds_add_up_and_revenue_never_goes_negative():
    state, _ = apply_all([ev("1", "buy", 2 * DAY, value=59.9), ev("2", "buy", 40 * DAY, value=20),
                          ev("3", "refund", 41 * DAY, value=100)])
    assert state is not None
    assert (state.orders, state.gross_cents, state.refunded_cents, state.revenue_cents) == (2, 7990, 10000, 0)
    assert (state.first_order_ms, state.first_order_cents, state.last_order_ms) == (2 * DAY, 5990, 40 * DAY)
    assert state.value_days == {2: 5990, 40: 2000, 41: -10000}
    assert state.order_days == {2: 1, 40: 1}


def test_a_late_purchase_lands_in_the_day_it_happened():
    state, _ = apply_all([ev("2", "buy", 20 * DAY + 5, value=20), ev("1", "buy", 3 * DAY + 7, value=5)])
    assert state is not None
    assert state.value_days == {3: 500, 20: 2000} and state.first_order_ms == 3 * DAY + 7
