"""Upsell propensity through the real Kafka and Redis.

- Scoring points are scored and stored with the batch, labels settle (positive on an upsell
  within the horizon, negative when the watermark passes it), the single learner learns each
  example once, and `/model`, the metrics, the customer lookup and `upsell_opportunity` alerts show it.
- Model snapshots are authenticated: a tampered one is refused, never replaced, and the last good
  model kept; a learner that restarts resumes where its checkpoint left off, learning nothing twice.
- A planted signal is found and an absent one is not invented, judged with bounds derived from
  the number of labels (stated false-failure rates); two workers replaying the same records learn
  the same model.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid

import orjson
import pytest
import river

from models.propensity import Example
from models.watermark import Clock
from streams.service.learner import Learner
from streams.service.ports_model import SnapshotRefused
from streams.service.scoring import Scorer
from streams.settings import Settings
from streams.state import codec
from streams.state.connect import connect
from streams.state.keys import Keys
from streams.state.model_store import SNAPSHOT_FORMAT, RedisModelStore, snapshot_mac
from tests.integration.conftest import WorkerProcess, wait_for

DAY = 86_400_000


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
        JOURNEY_IDLE_TIMEOUT="1h",
    )
    w.start()
    return w


def send_to_both_partitions(w: WorkerProcess, event: dict[str, object]) -> None:
    """The same clock event on each partition (the learner waits for the slowest partition)."""
    for p in (0, 1):
        e = {**event, "event_id": f"{event['event_id']}-{p}", "customer_id": f"{event['customer_id']}-{p}"}
        w.producer.send(w.settings.touchpoints_topic, key=str(e["customer_id"]).encode(), value=orjson.dumps(e),
                        partition=p)
    w.producer.flush()


def test_predictions_are_labelled_learned_once_and_shown_everywhere(worker: WorkerProcess):
    worker.send(
        # up: scored after the purchase and the onboarding, upgrades 3 days later: both positive
        ev("up", "u1", "purchase", 40, value=30.0),
        ev("up", "u2", "onboarding_complete", 39),
        ev("up", "u3", "upgrade", 36, value=96.0),
        # down: scored after the purchase, never upgrades: negative once the watermark is 14 days later
        ev("down", "d1", "purchase", 30, value=20.0),
        ev("down", "d1", "purchase", 30, value=20.0),  # sent twice: scored once
        # late: upgrades 20 days after the purchase, outside the 14-day horizon: negative
        ev("late", "l1", "purchase", 40, value=25.0),
        ev("late", "l2", "upgrade", 20, value=96.0),
        # recent: scored 2 days ago, still waiting for its label
        ev("recent", "r1", "purchase", 2, value=10.0),
    )
    send_to_both_partitions(worker, ev("clock", "c", "site_visit", 0))  # both watermarks reach now: labels settle
    # the learner learns what was settled below the lowest partition watermark: move it once more
    send_to_both_partitions(worker, ev("clock", "c2", "site_visit", -1 / 1440))
    worker.wait_drained()
    _, model = wait_for(
        lambda: (r := worker.get("/model"))[0] == 200 and r[1]["examples_learned"] == 4 and r, 60, "4 examples learned"
    )
    # the untrained model said 0.5 for everyone: evaluated (it had classes), 2 positives of 4
    assert model["examples_evaluated"] == 4 and model["roc_auc"] == 0.5
    assert model["predictions_pending"] == 1 and model["version"] == 4 and model["learning"] is True
    assert model["score_after"] == ["purchase", "onboarding_complete"] and model["upsell"] == ["upgrade"]
    assert model["calibration"][5] == {"bin": "0.5-0.6", "n": 4, "mean_predicted": 0.5, "observed_rate": 0.5}

    recent = worker.customer("recent")
    assert recent["propensity"]["score"] == 0.5 and recent["propensity"]["pending_labels"] == 1
    assert recent["propensity"]["scored_at"].endswith("Z") and recent["propensity"]["model_version"] == 0
    assert worker.customer("down")["propensity"]["pending_labels"] == 0

    metrics = wait_for(lambda: 'journey_model_roc_auc{window="since_start"} 0.5' in (b := _metrics(worker)) and b,
                       30, "model metrics")
    assert "journey_model_examples_learned_total 4.0" in metrics
    assert "journey_predictions_total 5.0" in metrics

    # upsell alerts: one per customer per horizon (up was scored twice within 14 days: one alert)
    upsell = sorted((a for a in worker.alerts() if a["type"] == "upsell_opportunity"), key=lambda a: a["customer_id"])
    assert [a["customer_id"] for a in upsell] == ["down", "late", "recent", "up"]
    first = upsell[3]
    assert first["touchpoint"] == "purchase" and first["next_touchpoint"] == "upgrade"
    assert first["score"] == 0.5 and first["model_version"] == 0 and first["clv"]["orders"] == 1
    assert first["expected_seconds"] == 14 * 86400 and "likely to take upgrade" in first["reason"]


def test_erasure_removes_pending_predictions(worker: WorkerProcess):
    worker.send(ev("gone", "g1", "purchase", 1, value=10.0))
    worker.wait_drained()
    assert worker.customer("gone")["propensity"]["pending_labels"] == 1
    pending_before = worker.get("/model")[1]["predictions_pending"]
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(worker.base_url + "/customers/gone", method="DELETE"))  # noqa: S310
    assert worker.get("/customers/gone")[0] == 404
    assert worker.get("/model")[1]["predictions_pending"] == pending_before - 1


def _metrics(worker: WorkerProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(worker.base_url + "/metrics", timeout=5) as r:  # noqa: S310
        return r.read().decode()


# ---- snapshots: integrity, versions, resuming -------------------------------------------------


class Streams:
    """The examples a learner reads: one real Redis stream per partition, clocks set by the test."""

    def __init__(self, redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self.marks = {0: 10**15}

    async def partitions(self) -> int:
        return 1

    async def clocks(self) -> dict[int, Clock]:
        return {p: Clock(m, m) for p, m in self.marks.items()}

    async def examples(self, partition: int, after: str, count: int) -> list[tuple[str, Example]]:
        entries = await self.redis.xrange(self.keys.examples(partition), min=f"({after}", count=count)
        return [(i.decode(), codec.decode_example(f[b"e"])) for i, f in entries]

    async def trim_examples(self, partition: int, upto: str) -> None:
        await self.redis.xtrim(self.keys.examples(partition), minid=upto, approximate=False)

    async def add(self, n: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        for i in range(n):
            x = {"a": rng.random(), "b": rng.random()}
            e = Example(i, i, i, x["a"] > 0.5, 0.5, False, 0, x)
            await self.redis.xadd(self.keys.examples(0), {"e": codec.encode_example(e)})


async def _snapshot_checks(redis_url: str) -> None:
    redis = connect(redis_url)
    keys = Keys(f"jt:test:snap:{uuid.uuid4().hex[:8]}")
    try:
        models = RedisModelStore(redis, keys, model_key=b"k1")
        streams = Streams(redis, keys)
        learner = Learner(models, streams, kind="logistic", checkpoint_examples=50, window=100, read_count=30)
        await streams.add(100)
        # 30 per step: checkpoints after 60 examples, then 40 wait unsaved
        for _ in range(4):
            await learner.step(now=0.0)
        assert learner.snapshot.version == 100 and await models.version() == 60
        # "crash": a new learner resumes from the checkpoint and learns the 40 after it, not the 60 before
        again = Learner(models, streams, kind="logistic", checkpoint_examples=1, window=100, read_count=1000)
        assert await again.step(now=0.0) == 40
        assert await models.version() == 100 and (await models.report())["examples_learned"] == 100
        # learned stream entries are trimmed once checkpointed (the last one stays as the resume point)
        assert await redis.xlen(keys.examples(0)) == 1
        # the stale learner cannot overwrite the newer snapshot (compare-and-set on the version)
        assert await learner.checkpoint() is False and learner.snapshot is None

        scorer = Scorer(models, kind="logistic")
        assert await scorer.refresh() and scorer.version == 100
        good = scorer.model

        # tampered: one byte of the pickle changed -> refused; the scorer keeps the last good model, the
        # learner stops learning (and never replaces the snapshot)
        await streams.add(10, seed=1)
        assert await again.step(now=0.0) == 10 and await models.version() == 110
        blob = bytearray(await redis.hget(keys.model, "blob"))
        blob[len(blob) // 2] ^= 0xFF
        await redis.hset(keys.model, "blob", bytes(blob))
        with pytest.raises(SnapshotRefused, match="integrity check"):
            await models.load()
        assert await scorer.refresh() is False and scorer.model is good and scorer.version == 100
        assert scorer.refused == 1
        await streams.add(5, seed=2)
        fresh = Learner(models, streams, kind="logistic", checkpoint_examples=1, window=100)
        assert await fresh.step(now=0.0) == 0 and await fresh.step(now=0.0) == 0  # stopped: learns nothing
        assert fresh.stopped and "integrity check" in fresh.stopped and fresh.refused == 1
        assert bytes(await redis.hget(keys.model, "blob")) == bytes(blob)  # untouched

        # written with another key: refused just the same
        other = RedisModelStore(redis, keys, model_key=b"another key")
        with pytest.raises(SnapshotRefused, match="another JOURNEY_MODEL_KEY"):
            await other.load()

        # foreign: correctly signed, but written by another river version -> refused before unpickling
        # (the blob is not even a pickle: unpickling it would raise something else)
        fields = [SNAPSHOT_FORMAT.encode(), b"0.0.1", b"logistic", b"200", b'{"partitions":{},"learned_until":0}',
                  b"{}", b"not a pickle"]
        await redis.hset(keys.model, mapping={
            "format": fields[0], "river": fields[1], "kind": fields[2], "version": fields[3],
            "position": fields[4], "report": fields[5], "blob": fields[6], "mac": snapshot_mac(b"k1", fields),
        })
        with pytest.raises(SnapshotRefused, match=f"foreign.*river 0.0.1.*river {river.__version__}"):
            await models.load()
        assert await scorer.refresh() is False and scorer.model is good and scorer.refused == 2

        # an operator resets it: a fresh model learns from what is left in the stream, its version a true count
        assert await models.delete()
        left = await redis.xlen(keys.examples(0))
        assert await fresh.step(now=0.0) == left and fresh.snapshot.version == left and fresh.stopped is None
    finally:
        for pattern in keys.patterns():
            async for key in redis.scan_iter(match=pattern):
                await redis.delete(key)
        await redis.aclose()


def test_snapshots_resume_without_relearning_and_refuse_tampering(stack: Settings):
    asyncio.run(_snapshot_checks(stack.redis_url))


# ---- a planted signal, judged with stated false-failure rates -----------------------------------


def journeys(customers: int, *, signal: bool, seed: int, t0: int) -> list[dict[str, object]]:
    """Customers who buy, view 0-5 products and onboard (the scoring point), some of whom upgrade
    within a week. With ``signal``, those who viewed 3 or more products upgrade 70 % of the time and
    the others 10 %; without it, everyone upgrades 40 % of the time, whatever they did."""
    rng = random.Random(seed)
    events: list[tuple[int, dict[str, object]]] = []
    for c in range(customers):
        cid, t = f"p{c:05d}", t0 + rng.randrange(90 * DAY)
        views = rng.randrange(6)
        steps = [("purchase", t, {"value": 30.0}), *(("product_view", t + (k + 1) * 60_000, {}) for k in range(views)),
                 ("onboarding_complete", t + DAY, {})]
        rate = (0.7 if views >= 3 else 0.1) if signal else 0.4
        if rng.random() < rate:
            steps.append(("upgrade", t + DAY + rng.randrange(1, 7 * DAY), {"value": 96.0}))
        for k, (tp, ts, extra) in enumerate(steps):
            events.append((ts, {"event_id": f"{cid}-{k}", "customer_id": cid, "touchpoint": tp, "timestamp": ts,
                                **extra}))
    return [e for _, e in sorted(events, key=lambda p: (p[0], str(p[1]["event_id"])))]


def auc_sd_under_chance(positives: int, negatives: int) -> float:
    """The standard deviation of the ROC AUC of scores independent of the labels (Mann-Whitney)."""
    return math.sqrt((positives + negatives + 1) / (12 * positives * negatives))


@pytest.fixture(scope="module")
def planted(worker_factory, tmp_path_factory):
    from streams.settings import DEFAULT_MAP

    path = tmp_path_factory.mktemp("map") / "journey.yaml"  # scored after onboarding only
    path.write_text(DEFAULT_MAP.read_text().replace(
        "score_after: [purchase, onboarding_complete]", "score_after: [onboarding_complete]"))
    t0 = int(time.time() * 1000) - 200 * DAY
    out = {}
    for signal in (True, False):
        events = journeys(1500, signal=signal, seed=5, t0=t0)
        workers = []
        for _ in range(2 if signal else 1):  # two workers on the same records: the same model learned
            w = worker_factory(JOURNEY_MAP=str(path), JOURNEY_MODEL_WINDOW="700", JOURNEY_IDLE_TIMEOUT="1h",
                               JOURNEY_MODEL_CHECKPOINT_INTERVAL="0.5s", JOURNEY_DEDUPE_WINDOW="400d",
                               **({"JOURNEY_TOUCHPOINTS_TOPIC": workers[0].settings.touchpoints_topic}
                                  if workers else {}))
            w.start()
            if not workers:
                live_like(w, events, t0)
            w.wait_drained()
            # every customer onboarded: 1,500 scoring points, 1,500 labels
            wait_for(lambda w=w: w.get("/model")[1]["examples_learned"] == 1500, 120, "every label learned")
            workers.append(w)
        out[signal] = workers
    return out


def live_like(w: WorkerProcess, events: list[dict[str, object]], t0: int) -> None:
    """Publish the history ten days at a time, letting the learner catch up in between, as it does on a
    live stream (a replay at full speed would score every customer before any label is known)."""
    onboarded = sorted(int(e["timestamp"]) for e in events if e["touchpoint"] == "onboarding_complete")
    sent = 0
    for day in range(10, 130, 10):
        end = t0 + day * DAY
        chunk = [e for e in events[sent:] if int(e["timestamp"]) < end]
        sent += len(chunk)
        if chunk:
            w.send(*chunk)
        # the clock reaches `end` on both partitions, then one minute more: every label due by the first
        # watermark (end - 10 min) is settled below the lowest watermark, so the learner may learn it
        for k, at in enumerate((end, end + 60_000)):
            send_to_both_partitions(w, {"event_id": f"clock{day}-{k}", "customer_id": "clock",
                                        "touchpoint": "site_visit", "timestamp": at})
        w.wait_drained()
        due = sum(1 for ts in onboarded if ts + 14 * DAY <= end - 600_000)
        wait_for(lambda w=w, due=due: w.get("/model")[1]["examples_learned"] >= due, 60,
                 f"the {due} labels due by day {day} to be learned")
    assert sent == len(events)


def positives_negatives(model: dict) -> tuple[int, int]:
    n = sum(b["n"] for b in model["calibration"])
    pos = round(sum(b["n"] * (b["observed_rate"] or 0) for b in model["calibration"]))
    return pos, n - pos


def test_an_absent_signal_is_not_invented(planted):
    (w,) = planted[False]
    model = w.get("/model")[1]
    recent = model["recent"]
    # Each score is made before its label is known, from features independent of it: the AUC is that of
    # chance, 0.5 give or take the Mann-Whitney standard deviation. Within 4 of them: a false failure about
    # 6e-5 of the time.
    pos, neg = positives_negatives(model)
    share = pos / (pos + neg)
    sd = auc_sd_under_chance(round(recent["examples"] * share), round(recent["examples"] * (1 - share)))
    assert abs(recent["roc_auc"] - 0.5) < 4 * sd, recent


def test_a_planted_signal_is_found(planted):
    w, _ = planted[True]
    model = w.get("/model")[1]
    recent = model["recent"]
    # An oracle that knows the rule scores 0.7 or 0.1: half the customers view 3+ products, so a random
    # upgrader (35 of 40 per 100 customers) outranks a random non-upgrader (15 of 60) with probability
    # 0.875·0.75 + 0.5·(0.875·0.25 + 0.125·0.75) = 0.81: the ceiling. Chance is 0.5 give or take the
    # Mann-Whitney standard deviation (0.022 for these 700 labels); the model must be more than 4 of them
    # above it. Measured: 0.68 over the last 700 labels, so a false failure needs a 4-sigma draw (~3e-5).
    pos, neg = positives_negatives(model)
    share = pos / (pos + neg)
    sd = auc_sd_under_chance(round(recent["examples"] * share), round(recent["examples"] * (1 - share)))
    assert recent["roc_auc"] > 0.5 + 4 * sd, recent


def test_two_workers_replaying_the_same_records_learn_the_same_model(planted):
    first, second = planted[True]

    async def weights(w: WorkerProcess) -> dict:
        redis = connect(w.settings.redis_url)
        try:
            snap = await RedisModelStore(redis, w.keys, model_key=b"integration-test-model-key").load()
            return dict(snap.model["LogisticRegression"].weights), snap.version
        finally:
            await redis.aclose()

    # (checkpoints come every 0.5 s: wait until each has saved all it learned)
    for w in (first, second):
        wait_for(lambda w=w: asyncio.run(weights(w))[1] == 1500, 30, "the last checkpoint")
    assert asyncio.run(weights(first)) == asyncio.run(weights(second))
