"""Marketing spend: the message contract (models/spend.py), the feed that applies it on the in-memory
store (the latest record of a channel and day wins, whatever arrives twice or late), and the import's checks."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.events import Reason
from models.spend import Spend, day_number, decode_spend, iso_day, spend_key
from streams.ops import spend_import
from streams.service.handler import Limits
from streams.service.ports import SourceRecord
from streams.service.spend import SpendFeed
from streams.state.memory_store import MemoryStore
from tests.unit.support import ListDeadLetters

DAY = 86_400_000
NOV_20 = 20_777  # 2026-11-20: 1_795_132_800_000 ms since the epoch / 86_400_000
NOW = (NOV_20 + 10) * DAY  # the clock of these tests: 2026-11-30T00:00Z


def spend(doc: object, **kw: object) -> Spend | object:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    options: dict[str, object] = {"currency": "EUR", "rates": {"USD": 0.92}, "now_ms": NOW} | kw
    return decode_spend(raw, **options)  # type: ignore[arg-type]


def reason(doc: object, **kw: object) -> Reason:
    out = spend(doc, **kw)
    assert not isinstance(out, Spend), out
    return out.reason  # type: ignore[attr-defined]


def row(channel: object = "search", day: object = "2026-11-20", amount: object = 1234.5, **extra: object) -> dict:
    return {"channel": channel, "day": day, "amount": amount, **extra}


# ---- the contract ----

def test_day_numbers_are_the_event_time_days():
    assert day_number("1970-01-01") == 0
    assert day_number("2026-11-20") == NOV_20 == 1_795_132_800_000 // DAY
    assert iso_day(NOV_20) == "2026-11-20"
    assert spend_key("paid social", NOV_20) == "paid social|2026-11-20"


@given(st.integers(0, 7_258_118_400_000 // DAY))  # 1970 to 2200
def test_iso_day_and_day_number_round_trip(day):
    assert day_number(iso_day(day)) == day


@pytest.mark.parametrize(("doc", "expected"), [
    (row(), Spend("search", NOV_20, 123_450)),
    (row(currency="EUR"), Spend("search", NOV_20, 123_450)),
    (row(amount=12), Spend("search", NOV_20, 1200)),
    (row(amount=0), Spend("search", NOV_20, 0)),
    (row(amount=-0.0), Spend("search", NOV_20, 0)),
    (row(amount=0.1), Spend("search", NOV_20, 10)),
    (row(amount=19.999), Spend("search", NOV_20, 2000)),  # whole cents, as touchpoint values
    (row(amount=100, currency="USD"), Spend("search", NOV_20, 9200)),  # 0.92 EUR per USD
    (row(amount=10_000_000), Spend("search", NOV_20, 1_000_000_000)),  # the maximum itself
    (row(channel="Paid Social / DE"), Spend("Paid Social / DE", NOV_20, 123_450)),
    (row(day="2026-11-30"), Spend("search", NOV_20 + 10, 123_450)),  # today
    (row(day="1970-01-01"), Spend("search", 0, 123_450)),
    ({"channel": "email", "date": "2026-11-20", "amount": 5}, Spend("email", NOV_20, 500)),  # "date" for "day"
    (row(note="extra fields are ignored"), Spend("search", NOV_20, 123_450)),
])
def test_valid_spend(doc, expected):
    assert spend(doc) == expected


@pytest.mark.parametrize(("doc", "expected"), [
    (b"not json", Reason.UNDECODABLE),
    (b"\xff\xfe{}", Reason.UNDECODABLE),
    (b'[1, 2]', Reason.NOT_AN_OBJECT),
    (b'"search"', Reason.NOT_AN_OBJECT),
    ({"day": "2026-11-20", "amount": 1}, Reason.MISSING_FIELD),
    ({"channel": "search", "amount": 1}, Reason.MISSING_FIELD),
    ({"channel": "search", "day": "2026-11-20"}, Reason.MISSING_FIELD),
    (row(channel=None), Reason.MISSING_FIELD),
    (row(amount=None), Reason.MISSING_FIELD),
    (row(channel=7), Reason.WRONG_TYPE),
    (row(channel=""), Reason.WRONG_TYPE),
    (row(channel="x" * 257), Reason.WRONG_TYPE),
    (row(channel="a{b}"), Reason.WRONG_TYPE),
    (row(channel="search\n"), Reason.WRONG_TYPE),
    (row(amount="12.50"), Reason.WRONG_TYPE),
    (row(amount=True), Reason.WRONG_TYPE),
    (row(currency=978), Reason.WRONG_TYPE),
    (row(day=NOV_20), Reason.WRONG_TYPE),
    (row(day="2026-11-31"), Reason.INVALID_TIMESTAMP),
    (row(day="2026-1-5"), Reason.INVALID_TIMESTAMP),
    (row(day="20/11/2026"), Reason.INVALID_TIMESTAMP),
    (row(day="2026-11-20T00:00:00Z"), Reason.INVALID_TIMESTAMP),
    (row(day=""), Reason.INVALID_TIMESTAMP),
    (row(day="2026-12-01"), Reason.TIMESTAMP_IN_FUTURE),  # tomorrow
    (row(amount=-0.01), Reason.NEGATIVE_VALUE),
    (row(amount=10_000_000.01), Reason.VALUE_OUT_OF_RANGE),
    (b'{"channel": "search", "day": "2026-11-20", "amount": 1000000000000000000000000000000}',
     Reason.VALUE_OUT_OF_RANGE),
    (row(amount=1e308), Reason.VALUE_OUT_OF_RANGE),
    (row(amount=1.0, currency="JPY"), Reason.CURRENCY_MISMATCH),  # no rate for it
    (row(amount=1.0, currency="eur"), Reason.CURRENCY_MISMATCH),  # codes are exact
])
def test_invalid_spend(doc, expected):
    assert reason(doc) == expected


def test_money_rules_are_those_of_touchpoint_values():
    # over the maximum once converted, though not in its own currency
    assert reason(row(amount=9_000_000, currency="GBP"), rates={"GBP": 1.17}) == Reason.VALUE_OUT_OF_RANGE
    assert spend(row(amount=9_000_000, currency="GBP"), rates={"GBP": 1.1}) == Spend("search", NOV_20, 990_000_000)
    assert reason(row(amount=50), max_value=49.99) == Reason.VALUE_OUT_OF_RANGE
    out = spend(row(amount=1, currency="JPY"))
    assert "amount in JPY" in out.detail  # type: ignore[union-attr]


def test_days_are_bounded_by_the_earliest_event_time_and_the_clock():
    assert reason(row(day="1999-12-31"), min_day=day_number("2000-01-01")) == Reason.INVALID_TIMESTAMP
    assert spend(row(day="2000-01-01"), min_day=day_number("2000-01-01")) == Spend("search", 10_957, 123_450)
    assert spend(row(day="2150-01-01"), now_ms=None) == Spend("search", day_number("2150-01-01"), 123_450)
    assert reason(row(day="2200-01-01"), now_ms=None) == Reason.INVALID_TIMESTAMP
    # five minutes of clock skew: a producer whose clock is ahead may already be in tomorrow
    midnight = (NOV_20 + 11) * DAY  # 2026-12-01T00:00Z
    assert spend(row(day="2026-12-01"), now_ms=midnight - 60_000) == Spend("search", NOV_20 + 11, 123_450)
    assert reason(row(day="2026-12-01"), now_ms=midnight - 600_000) == Reason.TIMESTAMP_IN_FUTURE


def test_the_key_must_be_the_messages_channel_and_day():
    assert spend(row(), key=b"search|2026-11-20") == Spend("search", NOV_20, 123_450)
    assert reason(row(), key=b"search|2026-11-21") == Reason.INVALID_KEY
    assert reason(row(), key=b"email|2026-11-20") == Reason.INVALID_KEY
    assert reason(row(), key=b"") == Reason.INVALID_KEY
    assert reason({"channel": "search", "date": "2026-11-20", "amount": 1}, key=b"search|2026-11-20 ") \
        == Reason.INVALID_KEY


def test_size_and_null_payloads():
    assert reason(orjson.dumps(row(note="x" * 20_000))) == Reason.PAYLOAD_TOO_LARGE
    out = decode_spend(None, currency="EUR", rates={})
    assert not isinstance(out, Spend) and out.reason == Reason.UNDECODABLE


# ---- the feed on the in-memory store ----

class FlakyStore(MemoryStore):
    """Fails the first ``failures`` spend writes as an unreachable Redis does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def apply_spend(self, partition: int, offset: int, spend: Spend | None) -> bool:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis is down")
        return await super().apply_spend(partition, offset, spend)


