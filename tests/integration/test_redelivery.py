"""A worker killed with SIGKILL mid-stream and restarted: every count stays exact, on a single Redis
and on the Redis Cluster, and nothing is applied twice or skipped."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from tests.integration.conftest import REDIS_MODES, WorkerProcess, wait_for

CUSTOMERS = 400
EVENTS = 30_000
TOUCHPOINTS = ["site_visit", "product_view", "add_to_cart", "purchase", "review"]


@pytest.fixture(scope="module", params=REDIS_MODES)
def slow_committer(request, worker_factory) -> WorkerProcess:
    # A long Kafka commit interval: the kill lands between Redis commits and Kafka's offset commit.
    return worker_factory(redis=request.param, JOURNEY_COMMIT_INTERVAL="120s", JOURNEY_BATCH_SIZE="200")


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
    wait_for(lambda: (s := w.get("/worker/stats")[1]) and s["consumed"] >= 3000 and s, 60, "progress")
    assert w.stop(kill=True) == -9
    w.start()
    w.wait_drained()

    customers = {cid: w.customer(cid) for cid in expected}
    assert {cid: c["events"] if c else 0 for cid, c in customers.items()} == expected
    rng = random.Random(7)
    purchases: dict[str, int] = {}
    for _ in range(EVENTS):  # the same draws as above: who bought how often
        cid, tp = f"k{rng.randrange(CUSTOMERS):04d}", rng.choice(TOUCHPOINTS)
        if tp == "purchase":
            purchases[cid] = purchases.get(cid, 0) + 1
    assert {cid: c["clv"]["revenue"] for cid, c in customers.items() if c and c["clv"]["orders"]} == {
        cid: 10.0 * n for cid, n in purchases.items()}
    funnel = w.get("/journey/funnel")[1]
    assert sum(s["customers"] for s in funnel["stages"]) == len(expected)
    stats = w.get("/worker/stats")[1]
    # The restarted worker resumed where the store says it was: what it consumed it applied, once.
    assert stats["applied"] + stats["duplicates"] + stats["dead_letters"] == stats["consumed"]
    assert stats["dead_letters"] == 0
