"""A worker killed with SIGKILL mid-stream and restarted: Kafka redelivers, state stays exact."""

from __future__ import annotations

import random
import time

import orjson
import pytest
import redis

from tests.integration.conftest import WorkerProcess, wait_for

CUSTOMERS = 400
EVENTS = 30_000
TOUCHPOINTS = ["site_visit", "product_view", "add_to_cart", "purchase", "review"]


@pytest.fixture(scope="module")
def slow_committer(worker_factory) -> WorkerProcess:
    # A long commit interval guarantees the kill lands between Redis writes and the offset commit.
    return worker_factory(JOURNEY_COMMIT_INTERVAL="120s")


def test_kill_minus_nine_and_restart_leaves_every_count_exact(slow_committer: WorkerProcess):
    w = slow_committer
    rng = random.Random(7)
    t0 = int(time.time() * 1000) - 86_400_000
    expected: dict[str, int] = {}
    for i in range(EVENTS):
        cid = f"k{rng.randrange(CUSTOMERS):04d}"
        expected[cid] = expected.get(cid, 0) + 1
        event = {"event_id": f"r{i}", "customer_id": cid, "touchpoint": rng.choice(TOUCHPOINTS), "timestamp": t0 + i,
                 "value": 10.0}
        w.producer.send(w.settings.touchpoints_topic, key=cid.encode(), value=orjson.dumps(event))
    w.producer.flush()

    w.start()
    consumed_at_kill = wait_for(
        lambda: (s := w.get("/worker/stats")[1]) and s["consumed"] >= 2000 and s["consumed"], 60, "progress"
    )
    assert w.stop(kill=True) == -9

    w.start()
    r = redis.Redis.from_url(w.settings.redis_url)

    def counts() -> dict[str, int]:
        pipe = r.pipeline(transaction=False)
        for cid in expected:
            pipe.hget(f"{w.settings.redis_prefix}:{{{cid}}}:journey", "events")
        return {cid: int(v or 0) for cid, v in zip(expected, pipe.execute(), strict=True)}

    wait_for(lambda: sum(counts().values()) >= EVENTS, 120, "all events to be applied after the restart")
    time.sleep(1.0)  # anything still arriving would be a double count
    assert counts() == expected
    funnel = {k.decode(): int(v) for k, v in r.hgetall(f"{w.settings.redis_prefix}:funnel").items()}
    assert sum(funnel.values()) == len(expected)

    stats = w.get("/worker/stats")[1]
    # The restarted worker really was handed events it had already applied, and absorbed them.
    assert stats["duplicates"] >= min(consumed_at_kill, 2000), stats
    assert stats["applied"] + stats["duplicates"] == stats["consumed"] and stats["dead_letters"] == 0