def record(offset: int, doc: object, *, key: bytes | None = None, partition: int = 0) -> SourceRecord:
    value = doc if isinstance(doc, bytes) or doc is None else orjson.dumps(doc)
    if key is None and isinstance(doc, dict):
        key = f"{doc.get('channel')}|{doc.get('day')}".encode()
    return SourceRecord(key, value, "marketing-spend", partition, offset)


def feed(store: MemoryStore | None = None) -> tuple[SpendFeed, MemoryStore, ListDeadLetters]:
    store = store or MemoryStore()
    letters = ListDeadLetters()
    return SpendFeed(store, letters, Limits(rates={"USD": 0.5}), retryable=(ConnectionError,)), store, letters


async def test_the_latest_record_of_a_channel_and_day_wins_and_redelivery_changes_nothing():
    f, store, letters = feed()
    records = [
        record(0, row("search", "2026-11-19", 100)),
        record(1, row("search", "2026-11-20", 200)),
        record(2, row("email", "2026-11-20", 50, currency="USD")),  # 25 EUR
        record(3, row("search", "2026-11-20", 250)),  # a correction of offset 1
        record(4, row("display", "2026-11-01", 1000)),
    ]
    assert [await f.handle(r, NOW) for r in records] == ["applied"] * 5
    assert await store.spend_by_channel(NOV_20 - 1, NOV_20) == {"search": 35_000, "email": 2_500}
    assert await store.spend_by_channel(NOV_20, NOV_20) == {"search": 25_000, "email": 2_500}
    assert await store.spend_by_channel(NOV_20 - 19, NOV_20 - 19) == {"display": 100_000}
    assert await store.spend_by_channel(NOV_20 + 1, NOV_20 + 30) == {}
    # Kafka redelivers after a crash; a zombie worker replays from an old offset: no change either way
    assert [await f.handle(r, NOW) for r in records] == ["unchanged"] * 5
    assert await store.spend_by_channel(NOV_20 - 30, NOV_20) == {"search": 35_000, "email": 2_500, "display": 100_000}
    assert await store.spend_offsets() == {0: 4}
    # the same statement published again is a new record: applied, the same amount
    assert await f.handle(record(5, row("search", "2026-11-20", 250)), NOW) == "applied"
    assert await store.spend_by_channel(NOV_20, NOV_20) == {"search": 25_000, "email": 2_500}
    assert letters.sent == []


