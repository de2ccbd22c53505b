"""End to end through the real broker and Redis: what a producer sends is what a lookup shows."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.integration.conftest import REDIS_MODES, WorkerProcess


@pytest.fixture(scope="module", params=REDIS_MODES)
def worker(request, worker_factory) -> WorkerProcess:
    """The same tests on a single Redis and on the Redis Cluster."""
    w = worker_factory(redis=request.param)
    w.start()
    return w

HOUR = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def ev(eid: str, cid: str, tp: str, ts: int, **extra: object) -> dict[str, object]:
    return {"event_id": eid, "customer_id": cid, "touchpoint": tp, "timestamp": ts, **extra}


def test_a_journey_published_to_kafka_is_the_state_served_from_redis(worker: WorkerProcess):
    t0 = now_ms() - 48 * HOUR
    worker.send(
        ev("a1", "alice", "ad_click", t0, channel="social"),
        ev("a2", "alice", "site_visit", t0 + HOUR),
        ev("a3", "alice", "signup", t0 + 2 * HOUR),
        ev("a4", "alice", "purchase", t0 + 3 * HOUR, value=49.5, currency="EUR"),
    )
    body = worker.wait_customer("alice", lambda c: c["events"] == 4)
    assert body["stage"] == "purchase"
    assert body["touchpoints"] == {"ad_click": 1, "site_visit": 1, "signup": 1, "purchase": 1}
    assert body["first_seen"].endswith("Z") and body["last_seen"] > body["first_seen"]
    assert [p["touchpoint"] for p in body["path"]] == ["ad_click", "site_visit", "signup", "purchase"]
    assert body["channel"] == "social"


def test_an_unknown_customer_is_404(worker: WorkerProcess):
    status, body = worker.get("/customers/nobody-here")
    assert status == 404 and "nobody-here" in body["error"]


def test_duplicates_do_not_double_count(worker: WorkerProcess):
    t0 = now_ms() - HOUR
    first = ev("b1", "bob", "site_visit", t0)
    second = ev("b2", "bob", "product_view", t0 + 1000)
    worker.send(first, second, first, first)
    worker.send(second, first)  # and again, in a later batch
    worker.send(ev("b3", "bob", "add_to_cart", t0 + 2000))
    body = worker.wait_customer("bob", lambda c: "add_to_cart" in c["touchpoints"])
    assert body["events"] == 3
    assert body["touchpoints"] == {"site_visit": 1, "product_view": 1, "add_to_cart": 1}


def test_out_of_order_events_leave_correct_state(worker: WorkerProcess):
    t0 = now_ms() - 10 * HOUR
    worker.send(ev("c3", "carol", "review", t0 + 5 * HOUR))
    worker.wait_customer("carol", lambda c: c["events"] == 1)
    worker.send(ev("c1", "carol", "site_visit", t0), ev("c2", "carol", "purchase", t0 + HOUR, value=12.0))
    body = worker.wait_customer("carol", lambda c: c["events"] == 3)
    assert body["stage"] == "advocacy"  # never moves back to an earlier stage
    assert body["last_seen"] == body["touchpoint_last_seen"]["review"]  # never moves back in time
    assert body["first_seen"] == body["touchpoint_last_seen"]["site_visit"]
    assert [p["touchpoint"] for p in body["path"]] == ["site_visit", "purchase", "review"]


def test_malformed_events_go_to_the_dlq_with_a_reason_and_the_worker_keeps_going(worker: WorkerProcess):
    t = now_ms()
    bad = [
        (b"\xff\xfe\x00 not utf-8", "undecodable"),
        (b"{\"event_id\": ", "undecodable"),
        (b"[1,2,3]", "not_an_object"),
        (orjson.dumps({"customer_id": "dan", "touchpoint": "signup", "timestamp": t}), "missing_field"),
        (orjson.dumps(ev("d1", "dan", "teleport", t)), "unknown_touchpoint"),
        (orjson.dumps(ev("d2", "dan", "purchase", t, value=-5)), "negative_value"),
        (orjson.dumps(ev("d3", "dan", "signup", t + 30 * 86_400_000)), "timestamp_in_future"),
        (orjson.dumps(ev("d4", "dan", "signup", "last tuesday")), "invalid_timestamp"),
        (orjson.dumps(ev("d5", "dan", "signup", t, properties={"blob": "x" * 20_000})), "payload_too_large"),
    ]
    for value, _ in bad:
        worker.send(value, key=b"dan")
    worker.send(ev("d6", "dan", "signup", t))  # a good one after all the bad ones

    letters = worker.dead_letters()
    assert [dict(m.headers)["journey.error.reason"].decode() for m in letters] == [r for _, r in bad]
    assert [m.value for m in letters] == [v for v, _ in bad]  # original bytes, untouched
    offsets = [int(dict(m.headers)["journey.source.offset"]) for m in letters]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert all(dict(m.headers)["journey.source.topic"] == worker.settings.touchpoints_topic.encode() for m in letters)

    body = worker.customer("dan")
    assert body is not None and body["touchpoints"] == {"signup": 1}
    assert worker.alive()
    stats = worker.get("/worker/stats")[1]
    reasons = stats["dead_letters_by_reason"]
    assert reasons["undecodable"] == 2 and reasons["payload_too_large"] == 1 and stats["dead_letters"] == len(bad)


def test_funnel_counts_each_customer_once_in_their_current_stage(worker: WorkerProcess):
    t0 = now_ms() - HOUR
    worker.send(
        ev("f1", "fay", "site_visit", t0),
        ev("f2", "fay", "signup", t0 + 1),
        ev("f3", "fay", "upgrade", t0 + 2, value=5.0),
    )
    worker.wait_drained()
    _, funnel = worker.get("/journey/funnel")
    counts = {s["stage"]: s["customers"] for s in funnel["stages"]}
    # each customer of this module once, in their furthest stage: alice bought, bob carted, carol
    # reviewed, dan signed up, fay upgraded
    assert counts == {"awareness": 0, "consideration": 1, "purchase": 2, "retention": 1, "advocacy": 1}


def test_ops_endpoints_metrics_readiness_and_openapi(worker: WorkerProcess):
    import urllib.request

    with urllib.request.urlopen(worker.base_url + "/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/plain")
    worker.wait_drained()
    stats = worker.get("/worker/stats")[1]
    for name in ("journey_events_consumed_total", "journey_events_applied_total", "journey_events_duplicate_total",
                 "journey_dead_letters_total", "journey_batch_size_bucket", "journey_processing_latency_seconds_bucket",
                 "journey_consumer_lag", "journey_watermark_seconds", "journey_pending_deadlines",
                 "journey_redis_errors_total"):
        assert name in text, name
    consumed = next(line for line in text.splitlines() if line.startswith("journey_events_consumed_total "))
    # records, not batches: every record this module published (the DLQ test's 10, the others' 13)
    assert float(consumed.split()[1]) == stats["consumed"] == sum(worker.end_offsets().values())
    assert 'journey_processing_latency_seconds_bucket{clock="append_time"' in text
    assert 'journey_dead_letters_total{reason="undecodable"}' in text
    status, ready = worker.get("/readyz")
    assert status == 200 and ready["ready"] is True and ready["assigned_partitions"] == [0, 1]
    status, spec = worker.get("/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.") and "/customers/{customer_id}" in spec["paths"]
