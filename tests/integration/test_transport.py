"""Batch delivery inside Faust, and what a rebalance does to the partitions' state.

The transport (`streams/kafka/transport.py`) relies on private Faust APIs; these tests fail loudly
if Faust changes underneath them:

- a second worker joins mid-stream: partitions move (a rebalance), every record is applied once
  in effect, none is skipped, and a partition that moved resumes from the offset and the
  watermark its first owner committed;
- the worker that lost a partition cannot commit for it any more (fenced; its stale batches are
  dropped), and the per-message topic (erasures) keeps working next to the batch topic;
- the worker's counters count records, not batches.

(`kill -9` mid-batch and restart: `tests/integration/test_redelivery.py`.)
"""

from __future__ import annotations

import random
import time

import orjson
import pytest

from models.durations import iso
from tests.integration.conftest import WorkerProcess, wait_for

CUSTOMERS = 300
EVENTS = 24_000
TOUCHPOINTS = ["site_visit", "product_view", "add_to_cart", "purchase", "review"]


@pytest.fixture(scope="module")
def pair(worker_factory) -> tuple[WorkerProcess, WorkerProcess]:
    # Four partitions, so that both workers own some after the rebalance; the same topics and group.
    first = worker_factory(JOURNEY_TOPIC_PARTITIONS="4", JOURNEY_BATCH_SIZE="100", JOURNEY_IDLE_TIMEOUT="1h")
    second = worker_factory(
        JOURNEY_TOPIC_PARTITIONS="4", JOURNEY_BATCH_SIZE="100", JOURNEY_IDLE_TIMEOUT="1h",
        **{k: first.env[k] for k in ("JOURNEY_APP_ID", "JOURNEY_TOUCHPOINTS_TOPIC", "JOURNEY_DLQ_TOPIC",
                                      "JOURNEY_ALERTS_TOPIC", "JOURNEY_ERASURE_TOPIC", "JOURNEY_SPEND_TOPIC",
                                      "JOURNEY_REDIS_PREFIX")},
    )
    return first, second


def test_a_rebalance_mid_stream_skips_nothing_and_applies_nothing_twice(pair):
    first, second = pair
    rng = random.Random(3)
    t0 = int(time.time() * 1000) - 2 * 86_400_000
    expected: dict[str, int] = {}
    published = 0

    def publish(n: int) -> None:
        nonlocal published
        for _ in range(n):
            cid = f"r{rng.randrange(CUSTOMERS):04d}"
            expected[cid] = expected.get(cid, 0) + 1
            event = {"event_id": f"e{published}", "customer_id": cid, "touchpoint": rng.choice(TOUCHPOINTS),
                     "timestamp": t0 + published * 1000, "value": 5.0}
            first.producer.send(first.settings.touchpoints_topic, key=cid.encode(), value=orjson.dumps(event))
            published += 1
        first.producer.flush()

    publish(EVENTS // 2)
    first.start()
    wait_for(lambda: (s := first.get("/worker/stats")[1]) and s["consumed"] >= 4000 and s, 60, "progress")
    second.start(ready=False)  # joins the group: the partitions are shared out again, mid-stream
    # Keep the stream flowing until both workers own partitions, then as much again.
    while not (second.get("/readyz")[0] == 200 and first.get("/readyz")[0] == 200):
        publish(200)
        if published > 40 * EVENTS:
            pytest.fail("the second worker never got partitions")
    publish(EVENTS // 2)
    owned = [first.get("/readyz")[1]["assigned_partitions"], second.get("/readyz")[1]["assigned_partitions"]]
    assert sorted(owned[0] + owned[1]) == [0, 1, 2, 3] and owned[0] and owned[1]
    first.wait_drained()

    # every customer's events counted exactly once, whichever worker applied them
    assert {cid: (first.customer(cid) or {}).get("events", 0) for cid in expected} == expected
    a, b = first.get("/worker/stats")[1], second.get("/worker/stats")[1]
    assert a["applied"] + b["applied"] == published  # nothing applied twice in effect, nothing skipped
    for s in (a, b):  # records, not batches: each consumed record is accounted for
        assert s["applied"] + s["duplicates"] + s["dead_letters"] == s["consumed"]
        assert s["batches"] < s["consumed"]
    # Each partition the second worker took over resumed from what the first committed: its watermark
    # (kept with the partition's state) is the highest event time applied there, less the lateness.
    r, keys = first.redis, first.keys
    lateness = int(first.settings.allowed_lateness * 1000)
    served = second.get("/worker/stats")[1]["watermarks"]
    for p in owned[1]:
        high, wm = (int(v) for v in r.hmget(keys.meta(p), "high", "wm"))
        assert wm == high - lateness
        assert served[str(p)] == iso(wm)  # the new owner carries on from the committed watermark
    # ... and the first worker forgot the clocks of the partitions it lost
    assert set(first.get("/worker/stats")[1]["watermarks"]) == {str(p) for p in owned[0]}
    # The epochs moved on: the first worker's claims on the partitions it lost are fenced.
    assert all(int(r.hget(keys.meta(p), "epoch")) >= 2 for p in owned[1])


def test_the_per_message_topic_keeps_working_beside_the_batch_topic(pair):
    first, second = pair
    victim = "r0007"
    assert first.customer(victim) is not None
    first.producer.send(first.settings.erasure_topic, key=victim.encode(),
                        value=orjson.dumps({"customer_id": victim, "requested_by": "test"}))
    first.producer.flush()
    wait_for(lambda: first.customer(victim) is None and second.customer(victim) is None, 30,
             f"{victim} to be erased by whichever worker owns them")
