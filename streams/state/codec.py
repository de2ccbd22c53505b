"""How a customer's state is stored: one compact value per customer.

A JSON array (orjson) of the state's fields, a newline, then the dedupe set packed as 12
bytes per event id (64-bit digest, event time rounded up to a whole second of the epoch, stored as
seconds after ``first_seen``'s second: an id is forgotten up to a second later than exactly, never
sooner; the rounding is absolute, so a state stored again after ``first_seen`` moved, e.g. by a
merge of an anonymous visitor's history, keeps the same times). JSON never contains a raw
newline, so the first newline splits the two parts. The path's and the touchpoints' times
are stored relative to ``first_seen`` (shorter numbers). Field order is the format:
``FORMAT`` changes when it does, and a value in an unknown format is refused, never guessed.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from models.clv import OrderSummary
from models.journey import Exposure, JourneyState, OpenAlert, PendingPrediction
from models.propensity import Example

FORMAT = 3  # 2: identity fields appended; 3: KPI fields appended. Formats 1 and 2 are still read
_SEEN = struct.Struct(">qi")


class CorruptState(Exception):
    """A stored value that is not a customer state of this format."""


def _open(a: OpenAlert | None) -> list[Any] | None:
    if a is None:
        return None
    return [a.touchpoint, a.anchor_ms, a.expected_ms, a.stage, a.severity, a.next_touchpoint]


def _unopen(v: list[Any] | None) -> OpenAlert | None:
    return None if v is None else OpenAlert(v[0], v[1], v[2], v[3], v[4], v[5])


def encode(s: JourneyState) -> bytes:
    """The stored value of a customer's state."""
    base = s.first_seen_ms
    doc = [
        FORMAT, s.customer_id, s.stage, s.stage_since_ms, s.first_seen_ms, s.last_seen_ms, s.events,
        {tp: [n, _rel(s.touchpoint_last_ms.get(tp), base)] for tp, n in s.touchpoints.items()},
        [[ts - base, tp, ch] for ts, tp, ch in s.path], s.channel, s.channel_ms,
        s.orders, s.gross_cents, s.refunded_cents, s.first_order_ms, s.first_order_cents, s.last_order_ms,
        [[d, c, s.order_days.get(d, 0)] for d, c in s.value_days.items()],
        s.crit, s.crit_ms, s.stall_due, _open(s.stall_open), s.drop_due, _open(s.drop_open), s.hold_ms,
        s.upsells,
        [[p.scored_ms, p.touchpoint, p.proba, p.predicted, p.model_version, p.features] for p in s.predictions],
        list(s.score) if s.score is not None else None, s.upsell_alert_ms,
        s.anonymous_ids, s.merged_into, s.merged_ms,
        s.second_order_ms, s.active_weeks,
        [[e.type, e.at_ms, e.holdout, e.rank, e.converted, e.revenue_cents] for e in s.exposures],
    ]
    base_s = base // 1000
    seen = b"".join(_SEEN.pack(d, -(-t // 1000) - base_s) for d, t in s.seen.items())
    return orjson.dumps(doc) + b"\n" + seen


def _rel(ms: int | None, base: int) -> int | None:
    return None if ms is None else ms - base


def decode(raw: bytes) -> JourneyState:
    """The state back from its stored value."""
    head, sep, seen = raw.partition(b"\n")
    try:
        d = orjson.loads(head)
        if not sep or not isinstance(d, list) or d[0] not in (1, 2, FORMAT):
            raise CorruptState(f"not a customer state of format {FORMAT}")
        identity = d[29:32] if d[0] >= 2 else [{}, None, None]
        (_, cid, stage, since, first, last, events, tps, path, channel, channel_ms, orders, gross, refunded,
         fo_ms, fo_c, lo_ms, days, crit, crit_ms, sdue, sopen, ddue, dopen, hold, ups, preds, score,
         up_alert) = d[:29]
        counts = {tp: v[0] for tp, v in tps.items()}
        lasts = {tp: v[1] + first for tp, v in tps.items() if v[1] is not None}
        return JourneyState(
            cid, stage, since, first, last, events, counts, lasts, [(ts + first, tp, ch) for ts, tp, ch in path],
            channel, channel_ms,
            orders, gross, refunded, fo_ms, fo_c, lo_ms,
            {day: c for day, c, _ in days}, {day: n for day, _, n in days if n},
            crit, crit_ms, sdue, _unopen(sopen), ddue, _unopen(dopen), hold,
            ({dg: (first // 1000 + t) * 1000 for dg, t in _SEEN.iter_unpack(seen)} if d[0] >= 2
             else {dg: first + 1000 * t for dg, t in _SEEN.iter_unpack(seen)}),
            ups, [PendingPrediction(*p) for p in preds], tuple(score) if score is not None else None, up_alert,
            *identity,
            *(d[32:34] if d[0] >= 3 else _kpi_fields(orders, {day: n for day, _, n in days if n})),
            [Exposure(*e) for e in d[34]] if d[0] >= 3 else [],
        )
    except (orjson.JSONDecodeError, ValueError, TypeError, IndexError, struct.error) as exc:
        raise CorruptState(f"unreadable customer state: {exc}") from None


def _kpi_fields(orders: int, order_days: dict[int, int]) -> list[Any]:
    """A state stored before format 3: the second order's day from the per-day orders (its start: the
    time is not kept), and no retention weeks (they count from the upgrade)."""
    second = None
    if orders >= 2:
        seen = 0
        for day in sorted(order_days):
            seen += order_days[day]
            if seen >= 2:
                second = day * 86_400_000
                break
    return [second, 0]


def encode_orders(s: OrderSummary) -> bytes:
    """A customer's order summary as the CLV fit reads it: ``orders,first,last,gross,first order``."""
    return b"%d,%d,%d,%d,%d" % (s.orders, s.first_ms, s.last_ms, s.gross_cents, s.first_cents)


def decode_orders(raw: bytes) -> OrderSummary:
    orders, first, last, gross, first_cents = (int(x) for x in raw.split(b","))
    return OrderSummary(orders, first, last, gross, first_cents)


def encode_example(e: Example) -> bytes:
    """A settled example as the learner reads it (no customer id)."""
    return orjson.dumps([e.settled_ms, e.label_ms, e.scored_ms, e.y, e.proba, e.predicted, e.model_version,
                         e.features])


def decode_example(raw: bytes) -> Example:
    return Example(*orjson.loads(raw))
