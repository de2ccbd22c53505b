"""The batch handler with in-memory ports: every record is applied, a duplicate, or dead-lettered."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from models.events import Reason
from models.watermark import Watermarks
from streams.journey_file import load_journey_map
from streams.journey_store import InMemoryJourneyStore
from streams.pipeline import DeadLetter, Limits, PipelineStats, SourceRecord, advance_journeys
from streams.settings import DEFAULT_MAP

JOURNEY = load_journey_map(DEFAULT_MAP)
NOW = 1_800_000_000_000
DAY = 86_400_000


class ListDeadLetters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        self.sent.extend(letters)


def rec(offset: int, value: bytes | None) -> SourceRecord:
    return SourceRecord(key=b"c1", value=value, topic="touchpoints", partition=0, offset=offset, timestamp_ms=NOW)


def event(eid: str, tp: str, ts: int, **extra: object) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": "c1", "touchpoint": tp, "timestamp": ts, **extra})


async def run(records: list[SourceRecord], store: InMemoryJourneyStore, dlq: ListDeadLetters):
    return await advance_journeys(
        records, journey=JOURNEY, store=store, dead_letters=dlq,
        limits=Limits(max_payload_bytes=4096, max_future_ms=60_000), now_ms=NOW,
        watermarks=Watermarks(allowed_lateness_ms=60_000, idle_timeout_ms=60_000),
    )


async def test_a_mixed_batch_is_fully_accounted_for():
    store, dlq = InMemoryJourneyStore(JOURNEY, dedupe_window_ms=30 * DAY, path_length=5), ListDeadLetters()
    ts = NOW - DAY
    records = [
        rec(0, event("e1", "site_visit", ts)),
        rec(1, event("e2", "purchase", ts + 1000, value=25.5)),
        rec(2, event("e1", "site_visit", ts)),           # redelivered
        rec(3, b"{oops"),                                 # undecodable
        rec(4, event("e3", "teleport", ts)),              # unknown touchpoint
        rec(5, None),                                     # tombstone
        rec(6, event("e4", "site_visit", ts - 40 * DAY)), # older than the dedupe window
    ]
    result = await run(records, store, dlq)
    assert (result.applied, result.duplicates) == (2, 1)
    assert [(d.record.offset, d.reason) for d in dlq.sent] == [
        (3, Reason.UNDECODABLE), (4, Reason.UNKNOWN_TOUCHPOINT), (5, Reason.UNDECODABLE), (6, Reason.TOO_LATE),
    ]
    state = await store.get("c1")
    assert state is not None and (state.stage, state.events) == ("purchase", 2)

    stats = PipelineStats()
    stats.record(len(records), result)
    assert stats.as_dict()["dead_letters_by_reason"] == {"undecodable": 2, "unknown_touchpoint": 1, "too_late": 1}


async def test_dead_letters_carry_the_original_bytes_and_source_position():
    store, dlq = InMemoryJourneyStore(JOURNEY, dedupe_window_ms=DAY, path_length=5), ListDeadLetters()
    await run([rec(41, b"\xff garbage")], store, dlq)
    (letter,) = dlq.sent
    assert letter.record.value == b"\xff garbage"
    headers = dict(letter.headers())
    assert headers["journey.error.reason"] == b"undecodable"
    assert (headers["journey.source.topic"], headers["journey.source.offset"]) == (b"touchpoints", b"41")


async def test_an_empty_batch_sends_nothing():
    store, dlq = InMemoryJourneyStore(JOURNEY, dedupe_window_ms=DAY, path_length=5), ListDeadLetters()
    result = await run([], store, dlq)
    assert (result.applied, result.duplicates, dlq.sent) == (0, 0, [])


async def test_money_in_another_currency_is_converted_or_refused():
    store, dlq = InMemoryJourneyStore(JOURNEY, dedupe_window_ms=DAY, path_length=5), ListDeadLetters()
    ts = NOW - DAY
    records = [
        rec(0, event("m1", "purchase", ts, value=10, currency="USD")),
        rec(1, event("m2", "purchase", ts + 1, value=10, currency="JPY")),
        rec(2, event("m3", "purchase", ts + 2)),  # an order without a value
        rec(3, event("m4", "purchase", ts + 3, value=5)),  # no currency: the configured one
    ]
    await advance_journeys(
        records, journey=JOURNEY, store=store, dead_letters=dlq,
        limits=Limits(4096, 60_000, currency="EUR", rates={"USD": 0.9}), now_ms=NOW,
        watermarks=Watermarks(allowed_lateness_ms=60_000, idle_timeout_ms=60_000),
    )
    assert [(d.record.offset, d.reason) for d in dlq.sent] == [(1, Reason.CURRENCY_MISMATCH), (2, Reason.MISSING_FIELD)]
    state = await store.get("c1")
    assert state is not None and (state.orders, state.gross_cents) == (2, 1400)
