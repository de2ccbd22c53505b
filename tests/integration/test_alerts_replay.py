"""Scripted customers replayed through the real Kafka and Redis give exactly the expected alerts:
none for customers who progress in time, one per stall, `resolved` when they move on; nothing new
when every event is delivered twice; and a replay of the same records, at another speed and with
other batch sizes, gives byte-identical alert messages (but for `emitted_at`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest

from tests.integration.conftest import REDIS_MODES, WorkerProcess

MIN = 60_000
FULL_JOURNEY = [
    ("ad_click", 0), ("site_visit", 1), ("signup", 10), ("add_to_cart", 60), ("checkout", 70),
    ("purchase", 72), ("onboarding_complete", 600), ("review", 3000),
]
# Default map: add_to_cart -> checkout is due within TE + 2σ = 66.5 min; the purchase stage
# allows 7 days of silence; `review` ends the critical path and advocacy has no silence limit.
EXPECTED = {
    ("staller", "stalled_critical_path", "open", "add_to_cart"),
    ("staller", "drop_off", "open", "add_to_cart"),
    ("resumer", "stalled_critical_path", "open", "add_to_cart"),
    ("resumer", "stalled_critical_path", "resolved", "add_to_cart"),
}


def script(t0: int) -> list[tuple[int | None, dict[str, object]]]:
    """(partition or None, event) in publish order: by event time, except the late ones,
    which are published when the stream has reached ``sent``; clock events tick every partition."""
    timeline: list[tuple[float, int, int | None, dict[str, object]]] = []

    def ev(cid: str, tp: str, minute: float, sent: float | None = None) -> None:
        event = {"event_id": f"{cid}:{tp}:{minute}", "customer_id": cid, "touchpoint": tp,
                 "timestamp": t0 + int(minute * MIN)}
        if tp in ("purchase", "upgrade"):
            event["value"] = 40.0
        timeline.append((minute if sent is None else sent, len(timeline), None, event))

    def clock(minute: float) -> None:
        for p in (0, 1):
            cid = f"clock-{p}"  # `review` only: no deadline of their own
            event = {"event_id": f"{cid}:{minute}", "customer_id": cid, "touchpoint": "review",
                     "timestamp": t0 + int(minute * MIN)}
            timeline.append((minute, len(timeline), p, event))

    for tp, minute in FULL_JOURNEY:
        ev("ontime", tp, minute)
    for tp, minute in [("ad_click", 0), ("site_visit", 2), ("signup", 5), ("add_to_cart", 30)]:
        ev("staller", tp, minute)
    for tp, minute in [("ad_click", 0), ("site_visit", 1), ("signup", 3), ("add_to_cart", 20)]:
        ev("resumer", tp, minute)
    for tp, minute in [("ad_click", 0), ("site_visit", 1), ("signup", 2), ("add_to_cart", 10)]:
        ev("saver", tp, minute)
    clock(60)  # watermark 55 min: nothing due yet
    for tp, minute in [("checkout", 40), ("purchase", 45)]:
        ev("saver", tp, minute, sent=61)  # late, but before its deadline (76.5 min) passed: cancels it
    for tp, minute in [("onboarding_complete", 100), ("review", 200)]:
        ev("saver", tp, minute)
    clock(200)  # watermark 195: staller (due 96.5) and resumer (due 86.5) stall
    for tp, minute in [("checkout", 300), ("purchase", 302), ("onboarding_complete", 400), ("review", 500)]:
        ev("resumer", tp, minute)  # moves on: resolved
    clock(3000)
    clock(11_000)  # watermark 10995 min: the staller has been silent in `purchase` for more than 7 days
    return [(p, e) for _, _, p, e in sorted(timeline, key=lambda x: (x[0], x[1]))]


def publish(w: WorkerProcess, events: list[tuple[int | None, dict[str, object]]]) -> None:
    for partition, e in events:
        key = str(e["customer_id"]).encode()
        w.producer.send(w.settings.touchpoints_topic, key=key, value=orjson.dumps(e), partition=partition)
    w.producer.flush()


def summary(alerts: list[dict]) -> set[tuple[str, str, str, str]]:
    return {(a["customer_id"], a["type"], a["status"], a["touchpoint"]) for a in alerts}


EVENT_TIME_ONLY = {"JOURNEY_IDLE_TIMEOUT": "1h", "JOURNEY_ALLOWED_LATENESS": "5m"}  # no wall clock in this module
T0 = int(time.time() * 1000) // 60_000 * 60_000 - 10 * 86_400_000


@pytest.fixture(scope="module", params=REDIS_MODES)
def replay(request, worker_factory: Callable[..., WorkerProcess]):
    w = worker_factory(redis=request.param, **EVENT_TIME_ONLY)
    w.start()
    events = script(T0)
    publish(w, events)
    return w, events


def test_exactly_the_expected_alerts_and_none_for_customers_on_time(replay):
    w, _ = replay
    alerts = w.alerts()
    assert summary(alerts) == EXPECTED
    assert len(alerts) == len(EXPECTED)  # one per stall, one resolved: no repeats

    by_key = {(a["customer_id"], a["type"], a["status"]): a for a in alerts}
    stall = by_key[("staller", "stalled_critical_path", "open")]
    assert stall["next_touchpoint"] == "checkout" and stall["stage"] == "purchase"
    assert stall["expected_seconds"] == pytest.approx(66.5 * 60)
    # opened at the first watermark past its due time: the clock at 200 min, less 5 min of lateness,
    # against the cart at 30 min
    assert stall["elapsed_seconds"] == (195 - 30) * 60
    assert stall["severity"] == "high" and "has not reached checkout" in stall["reason"]
    assert stall["clv"]["orders"] == 0 and stall["clv"]["model"] == "insufficient data"  # what they are worth
    # resolved by the checkout at 300 min, before the purchase at 302: worth nothing yet at that moment
    resolved_clv = by_key[("resumer", "stalled_critical_path", "resolved")]["clv"]
    assert resolved_clv["orders"] == 0 and resolved_clv["as_of"] == by_key[("resumer", "stalled_critical_path",
                                                                             "resolved")]["event_time"]
    drop = by_key[("staller", "drop_off", "open")]
    assert drop["expected_seconds"] == 7 * 86_400 and drop["stage"] == "purchase"
    staller = w.customer("staller")
    assert {a["alert_id"] for a in staller["open_alerts"]} == {stall["alert_id"], drop["alert_id"]}
    assert w.customer("resumer")["open_alerts"] == []
    opened = by_key[("resumer", "stalled_critical_path", "open")]
    resolved = by_key[("resumer", "stalled_critical_path", "resolved")]
    assert opened["alert_id"] == resolved["alert_id"] and resolved["severity"] == "info"


def test_delivering_every_event_again_produces_no_new_alert(replay):
    w, events = replay
    first = w.alerts()
    publish(w, events)  # every event a second time: all duplicates (same event ids)
    again = w.alerts()  # drained: every record of both sends is applied and its alerts published
    assert again == first
    stats = w.get("/worker/stats")[1]
    assert stats["duplicates"] == len(events) and stats["consumed"] == 2 * len(events)


def without_emitted_at(alerts: list[dict]) -> list[bytes]:
    return [orjson.dumps({k: v for k, v in a.items() if k != "emitted_at"}) for a in alerts]


@pytest.mark.parametrize("batch_size", ["1", "7"])
def test_a_replay_at_another_speed_and_batch_size_gives_byte_identical_alerts(replay, worker_factory, batch_size):
    w, _ = replay
    first = w.alerts()
    # A fresh worker (new consumer group, new Redis prefix) reads the same recorded topic from the
    # start (now at full speed: everything is already there), one record a batch or seven.
    w2 = worker_factory(redis="single", JOURNEY_TOUCHPOINTS_TOPIC=w.settings.touchpoints_topic,
                        JOURNEY_BATCH_SIZE=batch_size, **EVENT_TIME_ONLY)
    w2.start()
    second = w2.alerts()
    assert without_emitted_at(second) == without_emitted_at(first)


def test_gap_analysis_reports_expected_and_actual_transition_times(replay):
    w, _ = replay
    w.wait_drained()
    status, gaps = w.get("/journey/gaps?days=30")
    assert status == 200
    act = {(a["from"], a["to"]): a for a in gaps["activities"]}
    cart = act[("add_to_cart", "checkout")]
    # ontime took 10 min, saver 30 min, resumer 280 min; the staller never checked out
    assert cart["transitions"] == 3 and cart["critical"] is True
    assert cart["expected_seconds"] == pytest.approx(26 * 60 + 50)
    assert 25 * 60 <= cart["actual_median_seconds"] <= 35 * 60  # 30 min, read from a ±9 % bucket
    assert cart["conversion_rate"] == 0.75  # 3 of the 4 who added to cart
    stages = {s["stage"]: s for s in gaps["stages"]}
    # ontime, staller, resumer and saver reached purchase, and so did the two clock customers, whose
    # review took them straight to advocacy past every stage; the staller dropped off there
    assert stages["purchase"]["drop_offs"] == 1 and stages["purchase"]["reached"] == 6
    assert w.get("/journey/gaps?days=forever")[0] == 400


def test_alerts_tail_prints_them_for_people_and_scripts(replay):
    import os
    import subprocess
    import sys

    from tests.integration.conftest import ROOT

    w, _ = replay
    w.wait_drained()
    env = {**os.environ, **w.env}
    base = [sys.executable, "-m", "streams.cli", "alerts", "tail", "--from-beginning", "--timeout", "5"]
    table = subprocess.run([*base, "--type", "drop_off"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["event", "time", "type"] and len(lines) == 2  # header + the staller's drop-off
    assert "staller" in lines[1] and "drop_off" in lines[1]
    as_json = subprocess.run([*base, "--json"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert {(a["customer_id"], a["type"], a["status"], a["touchpoint"])
            for a in map(orjson.loads, as_json.stdout.splitlines())} == EXPECTED
