"""Identity stitching: an anonymous visitor's history joins the customer they turn out to be.

Before signup, events carry only an ``anonymous_id`` (a device or cookie id); the tracker keeps
an ordinary :class:`~models.journey.JourneyState` for the visitor under the profile name
``{a}<anonymous_id>`` (:func:`models.events.anonymous_profile`). An event that carries both ids
links them. The two profiles usually live in different partitions, so the merge is three
steps, each a message committed atomically with its partition's batch (the outbox) and each
idempotent where it lands:

1. **link**: the customer's partition applies the linking event, adds the anonymous id to the
   customer's ``anonymous_ids`` (pending) and sends ``link`` to the visitor's partition;
2. **merge**: the visitor's partition turns the visitor into a *marker* (``merged_into`` the
   customer) and sends the visitor's history (:func:`history`) to the customer's partition;
3. the customer's partition folds that history in (:func:`fold`) once: the anonymous id is
   then marked merged, and a second copy of the message changes nothing.

An anonymous event that reaches a marker (late, or a device still sending the old id) is
forwarded to the customer as an event with both ids; its event id dedupes it there. A link that
reaches a marker (another customer on the same device, or a copy) is answered with a merge
without history, so every customer's link is settled.

Rules where the issue left a choice (documented in the README):

* **One device, two customers:** the link moves to the customer of the *latest* linking event
  (event time; ties to the smaller id), as Segment's last-identify-wins. History already merged
  stays where it went: it was that customer's session.
* **Cap:** a customer keeps at most ``max_anonymous_ids`` anonymous ids; a link beyond it is
  refused (counted) and the visitor stays anonymous.
* **Ageing:** a visitor or marker not seen for ``anonymous_ttl_ms`` of event time is forgotten.

Nothing here does I/O.
"""

from __future__ import annotations

import bisect
from typing import Any

import orjson

from models.journey import JourneyState, StateLimits
from models.journey_map import JourneyMap

#: Message kinds on the touchpoints topic (header ``journey.control``).
LINK = "link"
MERGE = "merge"


def marker(profile: str, customer_id: str, ts_ms: int) -> JourneyState:
    """What is left of a visitor once merged: a pointer to the customer, no history."""
    state = JourneyState(profile, "", ts_ms, ts_ms, ts_ms)
    state.merged_into, state.merged_ms = customer_id, ts_ms
    return state


def moves_link(state: JourneyState, customer_id: str, ts_ms: int) -> bool:
    """Whether a link to ``customer_id`` at ``ts_ms`` takes over a marker (the latest link wins).

    Examples
    --------
    >>> m = marker("{a}d", "c1", 1000)
    >>> moves_link(m, "c2", 2000), moves_link(m, "c2", 500), moves_link(m, "c1", 1000)  # the last: a copy
    (True, False, False)
    """
    assert state.merged_ms is not None and state.merged_into is not None
    return (ts_ms, customer_id) > (state.merged_ms, state.merged_into)


def link_message(anonymous_id: str, customer_id: str, ts_ms: int) -> bytes:
    return orjson.dumps({"anonymous_id": anonymous_id, "customer_id": customer_id, "ts_ms": ts_ms})


def history(state: JourneyState | None) -> dict[str, Any] | None:
    """The part of a visitor's state that joins the customer: journey, value and the dedupe set.
    Their deadlines, open alerts and predictions stay behind (resolved by the merge)."""
    if state is None:
        return None
    return {
        "stage": state.stage, "stage_since_ms": state.stage_since_ms, "first_seen_ms": state.first_seen_ms,
        "last_seen_ms": state.last_seen_ms, "events": state.events, "touchpoints": state.touchpoints,
        "touchpoint_last_ms": state.touchpoint_last_ms, "path": state.path, "channel": state.channel,
        "channel_ms": state.channel_ms, "orders": state.orders, "gross_cents": state.gross_cents,
        "refunded_cents": state.refunded_cents, "first_order_ms": state.first_order_ms,
        "first_order_cents": state.first_order_cents, "last_order_ms": state.last_order_ms,
        "value_days": [[d, c, state.order_days.get(d, 0)] for d, c in state.value_days.items()],
        "seen": list(state.seen.items()), "upsells": state.upsells,
        "second_order_ms": state.second_order_ms, "active_weeks": state.active_weeks,
    }


def merge_message(customer_id: str, anonymous_id: str, ts_ms: int, visitor: JourneyState | None) -> bytes:
    return orjson.dumps({"customer_id": customer_id, "anonymous_id": anonymous_id, "ts_ms": ts_ms,
                         "history": history(visitor)})


