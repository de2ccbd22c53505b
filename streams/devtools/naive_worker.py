"""The naive baseline of `journey bench`: the same journey rules, written the straightforward way.

A Faust agent takes one event at a time: decode it (the event contract's checks), then one Redis
round trip per operation: dedupe check (SISMEMBER), read the state (GET), write it back (SET),
remember the id (SADD), funnel counts (HINCRBY), the deadline index (ZADD or ZREM), gap
statistics and attributed value (one HINCRBY each); it publishes each alert as it is decided,
and scores and learns the upsell propensity with river (`StandardScaler | LogisticRegression`,
`predict_proba_one` then `learn_one`) per event. A 1 s timer fires due deadlines one customer at
a time. Nothing is batched, nothing is atomic: this is what the real worker is measured against,
not something to run in production.

It reads the same `JOURNEY_*` settings as `journey worker` (topics, Redis prefix, web port) and
serves its counters at `/worker/stats` in the same shape. `journey bench` runs it as
`python -m streams.devtools.naive_worker`.
"""

from __future__ import annotations

import pickle
import time
from collections import Counter
from typing import Any

import faust
import orjson
from redis.asyncio import Redis
from river import linear_model, optim, preprocessing

from models import deadlines, gaps
from models.alerts import AlertFacts, render, stamp
from models.events import Invalid, decode_event
from models.journey import JourneyState, Outcome, StateLimits, apply_event, event_digest
from models.journey_map import JourneyMap
from models.propensity import features
from models.value import attribution_increments, check_money
from streams.journey_file import load_journey_map
from streams.settings import Settings

UPSELL = "upgrade"


class NaiveWorker:
    """Per-event journey logic with a Redis round trip per operation."""

    def __init__(self, settings: Settings, journey: JourneyMap, app: faust.App) -> None:
        self.s = settings
        self.journey = journey
        self.limits = StateLimits(int(settings.dedupe_window * 1000), settings.path_length, 365)
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=10)
        self.p = settings.redis_prefix
        self.dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.alerts = app.topic(settings.alerts_topic, key_serializer="raw", value_serializer="raw")
        self.model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
        self.high: dict[int, int] = {}  # highest event time per partition
        self.stats: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()

    def watermark(self, partition: int) -> int:
        return self.high.get(partition, 0) - int(self.s.allowed_lateness * 1000)

    async def dead_letter(self, key: bytes | None, value: bytes | None, reason: str) -> None:
        await self.dlq.send(key=key, value=value, headers=[("journey.error.reason", reason.encode())])
        self.dead[reason] += 1

    async def publish(self, facts: list[AlertFacts], now_ms: int) -> None:
        for f in facts:
            body = stamp(orjson.dumps(render(f)), now_ms)
            await self.alerts.send(key=f.customer_id.encode(), value=body)
            self.stats["alerts"] += 1

    async def load(self, cid: str) -> JourneyState | None:
        raw = await self.redis.get(f"{self.p}:naive:{cid}")
        return pickle.loads(raw) if raw else None  # noqa: S301 - its own values, for a benchmark

    async def handle(self, key: bytes | None, value: bytes | None, partition: int) -> None:
        self.stats["consumed"] += 1
        now_ms = int(time.time() * 1000)
        j, r, p = self.journey, self.redis, self.p
        if value is None:
            return await self.dead_letter(key, value, "undecodable")
        event = decode_event(value, touchpoints=j.touchpoints, now_ms=now_ms,
                             max_payload_bytes=self.s.max_payload_bytes,
                             max_future_ms=int(self.s.max_future_skew * 1000))
        if not isinstance(event, Invalid):
            event = check_money(event, j.value_roles.get(event.touchpoint), currency=self.s.currency,
                                rates=self.s.rates)
        if isinstance(event, Invalid):
            return await self.dead_letter(key, value, event.reason.value)
        cid, tp, ts = event.customer_id, event.touchpoint, event.ts_ms
        seen_key = f"{p}:naive-seen:{cid}"
        if await r.sismember(seen_key, event_digest(event.event_id)):
            self.stats["duplicates"] += 1
            return None
        before = await self.load(cid)
        rank_before = j.rank_of(before.stage) if before else -1
        stage_before = before.stage if before else None
        state, outcome = apply_event(before, event, j, self.limits)
        if outcome is Outcome.TOO_LATE:
            return await self.dead_letter(key, value, "too_late")
        wm = self.watermark(partition)
        facts = deadlines.fire_due(state, j, wm) if before is not None else []
        facts += deadlines.after_event(state, tp, ts, j, watermark_ms=wm, late_grace_ms=0)
        self.high[partition] = max(self.high.get(partition, 0), ts)

        await r.set(f"{p}:naive:{cid}", pickle.dumps(state))
        await r.sadd(seen_key, event_digest(event.event_id))
        if stage_before != state.stage:
            await r.hincrby(f"{p}:naive-funnel", state.stage, 1)
            if stage_before is not None:
                await r.hincrby(f"{p}:naive-funnel", stage_before, -1)
        due = deadlines.next_deadline(state)
        if due is None:
            await r.zrem(f"{p}:naive-due:{partition}", cid)
        else:
            await r.zadd(f"{p}:naive-due:{partition}", {cid: due})
        for day, name in gaps.event_increments(state, tp, ts, j, rank_before=rank_before):
            await r.hincrby(f"{p}:naive-gaps:{day}", name, 1)
        if j.value_roles.get(tp) == "order":
            touches = [t for t in state.path if t[1] not in j.value_roles]
            for name, n in attribution_increments(
                touches, ts, round((event.value or 0.0) * 100), lookback_ms=int(self.s.attribution_lookback * 1000),
                half_life_ms=int(self.s.attribution_half_life * 1000), stage_of=j.touchpoints,
                channels=self.s.channels,
            ).items():
                await r.hincrby(f"{p}:naive-value", name, n)
        await self.publish(facts, now_ms)

        x = features(state, ts, stages=j.stages, touchpoints=tuple(j.touchpoints), channels=self.s.channels)
        score = self.model.predict_proba_one(x).get(True, 0.0)
        self.model.learn_one(x, state.touchpoints.get(UPSELL, 0) > 0)
        await r.hset(f"{p}:naive-score", cid, score)
        self.stats["applied"] += 1
        return None

    async def check_deadlines(self, partitions: set[int]) -> None:
        now_ms = int(time.time() * 1000)
        for partition in partitions:
            wm = self.watermark(partition)
            key = f"{self.p}:naive-due:{partition}"
            for member in await self.redis.zrangebyscore(key, "-inf", wm, start=0, num=1000):
                cid = member.decode()
                state = await self.load(cid)
                await self.redis.zrem(key, member)
                if state is None:
                    continue
                facts = deadlines.fire_due(state, self.journey, wm)
                await self.redis.set(f"{self.p}:naive:{cid}", pickle.dumps(state))
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
        env={},
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
