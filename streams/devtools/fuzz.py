"""Hostile touchpoint messages, each with the reason the worker must give for refusing it.

The fuzz suite (``tests/integration/test_hostile.py``) publishes thousands of them among valid
events to a real worker and checks each one reached the dead-letter topic with that reason; the
schema contract test (``tests/unit/test_schema_contract.py``) judges the same messages with the
published JSON Schema. Every kind is a mistake seen in the wild or an attack: money that overflows,
sizes the producer cannot send on, ids that break Redis Cluster hash tags or terminals, time
formats from every corner of the web.

The expected reason is written down here, next to each kind, from the event contract in the
README, not computed by the decoder under test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from models.events import Reason

DAY_MS = 86_400_000
MEGABYTE_PAYLOAD = 1_020_000  # above the producer's usual 1 MiB request limit once framed, below the broker's


@dataclass(frozen=True, slots=True)
class Hostile:
    """One hostile message: what to publish, and what the worker must answer."""

    kind: str
    key: bytes | None
    value: bytes | None
    reason: Reason


def _iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _with(doc: dict[str, Any], **changes: Any) -> bytes:
    return _dumps({**doc, **changes})


def _without(doc: dict[str, Any], name: str) -> bytes:
    return _dumps({k: v for k, v in doc.items() if k != name})


def _anonymous(doc: dict[str, Any], anonymous_id: Any) -> bytes:
    """The event as an anonymous visitor's (no customer id) with this anonymous id."""
    return _dumps({**{k: v for k, v in doc.items() if k != "customer_id"}, "anonymous_id": anonymous_id})


def _raw_value(doc: dict[str, Any], literal: str) -> bytes:
    """The document with ``value`` set to a JSON literal orjson would never write (1e309, NaN, 10**29)."""
    body = _dumps({k: v for k, v in doc.items() if k != "value"})
    return body[:-1] + b',"value":' + literal.encode() + b"}"


Kind = Callable[[dict[str, Any], dict[str, Any], random.Random, int], bytes | None]

