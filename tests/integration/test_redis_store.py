"""The Redis store against the in-memory store, on the real Redis and the real Redis Cluster: the
same records through the same handler leave the same state, aggregates, outbox and examples.

The rules live in ``models/`` only; what differs between the stores is storage mechanics (the
codec, the commit script, the key layout), which is what this checks, on random input.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from models.partition import Rules
from streams.journey_file import load_journey_map
from streams.service.handler import CONTROL_HEADER, BatchHandler, Limits, erase_request
from streams.service.ports import Fenced, SourceRecord
from streams.settings import DEFAULT_MAP, Settings
from streams.state.connect import connect
from streams.state.keys import Keys
from streams.state.memory_store import MemoryStore
from streams.state.redis_store import RedisStore
from tests.integration.conftest import REDIS_MODES, redis_url_of
from tests.unit.support import ListDeadLetters

JOURNEY = load_journey_map(DEFAULT_MAP)
DAY = 86_400_000
T0 = 1_790_000_000_000
CUSTOMERS = ("ann", "ben", "cy", "dot", "eve", "fox")
RULES = Rules(JOURNEY, allowed_lateness_ms=3_600_000, late_grace_ms=600_000,
              channels=("email", "search"))


def scorer(x):  # a fixed, deterministic model: the score is a function of the features
    return min(1.0, 0.1 + 0.05 * x["events"]), x["events"] > 8, 600


events = st.builds(
    lambda eid, cid, tp, ts, ch, value: {
        "event_id": eid, "customer_id": cid, "touchpoint": tp, "timestamp": ts,
        **({"channel": ch} if ch else {}), **({"value": value} if value is not None else {}),
    },
    st.text("0123456789abcdef", min_size=1, max_size=3), st.sampled_from(CUSTOMERS),
    st.sampled_from(sorted(JOURNEY.touchpoints)), st.integers(T0, T0 + 40 * DAY),
    st.one_of(st.none(), st.sampled_from(["email", "search", "ann@example.com"])),
    st.one_of(st.none(), st.integers(0, 50_000).map(lambda c: c / 100)),
)
erasures = st.builds(lambda cid, t: ("erase", cid, t), st.sampled_from(CUSTOMERS), st.integers(T0, T0 + 40 * DAY))
# mostly events, now and then an erasure or a broken record
records = st.lists(st.one_of(events, events, events, events, events, erasures, st.just(b"{broken")),
                   min_size=1, max_size=60)


def to_records(items: list, partition: int) -> list[SourceRecord]:
    out = []
    for offset, item in enumerate(items):
        if isinstance(item, tuple):
            out.append(SourceRecord(item[1].encode(), erase_request(item[1], item[2]), "t", partition, offset,
                                    headers={CONTROL_HEADER: b"erase"}))
        elif isinstance(item, bytes):
            out.append(SourceRecord(b"x", item, "t", partition, offset))
        else:
            out.append(SourceRecord(item["customer_id"].encode(), orjson.dumps(item), "t", partition, offset))
    return out


async def run(store, items: list, cuts: list[int]) -> dict:
    dlq = ListDeadLetters()
    handler = BatchHandler(store, dlq, RULES, Limits(max_future_ms=1 << 50), scorer=lambda: scorer, due_limit=3)
    await handler.assign(0)
    recs = to_records(items, 0)
    edges = [0, *sorted({c for c in cuts if 0 < c < len(recs)}), len(recs)]
    for lo, hi in zip(edges, edges[1:], strict=False):
        await handler.handle(recs[lo:hi], T0 + 100 * DAY)
    claim = handler.claims[0]
    outbox = await store.outbox(0, 1 << 20)
    return {
        "customers": {c: await store.customer(c) for c in CUSTOMERS},
        "aggregates": {k: v for k, v in (await store.aggregates()).items() if v},
        "gaps": await store.gap_counts(T0 // DAY - 1, T0 // DAY + 100),
        "orders": sorted(await store.order_summaries(), key=repr),
        "outbox": outbox,
        "dead": [(d.record.offset, d.reason) for d in dlq.sent],
        "clock": (claim.clock, claim.offset),
    }


async def redis_store(url: str) -> tuple[RedisStore, object]:
    redis = connect(url)
    store = RedisStore(redis, Keys(f"jt:test:{uuid.uuid4().hex[:8]}"), pseudonym_key=b"k")
    await store.set_partitions(1)
    return store, redis


async def cleanup(store: RedisStore, redis) -> None:
    for pattern in store.keys.patterns():
        async for key in redis.scan_iter(match=pattern, count=1000):
            await redis.delete(key)
    await redis.aclose()


@pytest.mark.parametrize("mode", REDIS_MODES)
@seed(20261129)  # reproducible: a failure replays with the same examples
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=records, cuts=st.lists(st.integers(0, 60), max_size=4))
def test_the_redis_store_commits_exactly_what_the_memory_store_does(stack: Settings, mode: str, items, cuts):
    async def both() -> None:
        store, redis = await redis_store(redis_url_of(stack, mode))
        try:
            expected = await run(MemoryStore(), items, [])
            assert await run(store, items, cuts) == expected
        finally:
            await cleanup(store, redis)

    asyncio.run(both())


@pytest.mark.parametrize("mode", REDIS_MODES)
async def test_a_worker_that_lost_its_partition_cannot_commit(stack: Settings, mode: str):
    store, redis = await redis_store(redis_url_of(stack, mode))
    try:
        zombie = BatchHandler(store, ListDeadLetters(), RULES, Limits(max_future_ms=1 << 50))
        newcomer = BatchHandler(store, ListDeadLetters(), RULES, Limits(max_future_ms=1 << 50))
        await zombie.assign(0)
        await newcomer.assign(0)  # the rebalance the zombie did not notice
        event = {"event_id": "e1", "customer_id": "ann", "touchpoint": "signup", "timestamp": T0}
        record = to_records([event], 0)[0]
        with pytest.raises(Fenced):
            await zombie.handle([record], T0)
        assert await store.customer("ann") is None
        assert (await newcomer.handle([record], T0)).applied == 1
        # and a redelivery of what the newcomer applied is a no-op, by offset
        again = await newcomer.handle([record], T0)
        assert (again.applied, again.duplicates) == (0, 1)
    finally:
        await cleanup(store, redis)


async def test_every_key_of_a_partition_is_in_one_cluster_slot(stack: Settings):
    from redis.crc import key_slot

    keys = Keys("jt:v2")
    slots = {key_slot(k.encode()) for k in (keys.meta(3), keys.customer(3, "ann"), keys.due(3), keys.outbox(3),
                                            keys.agg(3), keys.gaps(3, 20_000), keys.orders(3), keys.examples(3),
                                            keys.erased(3))}
    assert len(slots) == 1
