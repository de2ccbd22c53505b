"""What one deadline check costs with 1 M customers tracked: with none due, and with 1,000 due.

Fills a fresh Redis key prefix with `--customers` customers spread over `--partitions`
partitions (one entry per customer: the earlier of its stall and drop-off due times, in sorted sets scored by due time),
then times `RedisJourneyStore.check_deadlines` — the timer's work per partition.

    .venv/bin/python scripts/bench_deadlines.py --customers 1000000

Requires `journey stack up`. The keys are deleted afterwards. `journey bench` imports
`measure` from here.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streams.journey_store import Arrival, RedisJourneyStore  # noqa: E402

from models.events import TouchpointEvent  # noqa: E402
from streams.journey_file import load_journey_map  # noqa: E402
from streams.settings import DEFAULT_MAP, Settings  # noqa: E402

T0 = 1_790_000_000_000
DAY = 86_400_000


async def measure(
    customers: int,
    partitions: int,
    due: int,
    *,
    redis_url: str | None = None,
    repeat: int = 500,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load the deadlines, time the checks, delete the keys; return the figures (milliseconds)."""
    redis = Redis.from_url(redis_url or Settings().redis_url)
    prefix = f"jt:bench:{uuid.uuid4().hex[:6]}"
    store = RedisJourneyStore(
        redis, load_journey_map(DEFAULT_MAP), prefix=prefix, dedupe_window_ms=30 * DAY, path_length=20
    )
    try:
        before = (await redis.info("memory"))["used_memory"]
        t = time.perf_counter()
        per = customers // partitions
        for p in range(partitions):
            key = store.deadlines_key(p)
            for lo in range(0, per, 20_000):
                members: dict[str, float] = {}
                for i in range(lo, min(per, lo + 20_000)):
                    cid = f"c{p}-{i}"
                    members[cid] = T0 + 30 * DAY + i  # all due in the future (the earlier of two due times)
                await redis.zadd(key, members)  # type: ignore[arg-type]
        loaded = time.perf_counter() - t
        per_customer = ((await redis.info("memory"))["used_memory"] - before) / (per * partitions)
        echo(
            f"loaded {per * partitions:,} deadline entries for {per * partitions:,} customers in "
            f"{loaded:.1f}s; zset memory {per_customer:.0f} B/customer"
        )

        async def timed(fn: Callable[[], Awaitable[Any]], times: int) -> list[float]:
            out = []
            for _ in range(times):
                t = time.perf_counter()
                await fn()
                out.append((time.perf_counter() - t) * 1000)
            return out

        nothing = await timed(lambda: store.check_deadlines(0, T0), repeat)
        all_parts = await timed(
            lambda: asyncio.gather(*(store.check_deadlines(p, T0) for p in range(partitions))), max(1, repeat * 2 // 5)
        )
        echo(
            f"check, nothing due, one partition ({per:,} customers): median {statistics.median(nothing):.3f} ms, "
            f"p99 {statistics.quantiles(nothing, n=100)[98]:.3f} ms"
        )
        echo(
            f"check, nothing due, all {partitions} partitions ({per * partitions:,} customers): "
            f"median {statistics.median(all_parts):.3f} ms"
        )

        # `due` real customers whose stall deadline has passed: the check fires their alerts.
        events = [
            Arrival(TouchpointEvent(f"e{i}", f"due-{i}", "add_to_cart", T0 - DAY), 0, T0 - DAY) for i in range(due)
        ]
        await store.apply(events, {0: T0 - DAY})
        t = time.perf_counter()
        fired = await store.check_deadlines(0, T0, limit=due)
        took = (time.perf_counter() - t) * 1000
        alerts = len(await store.outbox(0, limit=10 * due))
        echo(
            f"check with {fired} due (fires {alerts} alerts into the outbox): "
            f"{took:.1f} ms ({1000 * took / max(fired, 1):.0f} µs per due customer)"
        )
        return {
            "customers": per * partitions,
            "partitions": partitions,
            "deadlines": per * partitions,
            "load_seconds": loaded,
            "zset_bytes_per_customer": per_customer,
            "none_due_one_partition_ms_median": statistics.median(nothing),
            "none_due_one_partition_ms_p99": statistics.quantiles(nothing, n=100)[98],
            "none_due_all_partitions_ms_median": statistics.median(all_parts),
            "due": fired,
            "due_check_ms": took,
            "due_alerts": alerts,
            "due_us_per_customer": 1000 * took / max(fired, 1),
        }
    finally:
        async for key in redis.scan_iter(match=f"{prefix}:*", count=10_000):
            await redis.unlink(key)
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--due", type=int, default=1000)
    a = parser.parse_args()
    asyncio.run(measure(a.customers, a.partitions, a.due))
