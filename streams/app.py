"""The Faust application: topics, the touchpoints agent and the worker's web views."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import faust
import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.alerts import render
from models.journey import JourneyState
from models.journey_map import JourneyMap
from models.watermark import PartitionClock, Watermarks
from streams.clv_model import ClvModels, customer_value
from streams.erasure import erase_customer, pseudonym
from streams.journey_file import MapFileError, load_journey_map
from streams.journey_store import RedisJourneyStore
from streams.metrics import WorkerMetrics
from streams.pipeline import BatchResult, DeadLetter, Limits, PipelineStats, SourceRecord, advance_journeys
from streams.propensity_store import PropensityStore
from streams.settings import Settings
from streams.upsell import Learner, Scorer
from streams.web import register_views

log = logging.getLogger("journey.worker")

# Redis being down must not lose events or crash the worker: the batch is retried
# (it is idempotent) with a capped backoff, holding the partition, as Kafka Streams does.
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_MAX_BACKOFF_S = 5.0


class KafkaDeadLetters:
    """Dead letters to the DLQ topic: original key and bytes, reason and source in headers."""

    def __init__(self, topic: faust.TopicT) -> None:
        self.topic = topic

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        pending = []
        for letter in letters:
            pending.append(
                await self.topic.send(
                    key=letter.record.key,
                    value=letter.record.value,
                    headers=letter.headers(),
                    force=True,  # send now, not attached to the current event
                )
            )
        # Wait for the broker's ack: the source offset is committed only after this returns.
        await asyncio.gather(*pending)


class KafkaAlerts:
    """Publishes the store's alert outbox to the alerts topic, then acknowledges it.

    A crash between publishing and acknowledging republishes the same facts, so a
    downstream tool may see the same ``alert_id`` twice but never two different alerts
    for one stall. One drain per partition at a time.
    """

    def __init__(self, topic: faust.TopicT, worker: Worker) -> None:
        self.topic = topic
        self.worker = worker
        self.store = worker.store
        self.locks: dict[int, asyncio.Lock] = {}
        self.emitted: dict[str, int] = {}
        self.requested: set[int] = set()
        self.wakeup = asyncio.Event()
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)  # for the dashboard, pseudonymised

    def request(self, partitions: set[int]) -> None:
        """Ask the publishing task to drain these partitions' outboxes soon."""
        self.requested |= partitions
        self.wakeup.set()

    async def run(self) -> None:
        """The publishing task: drain what was requested, forever. Errors are logged and retried."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            partitions, self.requested = self.requested, set()
            for p in sorted(partitions):
                try:
                    await self.drain(p)
                except Exception:  # the outbox keeps the facts: retry on the next request
                    self.worker.stats.kafka_errors += 1
                    log.exception("publishing alerts of partition %d failed; will retry", p)
                    self.requested.add(p)
                    await asyncio.sleep(1.0)
                    self.wakeup.set()

    async def drain(self, partition: int) -> int:
        lock = self.locks.setdefault(partition, asyncio.Lock())
        sent = 0
        async with lock:
            while facts := await self.store.outbox(partition, limit=500):
                now_ms = int(time.time() * 1000)
                customers = list(dict.fromkeys(f.customer_id for f in facts))
                states = await self.store.get_many(customers)
                # one CLV computation per customer in the batch, not per alert
                clv = {cid: self.worker.value_of(st, now_ms) for cid, st in states.items()}
                bodies = [render(f, emitted_at_ms=now_ms, extra={"clv": clv.get(f.customer_id)}) for f in facts]
                # Straight to the producer (Faust's Topic.send costs several times more per message);
                # the broker's acks are awaited before the outbox is acknowledged.
                producer = self.topic.app.producer
                pending = [
                    await producer.send(self.topic.get_topic_name(), f.customer_id.encode(), orjson.dumps(b),
                                        partition=None, timestamp=None, headers=None)
                    for f, b in zip(facts, bodies, strict=True)
                ]
                await asyncio.gather(*pending)
                await self.store.ack_outbox(partition, len(facts))
                sent += len(facts)
                for f in facts:
                    label = f"{f.type.value}:{f.status.value}"
                    self.emitted[label] = self.emitted.get(label, 0) + 1
                for body in bodies[-self.recent.maxlen :]:  # type: ignore[misc]
                    alias = pseudonym(body["customer_id"])
                    self.recent.appendleft(
                        {k: v for k, v in body.items() if k not in ("customer_id", "clv", "reason")}
                        | {"customer": alias, "reason": body["reason"].replace(body["customer_id"], alias)}
                    )
        return sent


class Worker:
    """Everything one worker process holds: settings, journey map, Redis, watermarks, counters."""

    def __init__(self, settings: Settings, journey: JourneyMap) -> None:
        self.settings = settings
        self.journey = journey
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.store = RedisJourneyStore(
            self.redis,
            journey,
            prefix=settings.redis_prefix,
            dedupe_window_ms=int(settings.dedupe_window * 1000),
            path_length=settings.path_length,
            value_days_kept=max(settings.windows),
            attribution_lookback_ms=int(settings.attribution_lookback * 1000),
            attribution_half_life_ms=int(settings.attribution_half_life * 1000),
        )
        self.limits = Limits(
            settings.max_payload_bytes, int(settings.max_future_skew * 1000), settings.currency, settings.rates
        )
        self.watermarks = Watermarks(
            allowed_lateness_ms=int(settings.allowed_lateness * 1000),
            idle_timeout_ms=int(settings.idle_timeout * 1000),
        )
        self.stats = PipelineStats()
        self.started_at = time.time()
        self.alerts: KafkaAlerts | None = None
        self.map_mtime = settings.map.stat().st_mtime if settings.map.exists() else None
        self.clv = ClvModels(self.redis, settings.redis_prefix)
        self.offsets: dict[int, int] = {}  # last offset read per touchpoints partition
        self.propensity = PropensityStore(
            self.redis,
            journey.propensity,
            prefix=settings.redis_prefix,
            model_key=settings.model_secret(),
            early_positives=settings.model_learn_positives == "at_upsell",
            alert_min_examples=settings.model_alert_min_examples,
        )
        self.scorer = Scorer(self.propensity, journey, kind=settings.model_kind, channels=settings.channels)
        self.learner = Learner(
            self.propensity,
            kind=settings.model_kind,
            checkpoint_examples=settings.model_checkpoint_examples,
            checkpoint_interval_s=settings.model_checkpoint_interval,
            window=settings.model_window,
        )
        self._learning = asyncio.Lock()
        self.is_leader: Callable[[], bool] = lambda: False  # the app's leader election, set by create_app
        self.model_report: dict[str, Any] | None = None  # the newest snapshot's report, for the metrics
        self.predictions_pending: int | None = None
        self.metrics = WorkerMetrics(self)  # last: it reads the attributes above when registered

    @property
    def scoring_enabled(self) -> bool:
        return bool(self.journey.propensity.score_after)

    def value_of(self, state: JourneyState, now_ms: int | None = None) -> dict[str, Any]:
        """The customer's `clv` figures with the newest model."""
        s = self.settings
        return customer_value(
            state,
            self.clv,
            now_ms=now_ms or int(time.time() * 1000),
            windows=s.windows,
            horizon_days=s.clv_horizon / 86400,
            margin=s.clv_margin,
            annual_discount_rate=s.clv_discount_rate,
        )

    def reload_map_if_changed(self) -> bool:
        """Use the map file's new contents if it changed and is valid; keep the old map otherwise."""
        try:
            mtime = self.settings.map.stat().st_mtime
        except OSError:
            return False
        if mtime == self.map_mtime:
            return False
        self.map_mtime = mtime
        try:
            journey = load_journey_map(self.settings.map)
        except MapFileError as exc:
            log.error("journey map changed but is invalid; keeping the previous one:\n%s", exc)
            return False
        self.journey = journey
        self.store.use_map(journey)
        self.scorer.use_map(journey)
        self.propensity.spec = journey.propensity
        path = " -> ".join(journey.critical_path)
        log.info("journey map reloaded from %s (critical path: %s)", self.settings.map, path)
        return True

    async def erase(self, customer_id: str, *, requested_by: str) -> bool:
        """Forget a customer in Redis, then publish a tombstone (key = customer id, null value)
        to the alerts topic so downstream tools forget them too."""
        await self.propensity.erase(customer_id)
        erased = await erase_customer(self.store, customer_id, requested_by=requested_by)
        if self.alerts:
            sent = await self.alerts.topic.send(key=customer_id.encode(), value=None, force=True)
            await sent
        return erased

    @property
    def watermarks_key(self) -> str:
        return f"{self.settings.redis_prefix}:watermarks"

    async def restore_watermarks(self, partitions: set[int]) -> None:
        """Resume partitions' watermarks from Redis, so a restart or rebalance never moves them back."""
        missing = sorted(p for p in partitions if p not in self.watermarks.partitions)
        if not missing:
            return
        for p, raw in zip(missing, await self.redis.hmget(self.watermarks_key, missing), strict=True):
            if raw:
                high, _, mark = raw.decode().partition(",")
                self.watermarks.restore(p, int(high), int(mark))
            else:
                self.watermarks.partitions.setdefault(p, PartitionClock())

    async def save_watermarks(self, partitions: set[int]) -> None:
        clocks = {p: self.watermarks.partitions[p] for p in partitions if p in self.watermarks.partitions}
        if clocks:
            await self.redis.hset(
                self.watermarks_key, mapping={p: f"{c.high_ms},{c.watermark_ms}" for p, c in clocks.items()}
            )

    async def check_deadlines(self, partitions: set[int]) -> int:
        """Fire due deadlines of the partitions this worker owns, then publish their alerts."""
        await self.restore_watermarks(partitions)
        now_ms = int(time.time() * 1000)
        fired = 0
        for p in sorted(partitions):
            watermark = self.watermarks.current(p, now_ms)
            fired += await self.store.check_deadlines(p, watermark)
            if self.scoring_enabled:
                await self.propensity.record(p, [], [], watermark)  # horizons the watermark passed
            if self.alerts:
                self.alerts.request({p})
        await self.save_watermarks(partitions)
        return fired

    async def process(self, records: Sequence[SourceRecord], dead_letters: KafkaDeadLetters) -> BatchResult:
        """Apply one batch, retrying on Redis outages until it succeeds."""
        backoff = 0.1
        partitions = {r.partition for r in records}
        while True:
            try:
                await self.restore_watermarks(partitions)
                result = await advance_journeys(
                    records,
                    journey=self.journey,
                    store=self.store,
                    dead_letters=dead_letters,
                    limits=self.limits,
                    watermarks=self.watermarks,
                    now_ms=int(time.time() * 1000),
                )
                await self.save_watermarks(partitions)
            except _RETRYABLE as exc:
                self.stats.redis_errors += 1
                log.warning("Redis unavailable (%s); retrying the batch in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            except RedisError:
                log.exception("Redis refused the batch; retrying in %.1fs", _MAX_BACKOFF_S)
                self.stats.redis_errors += 1
                await asyncio.sleep(_MAX_BACKOFF_S)
            else:
                if self.scoring_enabled:
                    await self.score(result)
                if self.alerts:
                    self.alerts.request(partitions)  # published by the alerts task, off this path
                self.stats.record(len(records), result)
                self.metrics.observe_batch(records, result.applied_event_times_ms, int(time.time() * 1000))
                for r in records:
                    if r.offset >= self.offsets.get(r.partition, -1):
                        self.offsets[r.partition] = r.offset
                return result

    async def score(self, result: BatchResult) -> None:
        """Predict at the batch's scoring points and store the predictions, settling known labels.

        Runs after the batch's state is applied, retried on its own: retrying the whole batch
        would find its events already applied and the scoring points gone.
        """
        if result.scoring_points and self.is_leader():
            # The leader holds the learner: bring it up to date and score with its live model,
            # rather than with the last checkpoint (the other workers load checkpoints).
            try:
                await self.learn()
            except (*_RETRYABLE, RedisError) as exc:  # score with the model as it is; the timer learns later
                self.stats.redis_errors += 1
                log.warning("learning before scoring failed (%s); scoring with model version %d", exc,
                            self.scorer.version)
            if self.learner.snapshot is not None:
                self.scorer.use(self.learner.snapshot.model, self.learner.snapshot.version)
        predictions = self.scorer.predict(result.scoring_points)
        # Partitions with nothing scored or upsold are left to the deadline check, which settles
        # expired horizons every second: no extra script call per batch for them.
        by_partition: dict[int, list[Any]] = {p: [] for p in result.upsold}
        for point, prediction in zip(result.scoring_points, predictions, strict=True):
            by_partition.setdefault(point.partition, []).append(prediction)
        now_ms = int(time.time() * 1000)
        backoff = 0.1
        for p, batch in sorted(by_partition.items()):
            while True:
                try:
                    await self.propensity.record(p, batch, result.upsold.get(p, []), self.watermarks.current(p, now_ms))
                    break
                except (*_RETRYABLE, RedisError) as exc:
                    self.stats.redis_errors += 1
                    log.warning("storing predictions failed (%s); retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def learn(self) -> None:
        """Learn every labelled example waiting in the stream (leader only; one step at a time)."""
        async with self._learning:
            while await self.learner.step() >= self.learner.read_count:
                await asyncio.sleep(0)  # catching up on a backlog: let the agents run in between

    async def refresh_model(self) -> None:
        """Pick up a newer model snapshot for scoring, and the figures the metrics show."""
        await self.scorer.refresh()
        self.model_report = await self.propensity.report()
        owned = set(self.watermarks.partitions)
        self.predictions_pending = await self.propensity.pending(sorted(owned)) if owned else 0


def create_app(settings: Settings, journey: JourneyMap | None = None) -> faust.App:
    """Build the Faust app for these settings (loads and validates the journey map)."""
    journey = journey or load_journey_map(settings.map)
    (settings.home / "faust-data").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        store="memory://",
        datadir=str(settings.home / "faust-data"),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=settings.commit_interval,
    )
    # Faust's own pages (router, tables, its index at "/") expose internals; this worker serves its own.
    app.web.blueprints._enabled = []
    worker = Worker(settings, journey)
    app.journey_worker = worker  # type: ignore[attr-defined]
    worker.is_leader = app.is_leader

    touchpoints_topic = app.topic(
        settings.touchpoints_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    dlq_topic = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    alerts_topic = app.topic(settings.alerts_topic, key_serializer="raw", value_serializer="raw")
    dead_letters = KafkaDeadLetters(dlq_topic)
    worker.alerts = KafkaAlerts(alerts_topic, worker)

    @app.agent(touchpoints_topic, name="advance_journeys")
    async def advance_journeys_agent(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            records = [
                SourceRecord(
                    key=e.message.key,
                    value=e.message.value,
                    topic=e.message.topic,
                    partition=e.message.partition,
                    offset=e.message.offset,
                    timestamp_ms=int(e.message.timestamp * 1000) if e.message.timestamp else None,
                )
                for e in events
            ]
            await worker.process(records, dead_letters)

    @app.timer(interval=settings.deadline_check_interval, on_leader=False)
    async def check_deadlines() -> None:
        # Only the partitions this worker owns: their watermarks are the ones it knows.
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.touchpoints_topic}
        if not owned:
            return
        try:
            await worker.check_deadlines(owned)
        except _RETRYABLE as exc:
            worker.stats.redis_errors += 1
            log.warning("deadline check skipped, Redis unavailable: %s", exc)

    erasure_topic = app.topic(settings.erasure_topic, key_serializer="raw", value_serializer="raw")

    @app.agent(erasure_topic, name="erase_customers")
    async def erase_customers(stream: Any) -> None:
        # value: {"customer_id": "...", "requested_by": "..."} (or just the key = customer id)
        async for event in stream.events():
            try:
                body = orjson.loads(event.message.value) if event.message.value else {}
            except orjson.JSONDecodeError:
                body = {}
            key = event.message.key.decode() if event.message.key else None
            customer_id = body.get("customer_id") if isinstance(body, dict) else None
            customer_id = customer_id or key
            if not customer_id:
                log.error("erasure request at offset %d names no customer; skipped", event.message.offset)
                continue
            requester = body.get("requested_by", "unknown") if isinstance(body, dict) else "unknown"
            await worker.erase(customer_id, requested_by=f"topic {settings.erasure_topic}: {requester}")

    @app.task
    async def publish_alerts() -> None:
        assert worker.alerts is not None
        await worker.alerts.run()

    @app.timer(interval=1.0, on_leader=True)
    async def learn_propensity() -> None:
        # The leader is the one learner; examples come from every worker through the Redis stream.
        if not worker.scoring_enabled:
            return
        try:
            await worker.learn()
        except _RETRYABLE as exc:
            worker.stats.redis_errors += 1
            log.warning("propensity learning paused, Redis unavailable: %s", exc)

    @app.timer(interval=settings.model_reload_interval, on_leader=False)
    async def refresh_model() -> None:
        if not worker.scoring_enabled:
            return
        try:
            await worker.refresh_model()
        except _RETRYABLE as exc:
            log.warning("could not refresh the propensity model: %s", exc)

    @app.timer(interval=5.0, on_leader=False)
    async def reload_map() -> None:
        worker.reload_map_if_changed()

    @app.timer(interval=settings.clv_refit_interval, on_leader=True)
    async def refit_clv() -> None:
        # One worker (the leader) refits; everyone picks the new version up below.
        try:
            result = await worker.clv.refit()
            log.info("CLV model refit: %s", {k: result.get(k) for k in ("model", "version", "n_customers", "reason")})
        except _RETRYABLE as exc:
            log.warning("CLV refit skipped, Redis unavailable: %s", exc)

    @app.timer(interval=60.0, on_leader=False)
    async def load_clv() -> None:
        try:
            await worker.clv.load()
        except _RETRYABLE as exc:
            log.warning("could not load the CLV model: %s", exc)

    @app.on_after_configured.connect  # type: ignore[misc]
    def _announce(app: faust.App, **kwargs: Any) -> None:  # noqa: ARG001
        if settings.api_token is None:
            log.warning(
                "JOURNEY_API_TOKEN is not set: customer endpoints answer requests from this machine (loopback) only"
            )
        log.info(
            "journey worker: %s -> Redis %s, map %s, web http://%s:%d",
            settings.touchpoints_topic,
            settings.redis_url,
            settings.map,
            settings.web_host,
            settings.web_port,
        )

    register_views(app, worker)
    return app
