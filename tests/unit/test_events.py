"""The event contract: what is accepted, and the reason for everything that is not."""

from __future__ import annotations

import orjson
import pytest

from models.events import Invalid, Reason, TouchpointEvent, decode_event

TOUCHPOINTS = {"site_visit", "purchase"}
NOW = 1_800_000_000_000


def decode(doc: object, **kw: object) -> TouchpointEvent | Invalid:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return decode_event(raw, touchpoints=TOUCHPOINTS, now_ms=NOW, **kw)  # type: ignore[arg-type]


def good(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {"event_id": "e1", "customer_id": "c1", "touchpoint": "purchase",
                              "timestamp": "2026-11-24T07:20:00.123Z", "value": 59.9, "currency": "EUR"}
    doc.update(over)
    return doc


def test_valid_event_is_decoded_with_event_time_in_ms():
    event = decode(good(channel="email", properties={"sku": "A1"}))
    assert event == TouchpointEvent("e1", "c1", "purchase", 1795504800123, "email", 59.9, "EUR", {"sku": "A1"})


@pytest.mark.parametrize("stamp", ["2026-11-24T08:20:00.123+01:00", 1795504800123, "2026-11-24T07:20:00.123000Z"])
def test_timestamps_in_any_documented_form_agree(stamp):
    assert decode(good(timestamp=stamp)).ts_ms == 1795504800123


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf8", Reason.UNDECODABLE),
        (b"{not json", Reason.UNDECODABLE),
        (b"[1, 2]", Reason.NOT_AN_OBJECT),
        (good(event_id=None), Reason.MISSING_FIELD),
        ({k: v for k, v in good().items() if k != "timestamp"}, Reason.MISSING_FIELD),
        (good(customer_id=42), Reason.WRONG_TYPE),
        (good(event_id=""), Reason.WRONG_TYPE),
        (good(customer_id="a{b}"), Reason.INVALID_CUSTOMER_ID),
        (good(touchpoint="teleport"), Reason.UNKNOWN_TOUCHPOINT),
        (good(value=-1), Reason.NEGATIVE_VALUE),
        (good(value="12"), Reason.WRONG_TYPE),
        (good(value=True), Reason.WRONG_TYPE),
        (good(timestamp="yesterday"), Reason.INVALID_TIMESTAMP),
        (good(timestamp="2026-11-24T07:20:00"), Reason.INVALID_TIMESTAMP),
        (good(timestamp=-1), Reason.INVALID_TIMESTAMP),  # before 1970
        (good(timestamp="1969-12-31T23:59:59Z"), Reason.INVALID_TIMESTAMP),
        (good(timestamp=NOW + 3_600_000), Reason.TIMESTAMP_IN_FUTURE),
        (good(properties=[1]), Reason.WRONG_TYPE),
        (good(channel=3), Reason.WRONG_TYPE),
    ],
)
def test_invalid_input_gets_a_machine_readable_reason(raw, reason):
    result = decode(raw)
    assert isinstance(result, Invalid)
    assert result.reason is reason
    assert result.detail


def test_oversized_payload_is_refused_before_decoding():
    result = decode(good(properties={"blob": "x" * 500}), max_payload_bytes=200)
    assert isinstance(result, Invalid) and result.reason is Reason.PAYLOAD_TOO_LARGE


def test_history_from_any_date_since_1970_is_accepted():
    assert decode(good(timestamp="1994-03-01T12:00:00Z")).ts_ms == 762_523_200_000
    assert decode(good(timestamp=0)).ts_ms == 0


def test_the_earliest_event_time_is_configurable():
    # With no history before 2000, epoch seconds sent by mistake are caught rather than read as 1970.
    from models.events import decode_event

    result = decode_event(orjson.dumps(good(timestamp=1_795_504_800)), touchpoints={"purchase"}, now_ms=NOW,
                          min_event_ms=946_684_800_000)
    assert isinstance(result, Invalid) and result.reason is Reason.INVALID_TIMESTAMP


def test_small_clock_skew_is_allowed():
    assert isinstance(decode(good(timestamp=NOW + 60_000)), TouchpointEvent)