async def test_invalid_records_are_dead_lettered_with_their_reason_and_counted_as_handled():
    f, store, letters = feed()
    hostile = [
        record(0, row(amount=-5)),
        record(1, row(currency="JPY")),
        record(2, {"day": "2026-11-20", "amount": 5}, key=b"|2026-11-20"),
        record(3, b"not json", key=b"search|2026-11-20"),
        record(4, row(day="2026-13-01")),
        record(5, row("search", "2026-11-20", 5), key=b"email|2026-11-20"),
        record(6, None, key=b"search|2026-11-20"),
        record(7, row(), key=None),
    ]
    hostile[-1] = SourceRecord(None, orjson.dumps(row()), "marketing-spend", 0, 7)
    outcomes = [await f.handle(r, NOW) for r in hostile]
    expected = ["negative_value", "currency_mismatch", "missing_field", "undecodable", "invalid_timestamp",
                "invalid_key", "undecodable", "invalid_key"]
    assert outcomes == expected
    assert [(d.record.offset, d.reason.value) for d in letters.sent] == list(enumerate(expected))
    headers = dict(letters.sent[0].headers())
    assert headers["journey.error.reason"] == b"negative_value"
    assert (headers["journey.source.topic"], headers["journey.source.offset"]) == (b"marketing-spend", b"0")
    assert await store.spend_by_channel(0, NOV_20 + 30) == {}
    assert await store.spend_offsets() == {0: 7}


