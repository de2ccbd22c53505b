"""The marketing-spend contract: decode one message into a channel's spend on one day, or why it is invalid.

A message states *the* spend of a channel on a UTC calendar day (a correction is a new message
for the same key, and the latest wins), so applying one twice changes nothing. Money follows the
touchpoint values' rules (:func:`models.value.check_money`): converted into the configured
currency, at most the configured maximum, kept in integer cents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import orjson

from models.durations import DAY_MS
from models.events import MAX_EPOCH_MS, Invalid, Reason, TouchpointEvent, customer_id_problem, json_object
from models.value import DEFAULT_MAX_VALUE, check_money

_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_EPOCH_DAY = date(1970, 1, 1).toordinal()
#: The first day no spend may be on (2200-01-01, the end of the event-time range).
END_DAY = MAX_EPOCH_MS // DAY_MS


@dataclass(frozen=True, slots=True)
class Spend:
    """What was spent on one acquisition channel on one UTC day, in cents of the configured currency.

    ``day`` is the event-time day number (``epoch ms // 86_400_000``), the days the rest of the
    tracker counts in.
    """

    channel: str
    day: int
    cents: int

    @property
    def key(self) -> str:
        """The message key of this channel and day (``<channel>|<day>``)."""
        return spend_key(self.channel, self.day)


def day_number(text: str) -> int:
    """The day number of an ISO date (``YYYY-MM-DD``).

    Examples
    --------
    >>> day_number("1970-01-02"), day_number("2026-11-20")
    (1, 20777)
    """
    return date.fromisoformat(text).toordinal() - _EPOCH_DAY


def iso_day(day: int) -> str:
    """The ISO date of a day number.

    Examples
    --------
    >>> iso_day(0), iso_day(20777)
    ('1970-01-01', '2026-11-20')
    """
    return date.fromordinal(day + _EPOCH_DAY).isoformat()


def spend_key(channel: str, day: int) -> str:
    """The message key of a channel's spend on a day: ``<channel>|<ISO date>``.

    One key per channel and day keeps a correction in the same partition as what it corrects
    (the latest in topic order wins) and lets a compacted topic keep only the latest.

    Examples
    --------
    >>> spend_key("search", 20777)
    'search|2026-11-20'
    """
    return f"{channel}|{iso_day(day)}"


def parse_day(value: object, *, min_day: int = 0, last_day: int = END_DAY - 1) -> int | Invalid:
    """A UTC calendar day, written ``YYYY-MM-DD``, as its day number, from ``min_day`` to ``last_day``.

    Examples
    --------
    >>> parse_day("2026-11-20")
    20777
    >>> parse_day("2026-02-30").detail
    "not a calendar date: '2026-02-30'"
    >>> parse_day("20/11/2026").reason, parse_day(20777).reason
    (<Reason.INVALID_TIMESTAMP: 'invalid_timestamp'>, <Reason.WRONG_TYPE: 'wrong_type'>)
    """
    if not isinstance(value, str):
        return Invalid(Reason.WRONG_TYPE, f"day must be an ISO date string (2026-11-20), got {type(value).__name__}")
    if _DAY.fullmatch(value) is None:
        return Invalid(Reason.INVALID_TIMESTAMP, f"day must be an ISO date (2026-11-20), got {value[:64]!r}")
    try:
        day = day_number(value)
    except ValueError:  # e.g. February 30th
        return Invalid(Reason.INVALID_TIMESTAMP, f"not a calendar date: {value!r}")
    if not min_day <= day <= last_day:
        return Invalid(Reason.INVALID_TIMESTAMP,
                       f"day {value} is outside the accepted range {iso_day(min_day)} to {iso_day(last_day)}")
    return day


def decode_spend(
    raw: bytes | None,
    *,
    currency: str,
    rates: Mapping[str, float],
    max_value: float = DEFAULT_MAX_VALUE,
    key: bytes | None = None,
    now_ms: int | None = None,
    max_future_ms: int = 300_000,
    min_day: int = 0,
    max_payload_bytes: int = 16_384,
) -> Spend | Invalid:
    """Decode and validate one message of the marketing-spend topic.

    Parameters
    ----------
    raw
        The message value: ``{"channel": "search", "day": "2026-11-20", "amount": 1234.5,
        "currency": "EUR"}`` (``date`` is accepted for ``day``; without ``currency`` the amount is
        in the configured currency).
    currency, rates, max_value
        The money rules of :func:`models.value.check_money`: an amount in another currency is
        converted with ``rates`` (units of ``currency`` per unit) or refused; above ``max_value``
        (in either currency) it is refused.
    key
        The message key, which must be ``<channel>|<day>`` (:func:`spend_key`) as the message
        states them; None: not checked (when the key is made from the message, as the import does).
    now_ms
        The current time: a day after today (UTC, allowing ``max_future_ms`` of clock skew) is
        refused. None: not checked.
    min_day
        The earliest day accepted (a day number; the day of ``JOURNEY_MIN_EVENT_TIME``).
    max_payload_bytes
        Larger payloads are refused before decoding.

    Returns
    -------
    Spend | Invalid

    Examples
    --------
    >>> decode_spend(b'{"channel": "search", "day": "2026-11-20", "amount": 1234.5, "currency": "USD"}',
    ...              currency="EUR", rates={"USD": 0.5}, key=b"search|2026-11-20")
    Spend(channel='search', day=20777, cents=61725)
    >>> decode_spend(b'{"channel": "search", "date": "2026-11-20", "amount": 0.1}', currency="EUR", rates={})
    Spend(channel='search', day=20777, cents=10)
    >>> decode_spend(b'{"channel": "search", "day": "2026-11-20", "amount": -5}', currency="EUR", rates={}).reason
    <Reason.NEGATIVE_VALUE: 'negative_value'>
    >>> decode_spend(b'{"channel": "email", "day": "2026-11-20", "amount": 5}', currency="EUR", rates={},
    ...              key=b"search|2026-11-20").reason
    <Reason.INVALID_KEY: 'invalid_key'>
    """
    if raw is None:
        return Invalid(Reason.UNDECODABLE, "empty message (null value)")
    doc = json_object(raw, max_payload_bytes)
    if isinstance(doc, Invalid):
        return doc

    day_text = doc["day"] if "day" in doc else doc.get("date")
    for name, field in (("channel", doc.get("channel")), ("day", day_text), ("amount", doc.get("amount"))):
        if field is None:
            return Invalid(Reason.MISSING_FIELD, f"missing required field {name!r}")
    channel, amount, money = doc["channel"], doc["amount"], doc.get("currency")
    if not isinstance(channel, str):
        return Invalid(Reason.WRONG_TYPE, f"channel must be a string, got {type(channel).__name__}")
    problem = customer_id_problem(channel, "channel")
    if problem:
        return Invalid(Reason.WRONG_TYPE, problem)
    last_day = END_DAY - 1 if now_ms is None else min(END_DAY - 1, (now_ms + max_future_ms) // DAY_MS)
    day = parse_day(day_text, min_day=min_day)
    if isinstance(day, Invalid):
        return day
    if day > last_day:
        return Invalid(Reason.TIMESTAMP_IN_FUTURE, f"day {iso_day(day)} is after today ({iso_day(last_day)}, UTC)")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return Invalid(Reason.WRONG_TYPE, f"amount must be a number, got {type(amount).__name__}")
    if amount < 0:
        return Invalid(Reason.NEGATIVE_VALUE, f"amount must be >= 0, got {amount}")
    if money is not None and not isinstance(money, str):
        return Invalid(Reason.WRONG_TYPE, f"currency must be a string, got {type(money).__name__}")
    if key is not None and key != spend_key(channel, day).encode():
        shown = key.decode(errors="replace")[:300]
        return Invalid(Reason.INVALID_KEY, f"the key must be {spend_key(channel, day)!r} (channel|day), got {shown!r}")

    # The touchpoint values' own check, so that the money rules cannot drift apart.
    checked = check_money(TouchpointEvent("", "", "spend", 0, value=float(amount), currency=money), None,
                          currency=currency, rates=rates, max_value=max_value)
    if isinstance(checked, Invalid):
        return Invalid(checked.reason, checked.detail.replace("value", "amount", 1))
    return Spend(channel, day, round((checked.value or 0.0) * 100))


def encode_spend(spend: Spend, currency: str) -> bytes:
    """A spend as a message value of the contract (in the configured currency).

    Examples
    --------
    >>> encode_spend(Spend("search", 20777, 123450), "EUR")
    b'{"channel":"search","day":"2026-11-20","amount":1234.5,"currency":"EUR"}'
    """
    return orjson.dumps({"channel": spend.channel, "day": iso_day(spend.day), "amount": spend.cents / 100,
                         "currency": currency})
