"""Customer value through the real Kafka and Redis: purchases, late purchases, refunds, duplicates
and currencies give exact figures; a history from the 1990s, backfilled, gives the CLV model a
batch fit of the same purchases gives as of the same date (``lifetimes`` is the reference)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.integration.conftest import REDIS_MODES, ROOT, WorkerProcess, wait_for

DAY = 86_400_000


@pytest.fixture(scope="module", params=REDIS_MODES)
def worker(request, worker_factory) -> WorkerProcess:
    w = worker_factory(redis=request.param, JOURNEY_FX_RATES="USD=0.5", JOURNEY_DEDUPE_WINDOW="400d",
                       JOURNEY_CHANNELS="social,search")
    w.start()
    return w


def ev(eid: str, tp: str, days_ago: float, **extra: object) -> dict[str, object]:
    ts = int(time.time() * 1000) - int(days_ago * DAY)
    return {"event_id": eid, "customer_id": "vic", "touchpoint": tp, "timestamp": ts, **extra}


def journey(w: WorkerProcess, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**os.environ, **w.env},
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_purchases_refunds_late_and_duplicate_events_give_exact_figures(worker: WorkerProcess):
    purchase_10d = ev("v3", "purchase", 10, value=20.0)
    worker.send(
        ev("v1", "ad_click", 41, channel="social"),
        ev("v2", "site_visit", 40.5, channel="vic@example.com"),  # free text where a channel belongs
        ev("v2b", "purchase", 40, value=50.0, currency="EUR"),
        purchase_10d,
        purchase_10d,  # sent twice
        ev("v4", "refund", 5, value=15.0),
        ev("v5", "upgrade", 2, value=10.0, currency="USD"),  # 0.5 EUR per USD
        ev("v6", "purchase", 1.5, value=99.0, currency="JPY"),  # no rate: dead-lettered
    )
    worker.send(ev("v0", "purchase", 100, value=30.0))  # late: 100 days ago
    worker.wait_drained()
    body = worker.customer("vic")
    clv = body["clv"]
    assert (clv["orders"], clv["revenue"], clv["refunded"], clv["aov"]) == (4, 90.0, 15.0, 26.25)
    # As of the stream's time (the latest event applied: the upgrade 2 days ago; the JPY purchase was
    # dead-lettered): 30 days back hold the purchase of 20, the refund of 15 and the upgrade of 5
    assert clv["as_of"] == body["as_of"]
    assert (clv["revenue_30d"], clv["orders_30d"]) == (10.0, 2)
    assert (clv["revenue_90d"], clv["orders_90d"]) == (60.0, 3)
    assert (clv["revenue_365d"], clv["orders_365d"]) == (90.0, 4)
    assert clv["model"] == "insufficient data" and clv["expected_purchases"] is None
    assert clv["first_purchase"] < clv["last_purchase"] and clv["first_purchase"].endswith("Z")

    (letter,) = worker.dead_letters()
    assert dict(letter.headers)["journey.error.reason"] == b"currency_mismatch"

    status, value = worker.get("/journey/value")
    assert status == 200 and value["as_of"] == body["as_of"]
    tps = {r["touchpoint"]: r for r in value["touchpoints"]}
    # only the first purchase had touches within the 30-day lookback: ad_click and site_visit
    decay = 2 ** (-1 / 7) / (2 ** (-1 / 7) + 2 ** (-0.5 / 7))  # touches 1 and 0.5 days before; half-life 7 days
    assert tps["ad_click"] == {"touchpoint": "ad_click", "first_touch": 50.0, "last_touch": 0.0,
                               "linear": 25.0, "time_decay": pytest.approx(50 * decay, abs=0.01)}
    assert (tps["site_visit"]["last_touch"], tps["site_visit"]["linear"]) == (50.0, 25.0)
    assert tps["ad_click"]["time_decay"] + tps["site_visit"]["time_decay"] == pytest.approx(50.0)
    channels = {r["channel"]: r for r in value["channels"]}
    # the email address sent as a channel is counted as "other": it never reaches this unauthenticated page
    assert set(channels) == {"social", "other"} and b"vic@example.com" not in orjson.dumps(value)
    assert (channels["social"]["first_touch"], channels["other"]["last_touch"]) == (50.0, 50.0)
    assert value["unattributed"] == 55.0  # 20 + 30 + 5 had no touch within the lookback
    stages = {s["stage"]: s for s in value["stages"]}
    assert stages["awareness"]["value_created"] == 50.0


def test_the_cli_shows_the_same_figures_as_the_api(worker: WorkerProcess):
    def as_json(*args: str) -> object:
        done = journey(worker, *args)
        assert done.returncode == 0, done.stderr
        return orjson.loads(done.stdout)

    worker.wait_drained()
    assert as_json("value", "--json") == worker.get("/journey/value")[1]
    assert as_json("gaps", "--json", "--days", "30") == worker.get("/journey/gaps?days=30")[1]
    customer = as_json("customer", "vic", "--json")
    assert customer == worker.customer("vic")
    table = journey(worker, "value")
    assert "Touchpoints: attributed purchase value (EUR)" in table.stdout and "ad_click" in table.stdout


# ---- a history from the 1990s ------------------------------------------------------------------------

TRUE = {"r": 0.6, "alpha": 40.0, "a": 0.8, "b": 2.5}  # BG/NBD, days
START = datetime(1997, 1, 1, tzinfo=UTC)
END = datetime(1998, 7, 1, tzinfo=UTC)


def history(customers: int, seed: int) -> list[dict[str, object]]:
    """Purchases simulated from the BG/NBD process, first purchases during 1997, up to mid-1998."""
    rng = np.random.default_rng(seed)
    start_ms, end_ms = int(START.timestamp() * 1000), int(END.timestamp() * 1000)
    out = []
    for c in range(customers):
        lam = rng.gamma(TRUE["r"], 1 / TRUE["alpha"])  # purchases per day
        p = rng.beta(TRUE["a"], TRUE["b"])  # dropout after each purchase
        t = start_ms + int(rng.uniform(0, 365) * DAY)
        k = 0
        while t < end_ms:
            out.append({"event_id": f"h{c}-{k}", "customer_id": f"cdnow{c:04d}", "touchpoint": "purchase",
                        "timestamp": datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="milliseconds"),
                        "value": round(float(rng.gamma(4.0, 8.0)) + 1.0, 2)})
            k += 1
            if rng.random() < p:
                break
            t += int(rng.exponential(1 / lam) * DAY) + 1
    return sorted(out, key=lambda e: str(e["timestamp"]))


@pytest.fixture(scope="module")
def nineties(worker_factory, tmp_path_factory) -> tuple[WorkerProcess, list[dict[str, object]]]:
    w = worker_factory(JOURNEY_DEDUPE_WINDOW="3650d")
    w.start()
    events = history(1500, seed=11)
    path = Path(tmp_path_factory.mktemp("history")) / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    done = journey(w, "backfill", str(path), "--quiet", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"sent {len(events):,} of {len(events):,} lines" in done.stdout
    assert f"applied or recognised as duplicates {len(events):,} and dead-lettered 0" in done.stdout
    return w, events


def test_a_backfilled_1990s_history_gives_the_batch_fit_of_the_same_purchases(nineties):
    w, events = nineties
    fitted = journey(w, "clv", "fit")
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    model = orjson.loads(fitted.stdout)
    # As of the stream's time: the last purchase anywhere; never the wall clock.
    as_of_ms = max(int(datetime.fromisoformat(str(e["timestamp"])).timestamp() * 1000) for e in events)
    assert model["as_of_ms"] == as_of_ms and model["as_of"].startswith("1998-")

    # The reference: the same purchases summarised here, independently, and fitted by `lifetimes`.
    by_customer: dict[str, list[int]] = {}
    for e in events:
        by_customer.setdefault(str(e["customer_id"]), []).append(
            int(datetime.fromisoformat(str(e["timestamp"])).timestamp() * 1000))
    x = np.array([len(ts) - 1 for ts in by_customer.values()], dtype=float)
    t_x = np.array([(max(ts) - min(ts)) / DAY for ts in by_customer.values()])
    T = np.array([(as_of_ms - min(ts)) / DAY for ts in by_customer.values()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lifetimes
        import pandas as pd

        bgf = lifetimes.BetaGeoFitter().fit(x, t_x, T)
    for name in ("r", "alpha", "a", "b"):
        assert model["bgnbd"][name] == pytest.approx(bgf.params_[name], rel=1e-3), name

    # Per customer: the lookup's expected purchases are the reference's, with the stream's parameters.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bgf.params_ = pd.Series(model["bgnbd"])
        for cid in ("cdnow0001", "cdnow0042", "cdnow0777"):
            ts = by_customer[cid]
            # (the worker picks a new model version up within 5 s)
            mine = wait_for(lambda c=cid: (v := w.customer(c)["clv"])["model_version"] == model["version"] and v,
                            30, "the worker to use the new CLV model")
            theirs = float(bgf.conditional_expected_number_of_purchases_up_to_time(
                365.0, len(ts) - 1, (max(ts) - min(ts)) / DAY,
                (_as_of_ms(mine["as_of"]) - min(ts)) / DAY))
            assert mine["expected_purchases"] == pytest.approx(theirs, abs=1e-4), cid
            assert mine["model"] == "fitted" and mine["model_version"] == model["version"]


def _as_of_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
