"""Choosing the CLV model and comparing the propensity model kinds, as a user does it, on a real worker.

A purchase history from 1997-98 (with upgrades planted for the frequent buyers) is backfilled
through Kafka into a worker on a single Redis and on the Redis Cluster; then
``journey clv fit --validate --json`` and ``journey model validate --json`` run as commands. The
holdout purchases the command reports are recounted here from the published records.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.integration.conftest import REDIS_MODES, ROOT, WorkerProcess, wait_for

DAY = 86_400_000
START = datetime(1997, 1, 1, tzinfo=UTC)
END = datetime(1998, 7, 1, tzinfo=UTC)


def journey(w: WorkerProcess, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**os.environ, **(env or w.env)},
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def ms(e: dict[str, object]) -> int:
    return int(datetime.fromisoformat(str(e["timestamp"])).timestamp() * 1000)


def history(customers: int, seed: int) -> list[dict[str, object]]:
    """Purchases from a BG/NBD-like process (first purchases during 1997, up to mid-1998); frequent buyers
    upgrade within ten days of a purchase 35 % of the time, the others 4 % (a signal to learn)."""
    rng = np.random.default_rng(seed)
    start_ms, end_ms = int(START.timestamp() * 1000), int(END.timestamp() * 1000)
    out: list[dict[str, object]] = []

    def add(c: int, k: str, tp: str, t: int) -> None:
        out.append({"event_id": f"s{c}-{k}", "customer_id": f"sel{c:04d}", "touchpoint": tp,
                    "timestamp": datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="milliseconds"),
                    "value": round(float(rng.gamma(4.0, 8.0)) + 1.0, 2)})

    for c in range(customers):
        lam = rng.gamma(0.6, 1 / 40.0)
        p = rng.beta(0.8, 2.5)
        t = start_ms + int(rng.uniform(0, 365) * DAY)
        k = 0
        while t < end_ms:
            add(c, str(k), "purchase", t)
            if rng.random() < (0.35 if lam > 0.02 else 0.04):
                u = t + int(rng.uniform(0.5, 10) * DAY)
                if u < end_ms:
                    add(c, f"{k}u", "upgrade", u)
            k += 1
            if rng.random() < p:
                break
            t += int(rng.exponential(1 / lam) * DAY) + 1
    return sorted(out, key=lambda e: str(e["timestamp"]))


@pytest.fixture(scope="module", params=REDIS_MODES)
def backfilled(request, worker_factory, tmp_path_factory) -> tuple[WorkerProcess, list[dict[str, object]]]:
    w = worker_factory(redis=request.param, JOURNEY_DEDUPE_WINDOW="3650d", JOURNEY_MODEL_CHECKPOINT_INTERVAL="0.5s")
    w.start()
    events = history(1500, seed=21)
    path = Path(tmp_path_factory.mktemp("history")) / "orders.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    done = journey(w, "backfill", str(path), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"applied or recognised as duplicates {len(events):,} and dead-lettered 0" in done.stdout
    return w, events


def test_clv_fit_validate_chooses_the_lower_holdout_error_and_the_worker_uses_it(backfilled):
    w, events = backfilled
    done = journey(w, "clv", "fit", "--validate", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = orjson.loads(done.stdout)
    sel = result["selection"]

    # every candidate is reported with finite errors, and the chosen one has the lowest per-customer MAE
    candidates = {c["kind"]: c for c in sel["candidates"]}
    assert set(candidates) == {"bgnbd", "mbgnbd"}
    for c in candidates.values():
        assert all(math.isfinite(c[k]) for k in ("mae", "rmse", "predicted_total", "total_error")), c
    assert sel["chosen"] == min(candidates, key=lambda k: (candidates[k]["mae"], candidates[k]["rmse"]))
    assert result["model"] == "fitted" and result["kind"] == sel["chosen"]
    print("holdout errors:", {k: {f: c[f] for f in ("mae", "rmse", "predicted_total", "actual_total",
                                                      "total_error")} for k, c in candidates.items()},
          "split", sel["split"], "holdout days", sel["holdout_days"], "chosen", sel["chosen"])

    # the split is the default rule's, and the holdout purchases are those counted here from the records:
    # orders (purchases and upgrades) on or after the split day by customers whose first order was before it
    as_of = max(ms(e) for e in events)
    first: dict[str, int] = {}
    for e in events:
        first[str(e["customer_id"])] = min(first.get(str(e["customer_id"]), ms(e)), ms(e))
    split = (as_of - round(0.25 * (as_of - min(first.values())))) // DAY * DAY
    assert sel["split"] == datetime.fromtimestamp(split / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    cohort = {c for c, t in first.items() if t < split}
    actual = sum(1 for e in events if ms(e) >= split and str(e["customer_id"]) in cohort)
    assert sel["holdout_purchases"] == actual
    assert all(c["actual_total"] == actual for c in candidates.values())
    assert sel["calibration_customers"] == len(cohort)

    # GET /clv/model names the kind in use and why; the customer lookups quote that version
    status, model = w.get("/clv/model")
    assert status == 200 and model["kind"] == sel["chosen"] and model["version"] == result["version"]
    assert model["selection"]["chosen"] == sel["chosen"] and model["selection"]["candidates"] == sel["candidates"]
    clv = wait_for(lambda: (v := w.customer("sel0001")["clv"])["model_version"] == result["version"] and v, 30,
                   "the worker to use the chosen model")
    assert clv["model"] == "fitted" and 0 < clv["p_alive"] <= 1

    # a later plain refit (what the leader's periodic refit does) keeps the chosen kind
    again = journey(w, "clv", "fit")
    assert again.returncode == 0, again.stderr
    refit = orjson.loads(again.stdout)
    assert refit["kind"] == sel["chosen"] and refit["selection"]["chosen"] == sel["chosen"]

    table = journey(w, "clv", "fit", "--validate")  # for people: the same choice, as a table
    assert table.returncode == 0 and f"chosen: {sel['chosen']}" in table.stdout, table.stderr
    print(table.stdout)


def test_model_validate_compares_the_kinds_without_touching_the_running_model(backfilled):
    w, _ = backfilled
    # the learner has learned and archived examples (it checkpoints every 0.5 s)
    wait_for(lambda: (m := w.get("/model")[1]) and m.get("examples_learned", 0) > 500
             and w.redis.xlen(w.keys.model_examples) == m["examples_learned"], 120,
             "the learner to learn and archive the settled examples")
    before = w.redis.hgetall(w.keys.model)
    done = journey(w, "model", "validate", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    body = orjson.loads(done.stdout)
    kinds = {c["kind"]: c for c in body["candidates"]}
    assert set(kinds) == {"logistic", "tree"} and body["examples"] >= 500 and body["positives"] > 0
    for c in kinds.values():
        assert all(c[k] is not None and math.isfinite(c[k]) for k in ("roc_auc", "log_loss", "accuracy")), c
    assert body["best"] == max(kinds, key=lambda k: (kinds[k]["roc_auc"], -kinds[k]["log_loss"]))
    assert body["running"] == "logistic"
    if body["best"] != "logistic":
        assert "JOURNEY_MODEL_KIND=tree" in body["advice"]
    print("propensity:", {k: (c["roc_auc"], c["log_loss"], c["accuracy"]) for k, c in kinds.items()},
          "recorded", body["recorded_scores"]["roc_auc"])
    after = w.redis.hgetall(w.keys.model)
    assert after[b"kind"] == before[b"kind"] == b"logistic"
    assert int(after[b"version"]) >= int(before[b"version"])  # only the learner moves it on

    text = journey(w, "model", "validate")
    assert text.returncode == 0 and "JOURNEY_MODEL_KIND" in text.stdout and "logistic" in text.stdout
    print(text.stdout)


def test_mistakes_and_missing_data_get_a_clear_message(backfilled):
    w, _ = backfilled
    bad = journey(w, "clv", "fit", "--holdout-days", "30")
    assert bad.returncode == 2 and "--holdout-days goes with --validate" in bad.stderr
    too_long = journey(w, "clv", "fit", "--validate", "--holdout-days", "400")
    assert too_long.returncode == 2 and "at most 364" in too_long.stderr
    empty = {**w.env, "JOURNEY_REDIS_PREFIX": w.env["JOURNEY_REDIS_PREFIX"] + ":empty"}
    nothing = journey(w, "clv", "fit", "--validate", env=empty)
    assert nothing.returncode == 1 and "cannot choose a CLV model: no event has been applied yet" in nothing.stderr
    no_examples = journey(w, "model", "validate", env=empty)
    assert no_examples.returncode == 1 and "no labelled examples recorded yet" in no_examples.stderr
    for done in (bad, too_long, nothing, no_examples):
        assert "Traceback" not in done.stderr