# name -> (how to make it from a valid order `o` and a valid visit `v`, the reason the worker gives)
KINDS: dict[str, tuple[Kind, Reason]] = {
    # money
    "value_1e308": (lambda o, v, r, now: _with(o, value=1e308), Reason.VALUE_OUT_OF_RANGE),
    "value_1e20": (lambda o, v, r, now: _with(o, value=1e20), Reason.VALUE_OUT_OF_RANGE),
    "value_9_3e16": (lambda o, v, r, now: _with(o, value=9.3e16), Reason.VALUE_OUT_OF_RANGE),
    "value_just_above_max": (lambda o, v, r, now: _with(o, value=10_000_000.01), Reason.VALUE_OUT_OF_RANGE),
    "refund_1e20": (lambda o, v, r, now: _with(o, touchpoint="refund", value=1e20), Reason.VALUE_OUT_OF_RANGE),
    "value_integer_1e29": (lambda o, v, r, now: _raw_value(o, "1" + "0" * 29), Reason.VALUE_OUT_OF_RANGE),
    "value_1e309": (lambda o, v, r, now: _raw_value(o, "1e309"), Reason.UNDECODABLE),
    "value_nan": (lambda o, v, r, now: _raw_value(o, "NaN"), Reason.UNDECODABLE),
    "value_infinity": (lambda o, v, r, now: _raw_value(o, "Infinity"), Reason.UNDECODABLE),
    "value_string": (lambda o, v, r, now: _with(o, value="12.50"), Reason.WRONG_TYPE),
    "value_bool": (lambda o, v, r, now: _with(o, value=True), Reason.WRONG_TYPE),
    "value_negative": (lambda o, v, r, now: _with(o, value=-r.uniform(0.01, 500)), Reason.NEGATIVE_VALUE),
    "order_without_value": (lambda o, v, r, now: _without(o, "value"), Reason.MISSING_FIELD),
    "order_null_value": (lambda o, v, r, now: _with(o, value=None), Reason.MISSING_FIELD),
    "value_unknown_currency": (lambda o, v, r, now: _with(o, currency="XTS"), Reason.CURRENCY_MISMATCH),
    # size
    "payload_over_limit": (
        lambda o, v, r, now: _with(v, properties={"blob": "x" * 17_000}), Reason.PAYLOAD_TOO_LARGE),
    # bytes that are not a JSON object
    "not_utf8": (lambda o, v, r, now: _with(v, properties={"city": "Zürich"}).decode().encode("latin-1"),
                 Reason.UNDECODABLE),
    "truncated": (lambda o, v, r, now: _dumps(v)[: r.randrange(1, len(_dumps(v)))], Reason.UNDECODABLE),
    "form_encoded": (lambda o, v, r, now: f"event_id={v['event_id']}&touchpoint=site_visit".encode(),
                     Reason.UNDECODABLE),
    "empty_bytes": (lambda o, v, r, now: b"", Reason.UNDECODABLE),
    "null_message": (lambda o, v, r, now: None, Reason.UNDECODABLE),
    "bom_prefixed": (lambda o, v, r, now: b"\xef\xbb\xbf" + _dumps(v), Reason.UNDECODABLE),
    "json_array": (lambda o, v, r, now: _dumps([v]), Reason.NOT_AN_OBJECT),
    "json_string": (lambda o, v, r, now: _dumps(orjson.dumps(v).decode()), Reason.NOT_AN_OBJECT),
    "json_number": (lambda o, v, r, now: b"42", Reason.NOT_AN_OBJECT),
    "json_null": (lambda o, v, r, now: b"null", Reason.NOT_AN_OBJECT),
    # required fields
    "missing_event_id": (lambda o, v, r, now: _without(v, "event_id"), Reason.MISSING_FIELD),
    "missing_customer_id": (lambda o, v, r, now: _without(v, "customer_id"), Reason.MISSING_FIELD),
    "missing_touchpoint": (lambda o, v, r, now: _without(v, "touchpoint"), Reason.MISSING_FIELD),
    "missing_timestamp": (lambda o, v, r, now: _without(v, "timestamp"), Reason.MISSING_FIELD),
    "null_customer_id": (lambda o, v, r, now: _with(v, customer_id=None), Reason.MISSING_FIELD),
    # ids
    "event_id_number": (lambda o, v, r, now: _with(v, event_id=r.randrange(10**9)), Reason.WRONG_TYPE),
    "event_id_empty": (lambda o, v, r, now: _with(v, event_id=""), Reason.WRONG_TYPE),
    "event_id_too_long": (lambda o, v, r, now: _with(v, event_id="e" * 257), Reason.WRONG_TYPE),
    "customer_id_number": (lambda o, v, r, now: _with(v, customer_id=r.randrange(10**6)), Reason.WRONG_TYPE),
    "customer_id_object": (lambda o, v, r, now: _with(v, customer_id={"id": 1}), Reason.WRONG_TYPE),
    "customer_id_hash_tag": (lambda o, v, r, now: _with(v, customer_id="{p0}" + v["customer_id"]),
                             Reason.INVALID_CUSTOMER_ID),
    "customer_id_newline": (lambda o, v, r, now: _with(v, customer_id=v["customer_id"] + "\n"),
                            Reason.INVALID_CUSTOMER_ID),
    "customer_id_nul": (lambda o, v, r, now: _with(v, customer_id="a\x00b"), Reason.INVALID_CUSTOMER_ID),
    "customer_id_escape": (lambda o, v, r, now: _with(v, customer_id="\x1b[2Jevil"), Reason.INVALID_CUSTOMER_ID),
    "customer_id_line_separator": (lambda o, v, r, now: _with(v, customer_id="a\u2028b"),
                                   Reason.INVALID_CUSTOMER_ID),
    "customer_id_empty": (lambda o, v, r, now: _with(v, customer_id=""), Reason.INVALID_CUSTOMER_ID),
    "customer_id_too_long": (lambda o, v, r, now: _with(v, customer_id="c" * 257), Reason.INVALID_CUSTOMER_ID),
    # anonymous ids (identity stitching): the same rules; the internal profile prefix {a} cannot be forged
    "anonymous_id_forged_profile": (lambda o, v, r, now: _anonymous(v, "{a}" + v["customer_id"]),
                                    Reason.INVALID_CUSTOMER_ID),
    "anonymous_id_number": (lambda o, v, r, now: _anonymous(v, r.randrange(10**6)), Reason.WRONG_TYPE),
    "anonymous_id_empty": (lambda o, v, r, now: _anonymous(v, ""), Reason.INVALID_CUSTOMER_ID),
    "anonymous_id_control": (lambda o, v, r, now: _with(v, anonymous_id="dev\x07ice"), Reason.INVALID_CUSTOMER_ID),
    "both_ids_null": (lambda o, v, r, now: _with(v, customer_id=None, anonymous_id=None), Reason.MISSING_FIELD),
    # touchpoints
    "touchpoint_unknown": (lambda o, v, r, now: _with(v, touchpoint=r.choice(("teleport", "Purchase", "add-to-cart",
                                                                            "purchase "))),
                           Reason.UNKNOWN_TOUCHPOINT),
    "touchpoint_number": (lambda o, v, r, now: _with(v, touchpoint=3), Reason.WRONG_TYPE),
    # time
    "timestamp_no_zone": (lambda o, v, r, now: _with(v, timestamp=_iso(now - DAY_MS).removesuffix("Z")),
                          Reason.INVALID_TIMESTAMP),
    "timestamp_space": (lambda o, v, r, now: _with(v, timestamp=_iso(now - DAY_MS).replace("T", " ")),
                        Reason.INVALID_TIMESTAMP),
    "timestamp_trailing_newline": (lambda o, v, r, now: _with(v, timestamp=_iso(now - DAY_MS) + "\n"),
                                   Reason.INVALID_TIMESTAMP),
    "timestamp_locale": (lambda o, v, r, now: _with(v, timestamp="24/11/2026 07:20:00"), Reason.INVALID_TIMESTAMP),
    "timestamp_words": (lambda o, v, r, now: _with(v, timestamp="yesterday"), Reason.INVALID_TIMESTAMP),
    "timestamp_february_30": (lambda o, v, r, now: _with(v, timestamp="2026-02-30T10:00:00Z"),
                              Reason.INVALID_TIMESTAMP),
    "timestamp_negative": (lambda o, v, r, now: _with(v, timestamp=-r.randrange(1, 10**12)), Reason.INVALID_TIMESTAMP),
    "timestamp_microseconds": (lambda o, v, r, now: _with(v, timestamp=(now - DAY_MS) * 1000),
                               Reason.INVALID_TIMESTAMP),
    "timestamp_fraction": (lambda o, v, r, now: _with(v, timestamp=now - DAY_MS + 0.5), Reason.INVALID_TIMESTAMP),
    "timestamp_year_2300": (lambda o, v, r, now: _with(v, timestamp="2300-01-01T00:00:00Z"), Reason.INVALID_TIMESTAMP),
    "timestamp_bool": (lambda o, v, r, now: _with(v, timestamp=True), Reason.WRONG_TYPE),
    "timestamp_list": (lambda o, v, r, now: _with(v, timestamp=[now]), Reason.WRONG_TYPE),
    "timestamp_in_future": (lambda o, v, r, now: _with(v, timestamp=now + 30 * DAY_MS), Reason.TIMESTAMP_IN_FUTURE),
    # optional fields of the wrong type
    "channel_number": (lambda o, v, r, now: _with(v, channel=7), Reason.WRONG_TYPE),
    "currency_list": (lambda o, v, r, now: _with(o, currency=["EUR"]), Reason.WRONG_TYPE),
    "properties_string": (lambda o, v, r, now: _with(v, properties="sku=1"), Reason.WRONG_TYPE),
}

