"""What one event costs in the Redis store, by kind: a plain touch against a purchase (value,
rolling windows, attribution). Batches of 500 through `RedisJourneyStore.apply`, one process.

    .venv/bin/python scripts/bench_store.py --events 50000

Requires `journey stack up`. Reports events/s, and worker and Redis CPU per event.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.journey_store import Arrival, RedisJourneyStore  # noqa: E402

from models.events import TouchpointEvent  # noqa: E402
from streams.journey_file import load_journey_map  # noqa: E402
from streams.settings import DEFAULT_MAP, Settings  # noqa: E402

T0 = 1_790_000_000_000


async def run(kind: str, n: int, customers: int) -> None:
    settings = Settings()
    redis = Redis.from_url(settings.redis_url)
    prefix = f"jt:bench:{uuid.uuid4().hex[:6]}"
    store = RedisJourneyStore(redis, load_journey_map(DEFAULT_MAP), prefix=prefix, dedupe_window_ms=30 * 86_400_000,
                              path_length=20)
    # every customer first gets a few touches, so purchases have something to attribute to
    warm = [Arrival(TouchpointEvent(f"w{c}-{k}", f"c{c}", tp, T0 + k * 60_000, "email"), 0, 0)
            for c in range(customers) for k, tp in enumerate(("ad_click", "site_visit", "product_view"))]
    for i in range(0, len(warm), 500):
        await store.apply(warm[i:i + 500], {0: 0})
    tp = "purchase" if kind == "purchase" else "product_view"
    events = [Arrival(TouchpointEvent(f"e{i}", f"c{i % customers}", tp, T0 + 3_600_000 + i, "email",
                                      42.0 if kind == "purchase" else None), 0, 0) for i in range(n)]
    info = await redis.info("cpu")
    redis_cpu = info["used_cpu_user"] + info["used_cpu_sys"]
    me = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    for i in range(0, n, 500):
        await store.apply(events[i:i + 500], {0: 0})
    wall = time.perf_counter() - t
    me2 = resource.getrusage(resource.RUSAGE_SELF)
    info = await redis.info("cpu")
    redis_cpu = info["used_cpu_user"] + info["used_cpu_sys"] - redis_cpu
    worker_cpu = (me2.ru_utime + me2.ru_stime) - (me.ru_utime + me.ru_stime)
    print(f"{kind:<10} {n / wall:>10,.0f} ev/s   worker {1e6 * worker_cpu / n:6.1f} µs/event   "
          f"redis {1e6 * redis_cpu / n:6.1f} µs/event")
    async for key in redis.scan_iter(match=f"{prefix}:*", count=10_000):
        await redis.unlink(key)
    await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=5_000)
    a = parser.parse_args()
    for kind in ("touch", "purchase"):
        asyncio.run(run(kind, a.events, a.customers))
