"""The Redis Lua store against the reference model, on the real Redis: same state, same outcomes."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from streams.journey_store import Arrival, InMemoryJourneyStore, RedisJourneyStore

from models.events import TouchpointEvent
from models.journey import Outcome
from streams.journey_file import load_journey_map
from streams.settings import DEFAULT_MAP, Settings

JOURNEY = load_journey_map(DEFAULT_MAP)
DAY = 86_400_000
WINDOW = 5 * DAY
T0 = 1_790_000_000_000


def strip(state):
    return dataclasses.replace(state, seen={}) if state else None


events = st.lists(
    st.builds(
        TouchpointEvent,
        event_id=st.text("0123456789abcdef", min_size=1, max_size=3),
        customer_id=st.sampled_from(["ann", "ben", "cy"]),
        touchpoint=st.sampled_from(sorted(JOURNEY.touchpoints)),
        ts_ms=st.integers(T0, T0 + 8 * DAY),  # wider than the window: exercises too_late
        channel=st.one_of(st.none(), st.sampled_from(["email", "search", "social"])),
        value=st.one_of(st.none(), st.integers(0, 50_000).map(lambda c: c / 100)),
    ),
    max_size=40,
)


def arrivals_of(batch: list[TouchpointEvent], wm: dict[int, int], lateness: int) -> list[Arrival]:
    """Each event with its partition's watermark on arrival (what the pipeline computes)."""
    out = []
    for e in batch:
        p = hash(e.customer_id) % 2
        out.append(Arrival(e, p, wm.get(p, -(2**62))))
        wm[p] = max(wm.get(p, -(2**62)), e.ts_ms - lateness)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(events, min_size=1, max_size=4), checks=st.lists(st.integers(0, 9 * DAY), max_size=3))
def test_redis_store_agrees_with_the_reference_model(stack: Settings, batches, checks):
    """State, outcomes, deadlines and every alert opened or resolved: identical, event for event."""

    async def run() -> None:
        redis = Redis.from_url(stack.redis_url)
        prefix = f"jt:test:{uuid.uuid4().hex[:8]}"
        real = RedisJourneyStore(redis, JOURNEY, prefix=prefix, dedupe_window_ms=WINDOW, path_length=6)
        model = InMemoryJourneyStore(JOURNEY, dedupe_window_ms=WINDOW, path_length=6)
        wm: dict[int, int] = {}
        try:
            for batch in batches:
                arrivals = arrivals_of(batch, wm, lateness=3_600_000)
                after = {p: wm[p] for p in {a.partition for a in arrivals}}
                assert await real.apply(arrivals, after) == await model.apply(arrivals, after)
            for offset in checks:  # timer ticks with the watermark somewhere along the way
                for p in (0, 1):
                    assert await real.check_deadlines(p, T0 + offset) == await model.check_deadlines(p, T0 + offset)
            for p in (0, 1):
                # per customer, in order (customers due in the same check may come in any order)
                real_out, model_out = await real.outbox(p), await model.outbox(p)
                for cid in ("ann", "ben", "cy"):
                    mine = [f for f in real_out if f.customer_id == cid]
                    assert mine == [f for f in model_out if f.customer_id == cid]
                assert len(real_out) == len(model_out)
            for cid in ("ann", "ben", "cy"):
                p = hash(cid) % 2
                assert strip(await real.get(cid)) == strip(await model.get(cid))
                expected = await model.get_deadlines(cid, p)
                assert await real.get_deadlines(cid, p) == expected
                # the partition's deadline set holds the earlier due time, so the check finds the customer in time
                due = await redis.zscore(real.deadlines_key(p), cid)
                assert due == min(filter(None, (expected.stall_due, expected.drop_due)), default=None)
            assert await real.funnel() == await model.funnel()
            real_totals = {k: v for k, v in (await real.value_totals()).items() if abs(v) > 1e-9}
            model_totals = {k: v for k, v in (await model.value_totals()).items() if abs(v) > 1e-9}
            assert real_totals.keys() == model_totals.keys()
            for k, v in model_totals.items():
                assert real_totals[k] == pytest.approx(v, rel=1e-9, abs=1e-6), k
        finally:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=10_000)]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()

    asyncio.run(run())


async def test_dedupe_memory_stays_bounded_by_the_window(stack: Settings):
    redis = Redis.from_url(stack.redis_url)
    prefix = f"jt:test:{uuid.uuid4().hex[:8]}"
    store = RedisJourneyStore(redis, JOURNEY, prefix=prefix, dedupe_window_ms=DAY, path_length=3)
    try:
        batch = [Arrival(TouchpointEvent(f"e{i}", "dee", "site_visit", T0 + i * DAY // 4), 0, 0) for i in range(40)]
        assert await store.apply(batch, {0: 0}) == [Outcome.APPLIED] * 40
        remembered = await redis.zcard(store.seen_key("dee"))
        assert remembered == 5  # the last day (inclusive) of event ids, not all 40
        assert await store.apply([batch[0]], {0: 0}) == [Outcome.TOO_LATE]
        state = await store.get("dee")
        assert state is not None and state.events == 40 and len(state.path) == 3
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=10_000)]
        await redis.delete(*keys)
        await redis.aclose()


@pytest.mark.parametrize("customers", [1, 300])
async def test_a_batch_costs_one_script_call_per_partition_not_per_event(stack: Settings, customers: int):
    """Counted on the server: 600 events of N customers in one partition are one EVALSHA call."""
    redis = Redis.from_url(stack.redis_url)
    prefix = f"jt:test:{uuid.uuid4().hex[:8]}"
    store = RedisJourneyStore(redis, JOURNEY, prefix=prefix, dedupe_window_ms=DAY, path_length=3)

    async def evalsha_calls() -> int:
        return int((await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))

    try:
        await store.apply([Arrival(TouchpointEvent("warm", "w", "signup", T0), 0, 0)], {0: 0})  # loads the script
        before = await evalsha_calls()
        batch = [Arrival(TouchpointEvent(f"e{i}", f"c{i % customers}", "signup", T0 + i), 0, 0) for i in range(600)]
        assert await store.apply(batch, {0: 0}) == [Outcome.APPLIED] * 600
        assert await evalsha_calls() - before == 1
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=10_000)]
        await redis.delete(*keys)
        await redis.aclose()
