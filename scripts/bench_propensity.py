"""Cost of the propensity per scoring point: scoring (features + predict) and learning (test-then-train),
in the worker's process, and storing predictions in Redis (`propensity.lua`, batches of 500).

    .venv/bin/python scripts/bench_propensity.py [--n 20000] [--kind logistic|tree]

Needs the local Redis (`journey stack up`); uses and then deletes its own key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import orjson
from redis.asyncio import Redis
from streams.journey_store import ScoringPoint, feature_touchpoints
from streams.propensity_store import PropensityStore
from streams.simulate import CHANNELS
from streams.upsell import Scorer

from models.events import TouchpointEvent
from models.journey import JourneyState
from models.propensity import ProgressiveValidator, make_model, test_then_train
from streams.journey_file import load_journey_map
from streams.settings import DEFAULT_MAP, Settings


def points(n: int, seed: int = 1) -> list[ScoringPoint]:
    journey = load_journey_map(DEFAULT_MAP)
    rng = random.Random(seed)
    tps = feature_touchpoints(journey)
    now = 1_800_000_000_000
    out = []
    for i in range(n):
        ts = now + i * 1000
        state = JourneyState(
            f"c{i}", rng.choice(journey.stages), ts - rng.randrange(10**9), ts - rng.randrange(10**10), ts,
            rng.randrange(1, 30), touchpoints={t: rng.randrange(0, 4) for t in tps}, channel=rng.choice(CHANNELS),
            orders=rng.randrange(0, 4), gross_cents=rng.randrange(0, 30000), last_order_ms=ts - rng.randrange(10**9),
        )
        event = TouchpointEvent(f"e{i}", f"c{i}", "purchase", ts, value=10.0)
        out.append(ScoringPoint(0, event, state))
    return out


async def main(n: int, kind: str) -> None:
    settings = Settings()
    journey = load_journey_map(DEFAULT_MAP)
    redis = Redis.from_url(settings.redis_url)
    prefix = f"jt:bench:propensity:{time.time_ns()}"
    store = PropensityStore(redis, journey.propensity, prefix=prefix, model_key=b"bench")
    scorer = Scorer(store, journey, kind=kind, channels=CHANNELS)
    pts = points(n)
    # train the scorer's model a little so predictions are real ones
    warm = scorer.predict(pts[:2000])
    for p in warm:
        scorer.model.learn_one(p.features, random.random() < 0.2)

    t0 = time.perf_counter()
    predictions = scorer.predict(pts)
    score_us = (time.perf_counter() - t0) / n * 1e6

    examples = [orjson.dumps({"p": p.proba, "c": p.predicted, "v": 0, "x": p.features}) for p in predictions]
    model, validator = make_model(kind), ProgressiveValidator()
    t0 = time.perf_counter()
    for i, raw in enumerate(examples):
        pred = orjson.loads(raw)
        test_then_train(model, validator, pred["x"], i % 5 == 0, pred["p"], pred["c"])
    learn_us = (time.perf_counter() - t0) / n * 1e6

    info0 = await redis.info("cpu")
    t0 = time.perf_counter()
    for i in range(0, n, 500):
        await store.record(0, predictions[i : i + 500], [], 0)
    store_us = (time.perf_counter() - t0) / n * 1e6
    info1 = await redis.info("cpu")
    redis_us = (
        (info1["used_cpu_sys"] + info1["used_cpu_user"] - info0["used_cpu_sys"] - info0["used_cpu_user"]) / n * 1e6
    )
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=10_000)]
    for i in range(0, len(keys), 500):
        await redis.delete(*keys[i : i + 500])
    await redis.aclose()
    print(f"{kind}, {n} scoring points:")
    print(f"  score (features + predict_proba_one):        {score_us:6.1f} µs per scoring point")
    print(f"  learn (decode + evaluate + learn_one):       {learn_us:6.1f} µs per labelled example")
    print(f"  store (propensity.lua, batches of 500):      {store_us:6.1f} µs wall, {redis_us:5.1f} µs Redis CPU each")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--kind", choices=("logistic", "tree"), default="logistic")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.kind))
