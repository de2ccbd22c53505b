"""The touchpoint event contract: decode raw bytes into an event or a reason it is invalid."""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

MAX_ID_LENGTH = 256
# Characters a customer id must not contain: braces (the id becomes a Redis Cluster hash tag) and
# control characters (C0, DEL, C1, line and paragraph separators: they break logs and terminals).
# The published JSON Schema uses the same class (``models/schema.py``).
FORBIDDEN_ID_CHARS = "{}\u0000-\u001f\u007f-\u009f\u2028\u2029"
_FORBIDDEN_ID = re.compile(f"[{FORBIDDEN_ID_CHARS}]")
# Event times as text: RFC 3339 (JSON Schema's ``date-time``) with a zone, e.g.
# 2026-11-24T07:20:00.123Z or 2026-11-24T08:20:00+01:00. Days past a month's end (02-30) are
# caught by the date parser, not the pattern. The published JSON Schema uses the same pattern.
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_NO_ZONE = re.compile(TIMESTAMP_PATTERN.removesuffix(r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$") + "$")
# Event times from 1970-01-01 (history from any date can be replayed) to 2200-01-01 (beyond
# that, epoch milliseconds are almost surely microseconds). The lower bound is configurable.
MIN_EVENT_MS = 0
# An anonymous visitor is tracked under this prefix and their anonymous id, a name no customer
# id can have (ids cannot contain braces): ``{a}device-7``. See ``models/identity.py``.
ANONYMOUS_PREFIX = "{a}"
MAX_EPOCH_MS = 7_258_118_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class Reason(StrEnum):
    """Machine-readable reasons an event goes to the dead-letter topic."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNDECODABLE = "undecodable"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_CUSTOMER_ID = "invalid_customer_id"
    UNKNOWN_TOUCHPOINT = "unknown_touchpoint"
    NEGATIVE_VALUE = "negative_value"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    TOO_LATE = "too_late"
    CURRENCY_MISMATCH = "currency_mismatch"
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    SCORE_OUT_OF_RANGE = "score_out_of_range"
    ERASED_CUSTOMER = "erased_customer"
    INTERNAL_ERROR = "internal_error"
    # marketing spend (models/spend.py): the key is not the message's own `<channel>|<day>`
    INVALID_KEY = "invalid_key"


@dataclass(frozen=True, slots=True)
class TouchpointEvent:
    """One valid touchpoint: who did what, when (event time, epoch ms)."""

    event_id: str
    customer_id: str
    touchpoint: str
    ts_ms: int
    channel: str | None = None
    value: float | None = None
    currency: str | None = None
    properties: dict[str, Any] | None = None
    # The device or cookie id the event came with. With no customer id, ``customer_id`` is the
    # anonymous profile's name (``{a}`` + this id); with both, the event links the two.
    anonymous_id: str | None = None

    @property
    def links(self) -> bool:
        """True when the event names a customer and an anonymous id: it joins the two."""
        return self.anonymous_id is not None and not self.customer_id.startswith(ANONYMOUS_PREFIX)


def anonymous_profile(anonymous_id: str) -> str:
    """The name an anonymous visitor is tracked under (never a valid customer id).

    Examples
    --------
    >>> anonymous_profile("dev-7"), is_anonymous("{a}dev-7"), is_anonymous("c-1")
    ('{a}dev-7', True, False)
    """
    return ANONYMOUS_PREFIX + anonymous_id


def external_id(profile: str) -> str:
    """The id the outside world knows a profile by: the customer id, or the visitor's anonymous id
    (what messages about them are keyed by).

    Examples
    --------
    >>> external_id("{a}dev-7"), external_id("c-1")
    ('dev-7', 'c-1')
    """
    return profile.removeprefix(ANONYMOUS_PREFIX)


def is_anonymous(profile: str) -> bool:
    """True for an anonymous visitor's profile name."""
    return profile.startswith(ANONYMOUS_PREFIX)


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a payload is not a valid event, for the dead-letter topic."""

    reason: Reason
    detail: str


def decode_event(
    raw: bytes,
    *,
    touchpoints: Container[str],
    now_ms: int,
    max_payload_bytes: int = 16_384,
    max_future_ms: int = 300_000,
    min_event_ms: int = MIN_EVENT_MS,
) -> TouchpointEvent | Invalid:
    """Decode and validate one message value.

    Parameters
    ----------
    raw
        The message value as it came off the topic.
    touchpoints
        The touchpoints the journey knows.
    now_ms
        The current wall-clock time, to reject timestamps too far in the future.
    max_payload_bytes
        Larger payloads are rejected before decoding.
    max_future_ms
        How far ahead of ``now_ms`` an event time may be (clock skew allowance).
    min_event_ms
        The earliest event time accepted (epoch ms; 1970-01-01 by default).

    Returns
    -------
    TouchpointEvent | Invalid

    Examples
    --------
    >>> decode_event(b'{"event_id":"e1","customer_id":"c1","touchpoint":"signup",'
    ...              b'"timestamp":"2026-01-01T00:00:00Z"}', touchpoints={"signup"}, now_ms=1<<60)
    TouchpointEvent(event_id='e1', customer_id='c1', touchpoint='signup', ts_ms=1767225600000, ...)
    >>> decode_event(b'{"event_id":"e1","anonymous_id":"d7","touchpoint":"signup","timestamp":0}',
    ...              touchpoints={"signup"}, now_ms=0).customer_id    # tracked as an anonymous visitor
    '{a}d7'
    >>> decode_event(b'{"event_id":"e1","touchpoint":"signup","timestamp":0}', touchpoints={"signup"}, now_ms=0)
    Invalid(reason=<Reason.MISSING_FIELD: 'missing_field'>, detail='missing customer_id or anonymous_id (at least one)')
    """
    doc = json_object(raw, max_payload_bytes)
    if isinstance(doc, Invalid):
        return doc
    for name in ("event_id", "touchpoint", "timestamp"):
        if name not in doc or doc[name] is None:
            return Invalid(Reason.MISSING_FIELD, f"missing required field {name!r}")
    customer_id, anonymous_id = doc.get("customer_id"), doc.get("anonymous_id")
    if customer_id is None and anonymous_id is None:
        return Invalid(Reason.MISSING_FIELD, "missing customer_id or anonymous_id (at least one)")
    event_id, touchpoint = doc["event_id"], doc["touchpoint"]
    for name, field in (("event_id", event_id), ("customer_id", customer_id), ("anonymous_id", anonymous_id),
                        ("touchpoint", touchpoint)):
        if field is not None and not isinstance(field, str):
            return Invalid(Reason.WRONG_TYPE, f"{name} must be a string, got {type(field).__name__}")
    if not event_id or len(event_id) > MAX_ID_LENGTH:
        return Invalid(Reason.WRONG_TYPE, f"event_id must have 1 to {MAX_ID_LENGTH} characters")
    for name, field in (("customer_id", customer_id), ("anonymous_id", anonymous_id)):
        problem = field is not None and customer_id_problem(field, name)
        if problem:
            return Invalid(Reason.INVALID_CUSTOMER_ID, problem)
    if customer_id is None:
        customer_id = anonymous_profile(anonymous_id)
    if touchpoint not in touchpoints:
        return Invalid(Reason.UNKNOWN_TOUCHPOINT, f"unknown touchpoint {touchpoint!r}")

    ts_ms = parse_timestamp(doc["timestamp"], min_ms=min_event_ms)
    if isinstance(ts_ms, Invalid):
        return ts_ms
    if ts_ms > now_ms + max_future_ms:
        ahead = (ts_ms - now_ms) / 1000
        return Invalid(Reason.TIMESTAMP_IN_FUTURE, f"event time is {ahead:.0f}s ahead of the worker's clock")

    value = doc.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Invalid(Reason.WRONG_TYPE, f"value must be a number, got {type(value).__name__}")
        if value < 0:
            return Invalid(Reason.NEGATIVE_VALUE, f"value must be >= 0, got {value}")
        value = float(value)
    channel, currency, properties = doc.get("channel"), doc.get("currency"), doc.get("properties")
    for name, field in (("channel", channel), ("currency", currency)):
        if field is not None and not isinstance(field, str):
            return Invalid(Reason.WRONG_TYPE, f"{name} must be a string, got {type(field).__name__}")
    if properties is not None and not isinstance(properties, dict):
        return Invalid(Reason.WRONG_TYPE, f"properties must be an object, got {type(properties).__name__}")
    return TouchpointEvent(event_id, customer_id, touchpoint, ts_ms, channel, value, currency, properties,
                           anonymous_id)


def json_object(raw: bytes, max_payload_bytes: int) -> dict[str, Any] | Invalid:
    """A message value as a JSON object, or why not (too large, not UTF-8 JSON, not an object).

    Examples
    --------
    >>> json_object(b'[1]', 100).reason, json_object(b'{"a": 1}', 100)
    (<Reason.NOT_AN_OBJECT: 'not_an_object'>, {'a': 1})
    """
    if len(raw) > max_payload_bytes:
        return Invalid(Reason.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes, limit is {max_payload_bytes}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid(Reason.UNDECODABLE, f"not UTF-8 JSON: {exc}")
    if not isinstance(doc, dict):
        return Invalid(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def encode_event(event: TouchpointEvent, *, customer_id: str | None = None) -> bytes:
    """An event as a message value of the contract (how a late anonymous event is forwarded to the
    customer its visitor became: ``customer_id`` given). Money is as decoded: checked, converted.

    Examples
    --------
    >>> e = decode_event(encode_event(TouchpointEvent("e1", "{a}d7", "visit", 5, "ads", anonymous_id="d7"),
    ...                               customer_id="c1"), touchpoints={"visit"}, now_ms=0)
    >>> e.customer_id, e.anonymous_id, e.links, e.ts_ms, e.channel
    ('c1', 'd7', True, 5, 'ads')
    """
    doc: dict[str, Any] = {"event_id": event.event_id, "touchpoint": event.touchpoint, "timestamp": event.ts_ms}
    cid = customer_id or (None if is_anonymous(event.customer_id) else event.customer_id)
    if cid is not None:
        doc["customer_id"] = cid
    if event.anonymous_id is not None:
        doc["anonymous_id"] = event.anonymous_id
    for name in ("channel", "value", "currency", "properties"):
        if getattr(event, name) is not None:
            doc[name] = getattr(event, name)
    return orjson.dumps(doc)


def customer_id_problem(customer_id: str, name: str = "customer_id") -> str | None:
    """Say what is wrong with a customer id, or None if it is usable.

    Braces are refused because the id becomes a Redis Cluster hash tag (``{id}``).

    Examples
    --------
    >>> customer_id_problem("c-42") is None
    True
    >>> customer_id_problem("a{b}")
    'customer_id must not contain { or }'
    """
    if not customer_id or len(customer_id) > MAX_ID_LENGTH:
        return f"{name} must have 1 to {MAX_ID_LENGTH} characters"
    found = _FORBIDDEN_ID.search(customer_id)
    if found is None:
        return None
    if found.group() in "{}":
        return f"{name} must not contain {{ or }}"
    return f"{name} must not contain control characters (found U+{ord(found.group()):04X})"


def parse_timestamp(value: object, *, min_ms: int = MIN_EVENT_MS) -> int | Invalid:
    """Event time as epoch milliseconds, from RFC 3339 text with a zone or whole epoch
    milliseconds, between ``min_ms`` and 2200-01-01.

    Examples
    --------
    >>> parse_timestamp("2026-01-01T01:00:00+01:00")
    1767225600000
    >>> parse_timestamp(1767225600000)
    1767225600000
    >>> parse_timestamp("1994-03-01T12:00:00Z")   # history from before 2000 is fine
    762523200000
    >>> parse_timestamp("2026-01-01T00:00:00").reason
    <Reason.INVALID_TIMESTAMP: 'invalid_timestamp'>
    >>> parse_timestamp(-1).reason
    <Reason.INVALID_TIMESTAMP: 'invalid_timestamp'>
    """
    if isinstance(value, bool):
        return Invalid(Reason.WRONG_TYPE, "timestamp must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int | float):
        if not min_ms <= value <= MAX_EPOCH_MS:  # (NaN fails this too)
            return Invalid(Reason.INVALID_TIMESTAMP, f"epoch milliseconds out of range: {value}")
        if isinstance(value, float) and not value.is_integer():
            return Invalid(Reason.INVALID_TIMESTAMP, f"epoch milliseconds must be a whole number: {value}")
        return int(value)
    if not isinstance(value, str):
        return Invalid(Reason.WRONG_TYPE, "timestamp must be an ISO-8601 string or epoch milliseconds")
    if _TIMESTAMP.fullmatch(value) is None:
        if _NO_ZONE.fullmatch(value):
            return Invalid(Reason.INVALID_TIMESTAMP, f"timestamp has no time zone: {value[:64]!r}")
        return Invalid(Reason.INVALID_TIMESTAMP, f"not an RFC 3339 timestamp (2026-11-24T07:20:00Z): {value[:64]!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:  # e.g. February 30th
        return Invalid(Reason.INVALID_TIMESTAMP, f"not a calendar date and time: {value[:64]!r}")
    ms = (parsed - _EPOCH) // _MS  # exact integer arithmetic, no float rounding
    if not min_ms <= ms <= MAX_EPOCH_MS:
        return Invalid(Reason.INVALID_TIMESTAMP, f"timestamp out of range: {value[:64]!r}")
    return ms
