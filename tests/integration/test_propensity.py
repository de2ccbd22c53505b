"""Upsell propensity through the real Kafka and Redis.

- Scoring points are scored and stored, labels settle (positive on an upsell within the
  horizon, negative when the watermark passes it), the single learner learns each example
  once, and `/model`, the metrics, the customer lookup and `upsell_opportunity` alerts show it.
- Model snapshots are authenticated: a tampered one is refused and the last good model kept;
  a learner that restarts resumes where its checkpoint left off, learning nothing twice.
- On the simulator's stream the model finds the planted upsell signal (AUC well above 0.5
  after warm-up), and finds nothing (about 0.5) when the signal is removed.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from redis.asyncio import Redis
from streams.propensity_store import PropensityStore, SnapshotRefused, snapshot_mac
from streams.simulate import publish, simulate
from streams.upsell import Learner, Scorer

from streams.journey_file import load_journey_map
from streams.settings import DEFAULT_MAP
from tests.integration.conftest import WorkerProcess, read_topic, wait_for

DAY = 86_400_000
JOURNEY = load_journey_map(DEFAULT_MAP)


def ev(cid: str, eid: str, tp: str, days_ago: float, **extra: object) -> dict[str, object]:
    ts = int(time.time() * 1000) - int(days_ago * DAY)
    return {"event_id": eid, "customer_id": cid, "touchpoint": tp, "timestamp": ts, **extra}


@pytest.fixture(scope="module")
def worker(worker_factory) -> WorkerProcess:
    w = worker_factory(
        JOURNEY_MODEL_CHECKPOINT_INTERVAL="0.5s",
        JOURNEY_MODEL_RELOAD_INTERVAL="0.5s",
        JOURNEY_MODEL_ALERT_MIN_EXAMPLES="0",  # an untrained model's 0.5 is above the 0.3 threshold
        JOURNEY_DEDUPE_WINDOW="400d",
        JOURNEY_IDLE_TIMEOUT="2s",  # a partition without new events lets its watermark follow the clock
    )
    w.start()
    return w


def test_predictions_are_labelled_learned_once_and_shown_everywhere(worker: WorkerProcess):
    worker.send(
        # up: scored after the purchase and the onboarding, upgrades 3 days later: both positive
        ev("up", "u1", "purchase", 40, value=30.0),
        ev("up", "u2", "onboarding_complete", 39),
        ev("up", "u3", "upgrade", 36, value=96.0),
        # down: scored after the purchase, never upgrades: negative once the watermark is 14 days later
        ev("down", "d1", "purchase", 30, value=20.0),
        ev("down", "d1", "purchase", 30, value=20.0),  # redelivered: scored once
        # late: upgrades 20 days after the purchase, outside the 14-day horizon: negative
        ev("late", "l1", "purchase", 40, value=25.0),
        ev("late", "l2", "upgrade", 20, value=96.0),
        # recent: scored 2 days ago, still waiting for its label
        ev("recent", "r1", "purchase", 2, value=10.0),
        ev("recent", "r2", "site_visit", 0),  # moves the watermark to now
    )
    _, model = wait_for(
        lambda: (r := worker.get("/model"))[0] == 200 and r[1]["examples_learned"] == 4 and r, 60, "4 examples learned"
    )
    # the untrained model said 0.5 for everyone: evaluated (it had classes), 2 positives of 4
    assert model["examples_evaluated"] == 4 and model["roc_auc"] == 0.5
    assert model["predictions_pending"] == 1 and model["version"] == 4
    assert model["score_after"] == ["purchase", "onboarding_complete"] and model["upsell"] == ["upgrade"]
    assert model["calibration"][5] == {"bin": "0.5-0.6", "n": 4, "mean_predicted": 0.5, "observed_rate": 0.5}
    # the model is learned from every example exactly once, even with the worker still running
    time.sleep(2)
    assert worker.get("/model")[1]["examples_learned"] == 4

    recent = worker.customer("recent")
    assert recent["propensity"]["score"] == 0.5 and recent["propensity"]["pending_labels"] == 1
    assert recent["propensity"]["scored_at"].endswith("Z") and recent["propensity"]["model_version"] == 0
    assert worker.customer("down")["propensity"]["pending_labels"] == 0

    metrics = wait_for(lambda: "journey_model_roc_auc" in (b := _metrics(worker)) and b, 30, "model metrics")
    assert 'journey_model_roc_auc{window="since_start"} 0.5' in metrics
    assert "journey_model_examples_learned_total 4.0" in metrics
    assert "journey_predictions_total 5.0" in metrics

    # upsell alerts: one per customer per horizon (up was scored twice within 14 days: one alert)
    alerts = [orjson.loads(m.value) for m in read_topic(worker.settings, worker.settings.alerts_topic, at_least=4)]
    upsell = sorted((a for a in alerts if a["type"] == "upsell_opportunity"), key=lambda a: a["customer_id"])
    assert [a["customer_id"] for a in upsell] == ["down", "late", "recent", "up"]
    first = upsell[3]
    assert first["touchpoint"] == "purchase" and first["next_touchpoint"] == "upgrade"
    assert first["score"] == 0.5 and first["model_version"] == 0 and first["clv"]["orders"] >= 1
    assert first["expected_seconds"] == 14 * 86400 and "likely to take upgrade" in first["reason"]


def test_erasure_removes_pending_predictions(worker: WorkerProcess):
    worker.send(ev("gone", "g1", "purchase", 1, value=10.0))
    worker.wait_customer("gone", lambda c: c["propensity"] is not None and c["propensity"]["pending_labels"] == 1)
    pending_before = worker.get("/model")[1]["predictions_pending"]
    status, _ = worker.get("/customers/gone")
    assert status == 200
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(worker.base_url + "/customers/gone", method="DELETE"))  # noqa: S310
    assert worker.get("/customers/gone")[0] == 404
    assert worker.get("/model")[1]["predictions_pending"] == pending_before - 1

    async def traces() -> list[bytes]:
        r = Redis.from_url(worker.settings.redis_url)
        try:
            return [k async for k in r.scan_iter(match=f"{worker.settings.redis_prefix}:{{gone}}:*")]
        finally:
            await r.aclose()

    assert asyncio.run(traces()) == []


def _metrics(worker: WorkerProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(worker.base_url + "/metrics", timeout=5) as r:  # noqa: S310
        return r.read().decode()


# ---- snapshots: integrity, versions, resuming -------------------------------------------------


@pytest.fixture
def redis_url(stack) -> str:
    return stack.redis_url


def _store(redis: Redis, prefix: str, key: bytes = b"k1") -> PropensityStore:
    return PropensityStore(redis, JOURNEY.propensity, prefix=prefix, model_key=key)


async def _examples(redis: Redis, store: PropensityStore, n: int, seed: int = 0) -> None:
    import random

    rng = random.Random(seed)
    for _ in range(n):
        x = {"a": rng.random(), "b": rng.random()}
        y = x["a"] > 0.5
        pred = orjson.dumps({"p": 0.5, "c": False, "v": 0, "x": x})
        await redis.xadd(store.examples_key, {"y": "1" if y else "0", "pred": pred})


async def _snapshot_checks(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    prefix = f"jt:test:snap:{time.time_ns()}"
    try:
        store = _store(redis, prefix)
        learner = Learner(store, kind="logistic", checkpoint_examples=50, window=100, read_count=30)
        await _examples(redis, store, 100)
        # 30 per step: checkpoints after 60 examples, then 40 wait unsaved
        for _ in range(4):
            await learner.step(now=0.0)
        assert learner.snapshot.version == 100 and await store.version() == 60
        # "crash": a new learner resumes from the checkpoint and learns the 40 after it, not the 60 before
        again = Learner(store, kind="logistic", checkpoint_examples=1, window=100, read_count=1000)
        assert await again.step(now=0.0) == 40
        assert await store.version() == 100
        assert (await store.report())["examples_learned"] == 100
        # learned stream entries are trimmed once checkpointed (the last one stays as the resume point)
        assert await redis.xlen(store.examples_key) == 1
        # the stale learner cannot overwrite the newer snapshot (compare-and-set on the version)
        assert await learner.checkpoint() is False and learner.snapshot is None

        scorer = Scorer(store, JOURNEY, kind="logistic", channels=())
        assert await scorer.refresh() and scorer.version == 100
        good = scorer.model

        # tampered: one byte of the pickle changed -> refused, the scorer keeps the last good model
        await _examples(redis, store, 10, seed=1)
        await again.step(now=0.0)
        blob = bytearray(await redis.hget(store.snapshot_key, "blob"))
        blob[len(blob) // 2] ^= 0xFF
        await redis.hset(store.snapshot_key, "blob", bytes(blob))
        with pytest.raises(SnapshotRefused, match="integrity check"):
            await store.load()
        assert await scorer.refresh() is False and scorer.model is good and scorer.version == 100
        assert scorer.refused == 1

        # written with another key: refused just the same
        other = _store(redis, prefix, key=b"another key")
        with pytest.raises(SnapshotRefused, match="another JOURNEY_MODEL_KEY"):
            await other.load()

        # foreign: correctly signed, but written by another river version -> refused before unpickling
        # (the blob is not even a pickle: unpickling it would raise something else)
        fields = [b"journey-propensity/1", b"0.0.1", b"logistic", b"200", b"0-0", b"{}", b"not a pickle"]
        await redis.hset(store.snapshot_key, mapping={
            "format": fields[0], "river": fields[1], "kind": fields[2], "version": fields[3], "last_id": fields[4],
            "report": fields[5], "blob": fields[6], "mac": snapshot_mac(b"k1", fields),
        })
        with pytest.raises(SnapshotRefused, match="foreign.*river 0.0.1"):
            await store.load()
        assert await scorer.refresh() is False and scorer.model is good and scorer.refused == 2
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def test_snapshots_resume_without_relearning_and_refuse_tampering(redis_url: str):
    asyncio.run(_snapshot_checks(redis_url))


# ---- the planted signal ------------------------------------------------------------------------


def _learn_from_simulation(worker_factory, tmp_path, *, upsell_signal: bool) -> dict:
    # Scored after onboarding only: without the planted rule every onboarded customer upgrades
    # with the same 15 %, so there is truly nothing to learn (after a purchase there would be:
    # customers who never onboard cannot upgrade).
    journey = tmp_path / f"journey-{upsell_signal}.yaml"
    journey.write_text(DEFAULT_MAP.read_text().replace(
        "score_after: [purchase, onboarding_complete]", "score_after: [onboarding_complete]"))
    w = worker_factory(
        JOURNEY_MAP=str(journey),
        # Scorers use a model at most about a second old, as they would on a live stream; a faster
        # backlog replay would have most scoring points predicted by a model that had not caught up.
        JOURNEY_MODEL_CHECKPOINT_INTERVAL="0.5s",
        JOURNEY_MODEL_RELOAD_INTERVAL="0.5s",
        JOURNEY_MODEL_WINDOW="1500",
        JOURNEY_IDLE_TIMEOUT="3s",  # once drained, the watermark follows the clock: horizons end
        JOURNEY_DEDUPE_WINDOW="400d",
    )
    w.start()
    _, records = simulate(30_000, seed=2024, now_ms=int(time.time() * 1000), days=60, upsell_signal=upsell_signal)
    sent = publish(records, bootstrap_servers=w.settings.bootstrap_servers, topic=w.settings.touchpoints_topic,
                   rate=0, progress=False)
    wait_for(lambda: w.get("/worker/stats")[1]["consumed"] >= sent.sent, 240, "the simulation to be consumed")

    def settled() -> dict | None:
        _, model = w.get("/model")
        last = getattr(settled, "last", None)
        settled.last = model["examples_learned"]  # type: ignore[attr-defined]
        return model if model["examples_learned"] > 2000 and model["examples_learned"] == last else None

    model = wait_for(settled, 120, "the learner to catch up")
    w.stop()
    return model


def test_the_model_finds_the_planted_upsell_signal_and_nothing_without_it(worker_factory, tmp_path):
    with_signal = _learn_from_simulation(worker_factory, tmp_path, upsell_signal=True)
    without = _learn_from_simulation(worker_factory, tmp_path, upsell_signal=False)
    for name, m in (("planted signal", with_signal), ("no signal", without)):
        print(name, {k: m[k] for k in ("examples_learned", "roc_auc", "log_loss")}, "recent", m["recent"])
    # Measured here: 0.61 and 0.51 over the last 1,500 labels (seeded data; the batch timing of the
    # replay moves them by about ±0.02). A model that knew the rule exactly would score about 0.70.
    assert with_signal["recent"]["roc_auc"] > 0.57
    assert abs(without["recent"]["roc_auc"] - 0.5) < 0.06
    assert with_signal["recent"]["roc_auc"] - without["recent"]["roc_auc"] > 0.05
