"""The batch handler with the in-memory store: every record is applied, a duplicate, or dead-lettered,
and a crash at any point between the steps leaves nothing lost and nothing counted twice."""

from __future__ import annotations

import orjson
import pytest

from models.events import Reason
from models.partition import Rules
from streams.journey_file import load_journey_map
from streams.service.handler import CONTROL_HEADER, BatchHandler, Limits, erase_request
from streams.service.ports import Fenced, SourceRecord
from streams.settings import DEFAULT_MAP
from tests.unit.support import Harness, ListDeadLetters

JOURNEY = load_journey_map(DEFAULT_MAP)
NOW = 1_800_000_000_000
DAY = 86_400_000


def event(eid: str, tp: str, ts: int, cid: str = "c1", **extra: object) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": cid, "touchpoint": tp, "timestamp": ts, **extra})


def harness(**limits: object) -> Harness:
    return Harness(JOURNEY, limits=Limits(max_payload_bytes=4096, max_future_ms=60_000, **limits))  # type: ignore[arg-type]


async def test_a_mixed_batch_is_fully_accounted_for():
    h = harness()
    ts = NOW - DAY
    result = await h.batch(
        event("e1", "site_visit", ts),
        event("e2", "purchase", ts + 1000, value=25.5),
        event("e1", "site_visit", ts),            # re-sent: the same event id
        b"{oops",                                  # undecodable
        event("e3", "teleport", ts),              # unknown touchpoint
        None,                                      # a null value
        event("e4", "site_visit", ts - 40 * DAY),  # older than the dedupe window
        now_ms=NOW,
    )
    assert (result.records, result.applied, result.duplicates) == (7, 2, 1)
    assert [(d.record.offset, d.reason) for d in h.dlq.sent] == [
        (3, Reason.UNDECODABLE), (4, Reason.UNKNOWN_TOUCHPOINT), (5, Reason.UNDECODABLE), (6, Reason.TOO_LATE),
    ]
    state = await h.store.customer("c1")
    assert state is not None and (state.stage, state.events) == ("purchase", 2)


async def test_a_redelivered_batch_is_all_duplicates_and_dead_letters_nothing_again():
    h = harness()
    records = [h.record(event("e1", "site_visit", NOW - DAY)), h.record(b"{oops")]
    await h.records(records, now_ms=NOW)
    again = await h.records(records, now_ms=NOW)  # Kafka redelivers after a crash before its offset commit
    assert (again.applied, again.duplicates, again.dead) == (0, 2, [])
    assert len(h.dlq.sent) == 1


async def test_dead_letters_carry_the_original_bytes_and_source_position():
    h = harness()
    await h.batch(b"\xff garbage", now_ms=NOW)
    (letter,) = h.dlq.sent
    assert letter.record.value == b"\xff garbage"
    headers = dict(letter.headers())
    assert headers["journey.error.reason"] == b"undecodable"
    assert (headers["journey.source.topic"], headers["journey.source.offset"]) == (b"touchpoints", b"0")


async def test_money_in_another_currency_is_converted_or_refused_and_huge_values_are_refused():
    h = harness(currency="EUR", rates={"USD": 0.9}, max_value=1_000_000.0)
    ts = NOW - DAY
    await h.batch(
        event("m1", "purchase", ts, value=10, currency="USD"),
        event("m2", "purchase", ts + 1, value=10, currency="JPY"),
        event("m3", "purchase", ts + 2),  # an order without a value
        event("m4", "purchase", ts + 3, value=5),  # no currency: the configured one
        event("m5", "purchase", ts + 4, value=1e308),
        event("m6", "refund", ts + 5, value=1e20),
        now_ms=NOW,
    )
    assert [(d.record.offset, d.reason) for d in h.dlq.sent] == [
        (1, Reason.CURRENCY_MISMATCH), (2, Reason.MISSING_FIELD), (4, Reason.VALUE_OUT_OF_RANGE),
        (5, Reason.VALUE_OUT_OF_RANGE),
    ]
    state = await h.store.customer("c1")
    assert state is not None and (state.orders, state.gross_cents, state.refunded_cents) == (2, 1400, 0)


async def test_an_erased_customer_is_not_brought_back_by_their_old_events():
    h = harness()
    ts = NOW - DAY
    old = [h.record(event("e1", "site_visit", ts)), h.record(event("e2", "purchase", ts + 1, value=9.0))]
    await h.records(old, now_ms=NOW)
    erase = h.record(erase_request("c1", NOW - 1000), headers={CONTROL_HEADER: b"erase"})
    result = await h.records([erase], now_ms=NOW)
    assert result.erasures == 1 and await h.store.customer("c1") is None
    assert h.messages[-1] is None  # a tombstone for the alerts topic
    # The same events re-sent (a replay): refused, dead-lettered without their content.
    replay = [h.record(event("e1", "site_visit", ts)), h.record(event("e2", "purchase", ts + 1, value=9.0))]
    result = await h.records(replay, now_ms=NOW)
    assert result.applied == 0 and await h.store.customer("c1") is None
    assert [(d.reason, d.redact) for d in h.dlq.sent] == [(Reason.ERASED_CUSTOMER, True)] * 2
    # A new event after the erasure starts a new profile.
    await h.batch(event("e9", "site_visit", NOW), now_ms=NOW)
    state = await h.store.customer("c1")
    assert state is not None and state.events == 1
    assert (await h.store.aggregates())["f|awareness"] == 1


async def test_a_fenced_worker_commits_nothing():
    store_h = harness()
    zombie = store_h.handler
    await zombie.assign(0)
    # Another worker takes the partition over (a rebalance the zombie has not noticed).
    newcomer = BatchHandler(store_h.store, ListDeadLetters(), Rules(JOURNEY), Limits(max_future_ms=1 << 50))
    await newcomer.assign(0)
    record = SourceRecord(b"c1", event("e1", "site_visit", NOW - DAY), "touchpoints", 0, 0)
    with pytest.raises(Fenced):
        await zombie.handle([record], NOW)
    assert await store_h.store.customer("c1") is None
    result = await newcomer.handle([record], NOW)
    assert result.applied == 1


async def test_a_batch_that_passes_many_deadlines_fires_them_all_whatever_is_loaded_at_a_time():
    # 30 customers stall; one record moves the watermark past all of them, with 4 loaded at a time.
    h = Harness(JOURNEY, limits=Limits(max_future_ms=1 << 50), due_limit=4)
    t0 = NOW - 30 * DAY
    await h.batch(*(event(f"a{i}", "add_to_cart", t0 + i, cid=f"c{i:02d}") for i in range(30)))
    await h.batch(event("clock", "review", t0 + 2 * DAY, cid="clock"))
    stalls = [a for a in h.alerts() if a["type"] == "stalled_critical_path"]
    assert [a["customer_id"] for a in stalls] == [f"c{i:02d}" for i in range(30)]  # due order
    assert {a["elapsed_seconds"] for a in stalls} == {(2 * DAY - 600_000 - i) / 1000 for i in range(30)}
