"""The naive baseline of `journey bench`: the same journey logic, written the straightforward way.

A Faust agent takes one event at a time: decode it (orjson, the event contract's checks), then
one Redis round trip per operation — dedupe check (ZSCORE), read the state (HGETALL), write it
back (HSET), remember the id (ZADD + ZREMRANGEBYSCORE), funnel counts (HINCRBY), both deadlines
(ZADD or ZREM each), gap statistics (HINCRBY), attributed value (one HINCRBYFLOAT per share) —
publishes each alert as it is decided, and scores and learns the upsell propensity with river
(`StandardScaler | LogisticRegression`, `predict_proba_one` then `learn_one`) per event. A 1 s
timer fires due deadlines one customer at a time. Nothing is batched, nothing is atomic: this is
what the real worker is measured against, not something to run in production.

It reads the same `JOURNEY_*` settings as `journey worker` (topics, Redis prefix, web port) and
serves its counters at `/worker/stats` in the same shape. Run it as `journey bench` does:

    JOURNEY_TOUCHPOINTS_TOPIC=... JOURNEY_REDIS_PREFIX=... .venv/bin/python scripts/naive_worker.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import faust
import orjson
from redis.asyncio import Redis
from river import linear_model, optim, preprocessing

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.alerts import AlertFacts, render  # noqa: E402
from models.deadlines import Deadlines, OpenAlert, after_event, fire_due  # noqa: E402
from models.events import Invalid, decode_event  # noqa: E402
from models.journey import JourneyState, Outcome, advance, to_cents  # noqa: E402
from models.journey_map import JourneyMap  # noqa: E402
from models.propensity import features  # noqa: E402
from models.value import attribute, check_money  # noqa: E402
from streams.journey_file import load_journey_map  # noqa: E402
from streams.settings import Settings  # noqa: E402

CHANNELS = ("search", "social", "email", "display", "direct", "referral")
UPSELL = "upgrade"


def encode_state(state: JourneyState, deadlines: Deadlines) -> dict[str, bytes]:
    doc = dataclasses.asdict(state)
    doc.pop("seen")  # ids live in their own sorted set
    return {
        "state": orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS),
        "deadlines": orjson.dumps(dataclasses.asdict(deadlines)),
    }


def decode_state(raw: dict[bytes, bytes]) -> tuple[JourneyState | None, Deadlines]:
    if b"state" not in raw:
        return None, Deadlines()
    doc = orjson.loads(raw[b"state"])
    doc["path"] = tuple(tuple(p) for p in doc["path"])
    doc["value_days"] = {int(d): v for d, v in doc["value_days"].items()}
    doc["order_days"] = {int(d): v for d, v in doc["order_days"].items()}
    dl = orjson.loads(raw[b"deadlines"])
    for name in ("stall_open", "drop_open"):
        if dl[name] is not None:
            dl[name] = OpenAlert(**dl[name])
    return JourneyState(**doc), Deadlines(**dl)


class NaiveWorker:
    """Per-event journey logic with a Redis round trip per operation."""

    def __init__(self, settings: Settings, journey: JourneyMap, app: faust.App) -> None:
        self.s = settings
        self.journey = journey
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=10)
        self.p = settings.redis_prefix
        self.dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.alerts = app.topic(settings.alerts_topic, key_serializer="raw", value_serializer="raw")
        self.model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
        self.high: dict[int, int] = {}  # highest event time per partition
        self.stats: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.flow = {(a.source, a.target) for a in journey.flow.activities} if journey.flow else set()

    def watermark(self, partition: int) -> int:
        return self.high.get(partition, 0) - int(self.s.allowed_lateness * 1000)

    async def dead_letter(self, key: bytes | None, value: bytes | None, reason: str) -> None:
        await self.dlq.send(key=key, value=value, headers=[("journey.error.reason", reason.encode())])
        self.dead[reason] += 1

    async def publish(self, facts: list[AlertFacts], now_ms: int) -> None:
        for f in facts:
            body = render(f, emitted_at_ms=now_ms)
            await self.alerts.send(key=f.customer_id.encode(), value=orjson.dumps(body))
            self.stats["alerts"] += 1

    async def handle(self, key: bytes | None, value: bytes | None, partition: int) -> None:
        self.stats["consumed"] += 1
        now_ms = int(time.time() * 1000)
        j, r, p = self.journey, self.redis, self.p
        if value is None:
            return await self.dead_letter(key, value, "undecodable")
        event = decode_event(
            value,
            touchpoints=j.touchpoints,
            now_ms=now_ms,
            max_payload_bytes=self.s.max_payload_bytes,
            max_future_ms=int(self.s.max_future_skew * 1000),
        )
        if not isinstance(event, Invalid):
            event = check_money(
                event, j.value_roles.get(event.touchpoint), currency=self.s.currency, rates=self.s.rates
            )
        if isinstance(event, Invalid):
            return await self.dead_letter(key, value, event.reason.value)
        cid, tp, ts = event.customer_id, event.touchpoint, event.ts_ms
        journey_key, seen_key = f"{p}:{{{cid}}}:journey", f"{p}:{{{cid}}}:seen"
        if await r.zscore(seen_key, event.event_id) is not None:
            self.stats["duplicates"] += 1
            return None
        before, deadlines = decode_state(await r.hgetall(journey_key))
        window = int(self.s.dedupe_window * 1000)
        state, outcome = advance(
            before, event, j, dedupe_window_ms=window, path_length=self.s.path_length, value_days_kept=365
        )
        if outcome is Outcome.TOO_LATE:
            return await self.dead_letter(key, value, "too_late")
        wm = self.watermark(partition)
        facts: list[AlertFacts] = []
        if before is not None:
            deadlines, facts = fire_due(deadlines, before, j, wm)
        deadlines, more = after_event(deadlines, state, tp, ts, j)
        facts += more
        self.high[partition] = max(self.high.get(partition, 0), ts)

        await r.hset(journey_key, mapping=encode_state(state, deadlines))  # type: ignore[arg-type]
        await r.zadd(seen_key, {event.event_id: ts})
        await r.zremrangebyscore(seen_key, "-inf", f"({state.last_seen_ms - window}")
        if before is None or before.stage != state.stage:
            await r.hincrby(f"{p}:funnel", state.stage, 1)
            if before is not None:
                await r.hincrby(f"{p}:funnel", before.stage, -1)
        deadlines_key = f"{p}:deadlines:{partition}"
        for kind, due in (("s", deadlines.stall_due), ("d", deadlines.drop_due)):
            if due is None:
                await r.zrem(deadlines_key, f"{kind}|{cid}")
            else:
                await r.zadd(deadlines_key, {f"{kind}|{cid}": due})
        if len(state.path) >= 2 and (state.path[-2][1], tp) in self.flow:
            await r.hincrby(f"{p}:gaps:{ts // 86_400_000}", f"{state.path[-2][1]}>{tp}|n", 1)
        if j.value_roles.get(tp) == "order":
            touches = [t for t in state.path if t[1] not in j.value_roles]
            shares = attribute(
                touches,
                ts,
                to_cents(event.value or 0.0),
                lookback_ms=int(self.s.attribution_lookback * 1000),
                half_life_ms=int(self.s.attribution_half_life * 1000),
            )
            for model, split in shares.items():
                for (_, touch, _), share in zip(touches, split, strict=True):
                    if share:
                        await r.hincrbyfloat(f"{p}:value", f"tp|{model}|{touch}", share)
        await self.publish(facts, now_ms)

        x = features(state, ts, stages=j.stages, touchpoints=tuple(j.touchpoints), channels=CHANNELS)
        score = self.model.predict_proba_one(x).get(True, 0.0)
        self.model.learn_one(x, state.touchpoints.get(UPSELL, 0) > 0)
        await r.hset(journey_key, "propensity", score)
        self.stats["applied"] += 1
        return None

    async def check_deadlines(self, partitions: set[int]) -> None:
        now_ms = int(time.time() * 1000)
        for partition in partitions:
            wm = self.watermark(partition)
            key = f"{self.p}:deadlines:{partition}"
            for member in await self.redis.zrangebyscore(key, "-inf", wm, start=0, num=1000):
                cid = member.decode().partition("|")[2]
                journey_key = f"{self.p}:{{{cid}}}:journey"
                state, deadlines = decode_state(await self.redis.hgetall(journey_key))
                await self.redis.zrem(key, member)
                if state is None:
                    continue
                deadlines, facts = fire_due(deadlines, state, self.journey, wm)
                await self.redis.hset(journey_key, mapping=encode_state(state, deadlines))  # type: ignore[arg-type]
                await self.publish(facts, now_ms)

    def stats_body(self) -> dict[str, Any]:
        s = self.stats
        return {
            "consumed": s["consumed"],
            "applied": s["applied"],
            "duplicates": s["duplicates"],
            "dead_letters": sum(self.dead.values()),
            "dead_letters_by_reason": dict(self.dead),
            "alerts_emitted": s["alerts"],
        }


def create_app(settings: Settings) -> faust.App:
    journey = load_journey_map(settings.map)
    (settings.home / "faust-data").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        store="memory://",
        datadir=str(settings.home / "faust-data"),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval,
    )
    worker = NaiveWorker(settings, journey, app)
    touchpoints = app.topic(
        settings.touchpoints_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    @app.agent(touchpoints, name="naive_advance_journey")
    async def advance_journey(stream: Any) -> None:
        async for event in stream.events():
            m = event.message
            await worker.handle(m.key, m.value, m.partition)

    @app.timer(interval=settings.deadline_check_interval, on_leader=False)
    async def check_deadlines() -> None:
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.touchpoints_topic}
        await worker.check_deadlines(owned)

    @app.page("/worker/stats")
    class Stats(faust.web.View):
        async def get(self, request: faust.web.Request) -> faust.web.Response:  # noqa: ARG002
            return self.json(worker.stats_body())

    return app


if __name__ == "__main__":
    create_app(Settings()).Worker(loglevel="info").execute_from_commandline()