# Sent once each per suite rather than in proportion: a megabyte is slow to publish 10,000 times.
RARE: dict[str, tuple[Kind, Reason]] = {
    "payload_megabyte": (lambda o, v, r, now: _with(v, properties={"dom": "<div>" * (MEGABYTE_PAYLOAD // 5)}),
                         Reason.PAYLOAD_TOO_LARGE),
}


def hostile_messages(count: int, *, seed: int, now_ms: int, customers: list[str]) -> Iterator[Hostile]:
    """``count`` hostile messages cycling through every kind (from a seeded start), keyed by a customer.

    ``customers`` are the valid customers' ids: hostile messages land on their partitions, between
    their events.
    """
    rng = random.Random(seed)
    names = list(KINDS)
    start = rng.randrange(len(names))
    for i in range(count):
        name = names[(start + i) % len(names)]
        make, reason = KINDS[name]
        yield _make(name, make, reason, rng, now_ms, customers, i)


def rare_messages(*, seed: int, now_ms: int, customers: list[str]) -> Iterator[Hostile]:
    rng = random.Random(seed)
    for i, (name, (make, reason)) in enumerate(RARE.items()):
        yield _make(name, make, reason, rng, now_ms, customers, 10**9 + i)


def _make(name: str, make: Kind, reason: Reason, rng: random.Random, now_ms: int, customers: list[str],
          i: int) -> Hostile:
    cid = rng.choice(customers)
    when = now_ms - rng.randrange(DAY_MS, 2 * DAY_MS)
    order = {"event_id": f"h{i}", "customer_id": cid, "touchpoint": "purchase", "timestamp": _iso(when),
             "value": round(rng.uniform(5, 300), 2), "currency": "EUR", "channel": "email"}
    visit = {"event_id": f"h{i}", "customer_id": cid, "touchpoint": "site_visit", "timestamp": when,
             "channel": "search"}
    return Hostile(name, cid.encode(), make(order, visit, rng, now_ms), reason)