async def test_the_feed_waits_out_an_outage_instead_of_skipping_a_record(monkeypatch):
    monkeypatch.setattr("streams.service.spend.MAX_BACKOFF_S", 0.01)
    f, store, _ = feed(FlakyStore(failures=3))
    assert await f.handle(record(0, row(amount=1)), NOW) == "applied"
    assert await store.spend_by_channel(NOV_20, NOV_20) == {"search": 100}
    assert f.counts["retries"] == 3


async def test_a_record_that_breaks_the_feed_is_dead_lettered_as_internal_error():
    class Broken(MemoryStore):
        async def apply_spend(self, partition: int, offset: int, spend: Spend | None) -> bool:
            if spend is not None:
                raise ValueError("a bug")
            return await super().apply_spend(partition, offset, spend)

    f, store, letters = feed(Broken())
    assert await f.handle(record(0, row()), NOW) == "internal_error"
    assert letters.sent[0].detail == "ValueError: a bug"
    assert await store.spend_offsets() == {0: 0}


# ---- journey spend import: every line is checked before anything is sent ----

def test_import_checks_every_line_and_names_the_bad_ones(tmp_path: Path):
    path = tmp_path / "spend.csv"
    path.write_text(
        "channel,day,amount,currency\n"
        "search,2026-11-20,1234.50,EUR\n"
        "email,2026-11-20,-3,EUR\n"
        "social,2026-11-31,10,\n"
        ",2026-11-20,10,EUR\n"
        "display,2026-11-20,12 EUR,EUR\n"
        "direct,2026-11-20,100,USD\n"
    )
    checked = spend_import.check(spend_import.read_lines(str(path)), Limits(rates={"USD": 0.5}), now_ms=NOW)
    assert [s for _, s in checked.lines] == [Spend("search", NOV_20, 123_450), Spend("direct", NOV_20, 5000)]
    assert [p.split(":")[0:2] for p in checked.problems] == [
        ["line 3", " negative_value"], ["line 4", " invalid_timestamp"], ["line 5", " missing_field"],
        ["line 6", " wrong_type"],
    ]


def test_import_reads_json_lines_and_refuses_a_header_without_the_columns(tmp_path: Path):
    path = tmp_path / "spend.jsonl"
    path.write_text('{"channel": "search", "date": "2026-11-20", "amount": 1}\n\n'
                    '{"channel": "search", "day": "2026-11-20", "amount": 2}\n')
    checked = spend_import.check(spend_import.read_lines(str(path)), Limits(), now_ms=NOW)
    assert [(line.number, s) for line, s in checked.lines] == [(1, Spend("search", NOV_20, 100)),
                                                              (3, Spend("search", NOV_20, 200))]
    bad = tmp_path / "bad.csv"
    bad.write_text("channel,when,amount\nsearch,2026-11-20,1\n")
    with pytest.raises(spend_import.SpendImportError, match="line 1: .* missing day"):
        list(spend_import.read_lines(str(bad)))