def from_history(doc: dict[str, Any], profile: str) -> JourneyState:
    """A visitor's state back from :func:`history` (what :func:`fold` needs of it)."""
    s = JourneyState(profile, doc["stage"], doc["stage_since_ms"], doc["first_seen_ms"], doc["last_seen_ms"],
                     doc["events"], dict(doc["touchpoints"]), dict(doc["touchpoint_last_ms"]),
                     [tuple(p) for p in doc["path"]], doc["channel"], doc["channel_ms"], doc["orders"],
                     doc["gross_cents"], doc["refunded_cents"], doc["first_order_ms"], doc["first_order_cents"],
                     doc["last_order_ms"])
    s.value_days = {d: c for d, c, _ in doc["value_days"]}
    s.order_days = {d: n for d, _, n in doc["value_days"] if n}
    s.seen = {d: t for d, t in doc["seen"]}
    s.upsells = list(doc["upsells"])
    s.second_order_ms, s.active_weeks = doc.get("second_order_ms"), doc.get("active_weeks", 0)
    return s


def fold(customer: JourneyState, visitor: JourneyState, journey: JourneyMap, limits: StateLimits) -> None:
    """Fold a visitor's history into the customer's state, **in place**: what applying the
    visitor's events to the customer would have done (the journey is a function of the set of
    events, see :mod:`models.journey`), except that nothing fires for them again.

    Examples
    --------
    >>> jm = JourneyMap(("awareness", "consideration"), {"ad_click": "awareness", "signup": "consideration"})
    >>> c = JourneyState("c1", "consideration", 5000, 5000, 5000, 1, {"signup": 1}, {"signup": 5000},
    ...                  [(5000, "signup", "")])
    >>> v = JourneyState("{a}d", "awareness", 1000, 1000, 2000, 2, {"ad_click": 2}, {"ad_click": 2000},
    ...                  [(1000, "ad_click", "search"), (2000, "ad_click", "")], "search", 1000)
    >>> fold(c, v, jm, StateLimits())
    >>> c.first_seen_ms, c.events, c.channel, c.stage, [tp for _, tp, _ in c.path]
    (1000, 3, 'search', 'consideration', ['ad_click', 'ad_click', 'signup'])
    """
    rank, current = journey.rank_of(visitor.stage), journey.rank_of(customer.stage)
    if rank > current:
        customer.stage, customer.stage_since_ms = visitor.stage, visitor.stage_since_ms
    elif rank == current and visitor.stage_since_ms < customer.stage_since_ms:
        customer.stage_since_ms = visitor.stage_since_ms
    if visitor.channel is not None and (
        customer.channel_ms is None
        or (visitor.channel_ms, visitor.channel) < (customer.channel_ms, customer.channel or "")
    ):
        customer.channel, customer.channel_ms = visitor.channel, visitor.channel_ms
    customer.first_seen_ms = min(customer.first_seen_ms, visitor.first_seen_ms)
    customer.last_seen_ms = max(customer.last_seen_ms, visitor.last_seen_ms)
    customer.events += visitor.events
    for tp, n in visitor.touchpoints.items():
        customer.touchpoints[tp] = customer.touchpoints.get(tp, 0) + n
    for tp, ts in visitor.touchpoint_last_ms.items():
        if ts > customer.touchpoint_last_ms.get(tp, ts - 1):
            customer.touchpoint_last_ms[tp] = ts
    for entry in visitor.path:
        bisect.insort(customer.path, entry)
    del customer.path[: max(0, len(customer.path) - limits.path_length)]
    customer.seen.update(visitor.seen)
    # Value: a guest checkout before signup is the customer's order too.
    customer.orders += visitor.orders
    customer.gross_cents += visitor.gross_cents
    customer.refunded_cents += visitor.refunded_cents
    # the second order of the two together: the second earliest of both first two orders
    times = sorted(t for t in (customer.first_order_ms, customer.second_order_ms, visitor.first_order_ms,
                               visitor.second_order_ms) if t is not None)
    customer.second_order_ms = times[1] if len(times) > 1 else None
    if visitor.first_order_ms is not None and (
        customer.first_order_ms is None
        or (visitor.first_order_ms, visitor.first_order_cents or 0)
        < (customer.first_order_ms, customer.first_order_cents or 0)
    ):
        customer.first_order_ms, customer.first_order_cents = visitor.first_order_ms, visitor.first_order_cents
    if visitor.last_order_ms is not None:
        customer.last_order_ms = max(customer.last_order_ms or visitor.last_order_ms, visitor.last_order_ms)
    for day, cents in visitor.value_days.items():
        customer.value_days[day] = customer.value_days.get(day, 0) + cents
    for day, n in visitor.order_days.items():
        customer.order_days[day] = customer.order_days.get(day, 0) + n
    customer.upsells = sorted({*customer.upsells, *visitor.upsells})
