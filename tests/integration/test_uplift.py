"""What alerts are worth, on the real Kafka and Redis: a stream with a planted treatment effect
(alerted, not held-out customers come back 15 points more often) is measured by the tracker
as an uplift whose 95 % interval contains 15 points and excludes 0; holdout membership is the
same in a replay through two other workers."""

from __future__ import annotations

import json
import time

import pytest
from kafka.partitioner.default import murmur2

from streams.devtools.simulate import simulate_treatment
from tests.integration.conftest import ROOT, WorkerProcess, read_topic
from tests.integration.test_dashboard import parse, run_chromium

DAY = 86_400_000
EFFECT, BASE = 0.15, 0.20
CUSTOMERS = 4000
SETTINGS = {"JOURNEY_HOLDOUT": "drop_off=0.5,stalled_critical_path=0.1,upsell_opportunity=0.1",
            "JOURNEY_UPLIFT_WINDOW": "4d", "JOURNEY_IDLE_TIMEOUT": "1h", "JOURNEY_TOPIC_PARTITIONS": "2",
            "JOURNEY_HOLDOUT_SALT": "test-salt"}


def keys_for_partitions(n: int) -> list[str]:
    """One customer id per partition, as the producer's default partitioner places keys."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < n:
        key = f"heartbeat-{i}"
        found.setdefault((murmur2(key.encode()) & 0x7FFFFFFF) % n, key)
        i += 1
    return [found[p] for p in range(n)]


@pytest.fixture(scope="module")
def planted():
    start = int(time.time() * 1000) - 60 * DAY
    return simulate_treatment(CUSTOMERS, seed=11, start_ms=start, holdout_share=0.5, holdout_salt="test-salt",
                              base_rate=BASE, effect=EFFECT, heartbeat_keys=keys_for_partitions(2),
                              until_ms=int(time.time() * 1000) - DAY)


def publish(w: WorkerProcess, records) -> None:
    for r in records:
        w.producer.send(w.settings.touchpoints_topic, key=r.key, value=r.value)
    w.producer.flush()


def test_a_planted_effect_is_measured_with_an_interval_that_contains_it(worker_factory, planted, tmp_path):
    truth, records = planted
    w = worker_factory(**SETTINGS)
    w.start()
    publish(w, records)
    w.wait_drained(timeout=300)

    # Every customer's drop-off alert fired before they came back, and carries their holdout group.
    alerts = [json.loads(m.value) for m in read_topic(w.settings, w.settings.alerts_topic) if m.value]
    drop = {a["customer_id"]: a for a in alerts if a["type"] == "drop_off" and a["status"] == "open"}
    assert set(drop) == {c.customer_id for c in truth}
    assert all(drop[c.customer_id]["holdout"] is c.held_out for c in truth)
    held = sum(c.held_out for c in truth)
    assert abs(held - CUSTOMERS / 2) < 3 * (CUSTOMERS * 0.25) ** 0.5  # the configured share, within 3 sd

    status, body = w.get("/journey/uplift")
    assert status == 200
    row = next(r for r in body["alert_types"] if r["type"] == "drop_off")
    treated = [c for c in truth if not c.held_out]
    control = [c for c in truth if c.held_out]
    # Counts and rates equal the truth exactly (every exposure settled: the heartbeats ran past every window).
    assert (row["treated"], row["held_out"]) == (len(treated), len(control))
    assert row["conversion_treated"] == pytest.approx(sum(c.converted for c in treated) / len(treated), abs=1e-12)
    assert row["conversion_held_out"] == pytest.approx(sum(c.converted for c in control) / len(control), abs=1e-12)
    assert row["revenue_treated"] == pytest.approx(50.0 * sum(c.converted for c in treated) / len(treated), abs=1e-9)
    # The planted effect: inside the interval, and the interval excludes no effect.
    assert row["ci_low"] < EFFECT < row["ci_high"]
    assert row["ci_low"] > 0
    assert row["revenue_ci_low"] > 0

    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "uplift.json").write_text(json.dumps({"planted_effect": EFFECT, "base_rate": BASE, "drop_off": row},
                                                indent=2))

    # The CLI says the same.
    import os
    import subprocess
    import sys

    cli = subprocess.run([sys.executable, "-m", "streams.cli", "uplift", "--json"], env={**os.environ, **w.env},
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr
    assert next(r for r in json.loads(cli.stdout)["alert_types"] if r["type"] == "drop_off") == row
    text = subprocess.run([sys.executable, "-m", "streams.cli", "uplift"], env={**os.environ, **w.env},
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert text.returncode == 0 and "drop_off" in text.stdout and "Traceback" not in text.stderr

    # The dashboard shows the same, in a real browser; its screenshot is kept for people to look at.
    dom = parse(run_chromium(tmp_path / "profile-dom", "--dump-dom", w.base_url + "/").stdout).found
    assert float(dom["uplift-drop_off"]["attrs"]["data-value"]) == row["uplift"]
    assert int(dom["uplift-drop_off-treated"]["attrs"]["data-value"]) == row["treated"]
    assert int(dom["uplift-drop_off-held-out"]["attrs"]["data-value"]) == row["held_out"]
    shot = ROOT / "test-output" / "dashboard-uplift.png"
    run_chromium(tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1400,700", w.base_url + "/")
    assert shot.exists()
    w.stop()

    # A replay of the same records through two other workers (one group): the same alerts, the same groups.
    first = worker_factory(**SETTINGS)
    second = worker_factory(**SETTINGS, **{k: first.env[k] for k in (
        "JOURNEY_APP_ID", "JOURNEY_TOUCHPOINTS_TOPIC", "JOURNEY_DLQ_TOPIC", "JOURNEY_ALERTS_TOPIC",
        "JOURNEY_ERASURE_TOPIC", "JOURNEY_SPEND_TOPIC", "JOURNEY_REDIS_PREFIX")})
    first.start()
    second.start(ready=False)
    publish(first, records)
    first.wait_drained(timeout=300)
    replayed = [json.loads(m.value) for m in read_topic(first.settings, first.settings.alerts_topic) if m.value]
    assert {a["alert_id"]: a["holdout"] for a in replayed} == {a["alert_id"]: a["holdout"] for a in alerts}

