"""Customer value through the real Kafka and Redis: purchases, late purchases, refunds,
duplicates and currencies give exact figures in Redis and on the HTTP API; the predictive
model says `insufficient data` until it can be fitted, then every lookup carries it."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time

import orjson
import pytest
from redis.asyncio import Redis
from streams.journey_store import Arrival, RedisJourneyStore

from models.events import TouchpointEvent
from streams.journey_file import load_journey_map
from streams.settings import DEFAULT_MAP
from tests.integration.conftest import ROOT, WorkerProcess

DAY = 86_400_000


@pytest.fixture(scope="module")
def worker(worker_factory) -> WorkerProcess:
    w = worker_factory(JOURNEY_FX_RATES="USD=0.5", JOURNEY_DEDUPE_WINDOW="400d")
    w.start()
    return w


def ev(eid: str, tp: str, days_ago: float, **extra: object) -> dict[str, object]:
    ts = int(time.time() * 1000) - int(days_ago * DAY)
    return {"event_id": eid, "customer_id": "vic", "touchpoint": tp, "timestamp": ts, **extra}


def test_purchases_refunds_late_and_duplicate_events_give_exact_figures(worker: WorkerProcess):
    purchase_10d = ev("v3", "purchase", 10, value=20.0)
    worker.send(
        ev("v1", "ad_click", 41, channel="social"),
        ev("v2", "site_visit", 40.5),
        ev("v2b", "purchase", 40, value=50.0, currency="EUR"),
        purchase_10d,
        purchase_10d,  # redelivered
        ev("v4", "refund", 5, value=15.0),
        ev("v5", "upgrade", 2, value=10.0, currency="USD"),  # 0.5 EUR per USD
        ev("v6", "purchase", 1, value=99.0, currency="JPY"),  # no rate: dead-lettered
    )
    worker.wait_customer("vic", lambda c: c["events"] == 6)
    worker.send(ev("v0", "purchase", 100, value=30.0))  # late: 100 days ago
    body = worker.wait_customer("vic", lambda c: c["clv"]["orders"] == 4)
    clv = body["clv"]
    assert (clv["orders"], clv["revenue"], clv["refunded"], clv["aov"]) == (4, 90.0, 15.0, 26.25)
    assert (clv["revenue_30d"], clv["orders_30d"]) == (10.0, 2)  # 20 - 15 + 5
    assert (clv["revenue_90d"], clv["orders_90d"]) == (60.0, 3)
    assert (clv["revenue_365d"], clv["orders_365d"]) == (90.0, 4)
    assert clv["model"] == "insufficient data" and clv["expected_purchases"] is None
    assert clv["first_purchase"] < clv["last_purchase"] and clv["first_purchase"].endswith("Z")

    (letter,) = [m for m in worker.dead_letters(expected=1) if dict(m.headers)["journey.error.reason"]]
    assert dict(letter.headers)["journey.error.reason"] == b"currency_mismatch"

    status, value = worker.get("/journey/value")
    assert status == 200
    tps = {r["touchpoint"]: r for r in value["touchpoints"]}
    # only the first purchase had touches within the 30-day lookback: ad_click and site_visit
    decay = 2 ** (-1 / 7) / (2 ** (-1 / 7) + 2 ** (-0.5 / 7))  # touches 1 and 0.5 days before; half-life 7 days
    assert tps["ad_click"] == {"touchpoint": "ad_click", "first_touch": 50.0, "last_touch": 0.0,
                               "linear": 25.0, "time_decay": pytest.approx(50 * decay, abs=0.01)}
    assert (tps["site_visit"]["last_touch"], tps["site_visit"]["linear"]) == (50.0, 25.0)
    assert tps["ad_click"]["time_decay"] + tps["site_visit"]["time_decay"] == pytest.approx(50.0)
    channels = {r["channel"]: r for r in value["channels"]}
    assert (channels["social"]["first_touch"], channels["(none)"]["last_touch"]) == (50.0, 50.0)
    assert value["unattributed"] == 55.0  # 20 + 30 + 5 had no touch within the lookback
    stages = {s["stage"]: s for s in value["stages"]}
    assert stages["awareness"]["value_created"] == 50.0


def test_the_model_is_fitted_versioned_and_used_once_there_is_enough_data(worker: WorkerProcess):
    env = {**os.environ, **worker.env}
    cli = [sys.executable, "-m", "streams.cli", "clv", "fit"]
    early = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert early.returncode == 1 and '"insufficient data"' in early.stdout

    async def load_history() -> None:
        # 400 customers with a purchase history, straight into this worker's Redis prefix
        redis = Redis.from_url(worker.settings.redis_url)
        store = RedisJourneyStore(redis, load_journey_map(DEFAULT_MAP), prefix=worker.settings.redis_prefix,
                                  dedupe_window_ms=400 * DAY, path_length=5)
        rng = random.Random(5)
        now = int(time.time() * 1000)
        arrivals = []
        for c in range(400):
            start = now - rng.randint(30, 300) * DAY
            rate = rng.uniform(0.005, 0.05)
            t, k = start, 0
            while t < now:
                event = TouchpointEvent(f"h{c}-{k}", f"hist{c}", "purchase", t, value=rng.uniform(10, 90))
                arrivals.append(Arrival(event, 0, 0))
                t += int(rng.expovariate(rate) * DAY) + DAY
                k += 1
                if rng.random() < 0.15:
                    break
        for i in range(0, len(arrivals), 500):
            await store.apply(arrivals[i:i + 500], {0: 0})
        await redis.aclose()

    asyncio.run(load_history())
    fitted = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    assert '"model": "fitted"' in fitted.stdout and '"version": 1' in fitted.stdout

    time.sleep(5.5)  # the worker re-reads the newest model at most every 5 s
    clv = worker.customer("vic")["clv"]
    assert clv["model"] == "fitted" and clv["model_version"] == 1
    assert clv["expected_purchases"] > 0 and 0 < clv["p_alive"] <= 1 and clv["predicted_clv"] > 0
    status, model = worker.get("/clv/model")
    assert status == 200 and model["version"] == 1 and model["n_customers"] >= 401


def test_the_cli_shows_the_same_figures_as_the_api(worker: WorkerProcess):
    env = {**os.environ, **worker.env}

    def journey(*args: str) -> object:
        done = subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return orjson.loads(done.stdout)

    assert journey("value", "--json") == worker.get("/journey/value")[1]
    assert journey("gaps", "--json", "--days", "30") == worker.get("/journey/gaps?days=30")[1]
    customer = journey("customer", "vic", "--json")
    assert customer["clv"]["orders"] == 4 and customer["stage"] == worker.customer("vic")["stage"]
    table = subprocess.run([sys.executable, "-m", "streams.cli", "value"], env=env, capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
    assert "Touchpoints: attributed purchase value (EUR)" in table.stdout and "ad_click" in table.stdout
