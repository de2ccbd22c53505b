"""Identity stitching through the real batch handler, two partitions of the in-memory store:
the visitor's (anonymous ids ``d…`` live in partition 0) and the customer's (``c…``, partition 1).
Identity messages are routed between them as the outbox publisher routes them through Kafka.
Every expected figure is counted by hand from the events of the scenario."""

from __future__ import annotations

from typing import Any

import orjson

from models.partition import IDENTITY, Rules
from streams.journey_file import load_journey_map
from streams.kafka.sinks import control_headers
from streams.service.handler import CONTROL_HEADER, BatchHandler, Limits, erase_request
from streams.service.ports import OutboxMessage, SourceRecord
from streams.settings import DEFAULT_MAP
from streams.state.memory_store import MemoryStore
from tests.unit.support import ListDeadLetters

JOURNEY = load_journey_map(DEFAULT_MAP)
DAY = 86_400_000
T0 = 1_790_000_000_000


def ev(eid: str, tp: str, ts: int, *, cid: str | None = None, anon: str | None = None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {"event_id": eid, "touchpoint": tp, "timestamp": ts, **extra}
    if cid:
        doc["customer_id"] = cid
    if anon:
        doc["anonymous_id"] = anon
    return orjson.dumps(doc)


class TwoPartitions:
    def __init__(self, **rules: Any) -> None:
        self.store = MemoryStore(partitions=2)
        self.dlq = ListDeadLetters()
        self.handler = BatchHandler(self.store, self.dlq, Rules(JOURNEY, **rules), Limits(max_future_ms=1 << 50))
        self.offsets = [0, 0]
        self.alerts: list[dict[str, Any]] = []
        self.in_flight: list[OutboxMessage] = []  # identity messages published, not yet consumed

    @staticmethod
    def partition_of(key: str) -> int:
        return 0 if key.startswith("d") else 1

    async def send(self, p: int, value: bytes, headers: dict[str, bytes] | None = None) -> Any:
        r = SourceRecord(b"k", value, "touchpoints", p, self.offsets[p], headers=headers or {})
        self.offsets[p] += 1
        result = await self.handler.handle([r], 1 << 50)
        await self.publish()
        return result

    async def publish(self) -> None:
        for p in (0, 1):
            out = await self.store.outbox(p, 1 << 20)
            await self.store.ack_outbox(p, len(out))
            self.alerts += [orjson.loads(m.body) for m in out if m.type != IDENTITY and m.body]
            self.in_flight += [m for m in out if m.type == IDENTITY]

    async def deliver(self, *, copies: int = 1) -> int:
        """Consume the identity messages now in flight (one hop), each ``copies`` times (a republished
        outbox); what they send in turn stays in flight."""
        hop, self.in_flight = self.in_flight, []
        for m in hop:
            for _ in range(copies):
                await self.send(self.partition_of(m.key), m.body or b"", dict(control_headers(m.status)))
        return len(hop)

    async def funnel(self) -> dict[str, int]:
        return {k: v for k, v in (await self.store.aggregates()).items() if k[:2] in ("f|", "a|") and v}


async def test_the_visitors_history_joins_the_customer_once_and_the_funnel_counts_them_once():
    t = TwoPartitions()
    await t.send(0, ev("e1", "ad_click", T0, anon="d1", channel="search"))
    await t.send(0, ev("e2", "site_visit", T0 + 60_000, anon="d1", channel="direct"))
    await t.send(0, ev("e3", "product_view", T0 + 120_000, anon="d1"))
    visitor = await t.store.customer("{a}d1")
    assert visitor is not None and visitor.events == 3
    assert await t.funnel() == {"a|consideration": 1}  # an anonymous visitor, counted apart

    await t.send(1, ev("e4", "signup", T0 + 300_000, cid="c1", anon="d1"))
    assert await t.funnel() == {"a|consideration": 1, "f|consideration": 1}  # until the merge arrives
    assert await t.deliver(copies=2) == 1  # the link (twice: the second copy must change nothing)
    # the merge with the history, and the answer to the link's second copy (no history); each twice
    assert await t.deliver(copies=2) == 2
    assert t.in_flight == []

    c1 = await t.store.customer("c1")
    assert c1 is not None
    assert (c1.events, c1.first_seen_ms, c1.channel) == (4, T0, "search")  # the first touch: the ad click
    assert c1.touchpoints == {"ad_click": 1, "site_visit": 1, "product_view": 1, "signup": 1}
    assert [tp for _, tp, _ in c1.path] == ["ad_click", "site_visit", "product_view", "signup"]
    assert c1.anonymous_ids == {"d1": True}
    marker = await t.store.customer("{a}d1")
    assert marker is not None and marker.merged_into == "c1" and marker.events == 0
    assert await t.funnel() == {"f|consideration": 1}  # one person, once

    # A late event from the old device: forwarded to c1, applied once however often it is redelivered.
    await t.send(0, ev("e5", "product_view", T0 + 200_000, anon="d1"))
    await t.deliver(copies=3)
    c1 = await t.store.customer("c1")
    assert c1 is not None and c1.events == 5 and c1.touchpoints["product_view"] == 2
    # A pre-signup event seen again (a producer retry) after the merge: a duplicate at c1.
    await t.send(0, ev("e2", "site_visit", T0 + 60_000, anon="d1"))
    await t.deliver()
    assert (await t.store.customer("c1")).events == 5  # type: ignore[union-attr]
    assert t.dlq.sent == []


async def test_events_before_the_link_and_a_second_device_both_merge():
    t = TwoPartitions()
    await t.send(0, ev("e1", "ad_click", T0, anon="d1", channel="social"))
    await t.send(1, ev("e2", "signup", T0 + 10_000, cid="c1", anon="d1"))
    await t.send(0, ev("e3", "site_visit", T0 + 5_000, anon="d2", channel="email"))  # the phone
    await t.deliver()
    await t.deliver()
    await t.send(1, ev("e4", "site_visit", T0 + 20_000,
                       cid="c1", anon="d2"))
    await t.deliver()
    await t.deliver()
    c1 = await t.store.customer("c1")
    assert c1 is not None and c1.events == 4 and c1.anonymous_ids == {"d1": True, "d2": True}
    assert c1.channel == "social" and c1.first_seen_ms == T0
    assert await t.funnel() == {"f|consideration": 1}


async def test_a_shared_device_follows_the_latest_login_and_history_stays_with_the_first():
    t = TwoPartitions()
    await t.send(0, ev("e1", "site_visit", T0, anon="d1"))
    await t.send(1, ev("e2", "signup", T0 + 10_000, cid="c1", anon="d1"))
    await t.deliver()
    await t.deliver()
    await t.send(1, ev("e3", "signup", T0 + 50_000, cid="c2", anon="d1"))
    await t.deliver()
    await t.deliver()
    assert (await t.store.customer("{a}d1")).merged_into == "c2"  # type: ignore[union-attr]
    await t.send(0, ev("e4", "product_view", T0 + 60_000, anon="d1"))
    await t.deliver()
    c1, c2 = await t.store.customer("c1"), await t.store.customer("c2")
    assert c1 is not None and c2 is not None
    assert (c1.events, c2.events) == (2, 2)  # c1: visit + signup; c2: signup + the later product view
    assert c2.touchpoints == {"signup": 1, "product_view": 1}
    assert c1.anonymous_ids == c2.anonymous_ids == {"d1": True}  # both links settled, the history went to c1


async def test_the_cap_refuses_links_beyond_it():
    t = TwoPartitions(max_anonymous_ids=2)
    for i, anon in enumerate(["d1", "d2", "d3"]):
        await t.send(1, ev(f"s{i}", "site_visit", T0 + i, cid="c1", anon=anon))
    assert [m.key for m in t.in_flight] == ["d1", "d2"]
    assert (await t.store.aggregates()).get("identity_links_refused") == 1


async def test_erasure_removes_the_links_and_the_merged_history():
    t = TwoPartitions()
    await t.send(0, ev("e1", "ad_click", T0, anon="d1", channel="search"))
    await t.send(1, ev("e2", "signup", T0 + 10_000, cid="c1", anon="d1"))
    await t.deliver()
    await t.deliver()
    await t.send(1, erase_request("c1", T0 + 20_000), {CONTROL_HEADER: b"erase"})
    await t.deliver()  # the erasure of the anonymous id, in the visitor's partition
    assert await t.store.customer("c1") is None and await t.store.customer("{a}d1") is None
    # An old event of the device cannot bring the visitor (or the link) back.
    await t.send(0, ev("e3", "site_visit", T0 + 15_000, anon="d1"))
    assert await t.store.customer("{a}d1") is None
    assert [d.reason.value for d in t.dlq.sent] == ["erased_customer"]
    assert await t.funnel() == {}


async def test_a_visitor_who_never_signs_up_is_alerted_on_by_anonymous_id_then_forgotten_after_the_ttl():
    t = TwoPartitions(anonymous_ttl_ms=3 * DAY, allowed_lateness_ms=0)
    await t.send(0, ev("e1", "ad_click", T0, anon="d1"))
    await t.send(0, ev("e2", "site_visit", T0 + 2 * DAY + 1, anon="d9"))  # past d1's 2 days of awareness silence
    drop = [a for a in t.alerts if a["type"] == "drop_off"]
    assert [(a["customer_id"], a["anonymous_id"], a["status"]) for a in drop] == [(None, "d1", "open")]
    assert "anonymous visitor d1" in drop[0]["reason"] and "{a}" not in drop[0]["reason"]
    assert await t.store.customer("{a}d1") is not None
    await t.send(0, ev("e3", "site_visit", T0 + 3 * DAY, anon="d9"))  # d1's TTL: 3 days after last seen
    assert await t.store.customer("{a}d1") is None
    assert await t.funnel() == {"a|awareness": 1}  # d9 only


async def test_late_anonymous_history_past_the_ttl_comes_out_the_same_whatever_the_batches():
    # d1's events arrive after the watermark has passed their TTL: in a live stream d1 would have
    # been tracked and forgotten long ago. Whether the records come one by one or in one batch, the
    # outcome is the same: nothing of d1 is kept, and each such event counts one visitor forgotten.
    values = [ev("e1", "site_visit", T0 + 40 * DAY, anon="d9"),
              ev("e2", "ad_click", T0, anon="d1"), ev("e3", "site_visit", T0 + 1, anon="d1"),
              ev("e4", "site_visit", T0 + 40 * DAY + 1, anon="d9")]
    outcomes = []
    for size in (1, len(values)):
        store = MemoryStore()
        handler = BatchHandler(store, ListDeadLetters(), Rules(JOURNEY, anonymous_ttl_ms=30 * DAY),
                               Limits(max_future_ms=1 << 50))
        records = [SourceRecord(b"k", v, "touchpoints", 0, i) for i, v in enumerate(values)]
        for i in range(0, len(records), size):
            await handler.handle(records[i : i + size], 1 << 50)
        agg = {k: v for k, v in (await store.aggregates()).items() if v}
        outcomes.append((agg, await store.customer("{a}d1"), (await store.customer("{a}d9")).events))  # type: ignore[union-attr]
    assert outcomes[0] == outcomes[1]
    agg, d1, d9_events = outcomes[0]
    assert d1 is None and d9_events == 2
    assert agg["anonymous_forgotten"] == 2 and agg["a|awareness"] == 1


async def test_a_republished_link_for_a_marker_past_its_ttl_changes_no_figure():
    # After a crash an outbox is published again: a copy of a link whose marker has aged out makes
    # the marker again and forgets it at once. States and aggregates must be as after one copy.
    t = TwoPartitions(anonymous_ttl_ms=3 * DAY, allowed_lateness_ms=0)
    await t.send(0, ev("e1", "site_visit", T0, anon="d1"))
    await t.send(1, ev("e2", "signup", T0 + 1000, cid="c1", anon="d1"))
    await t.send(0, ev("e3", "site_visit", T0 + 10 * DAY, anon="d9"))  # the visitor's partition moves on
    link = t.in_flight[0]
    await t.deliver()  # the link: the visitor aged out already (a backfill), and the marker is past its TTL too
    await t.deliver()  # the merge
    once = (await t.store.aggregates(), await t.store.customer("c1"), await t.store.customer("{a}d1"))
    t.in_flight = [link]
    await t.deliver()  # the republished copy
    await t.deliver()
    assert (await t.store.aggregates(), await t.store.customer("c1"), await t.store.customer("{a}d1")) == once
    assert once[2] is None and once[1] is not None and once[1].events == 1  # nothing left to merge
    assert once[0]["anonymous_forgotten"] == 1  # d1, once; the markers are not counted
