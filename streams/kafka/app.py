"""The Faust app: topics, agents, timers and views wired to the service. No domain logic here."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.journey_map import JourneyMap
from models.privacy import pseudonym
from streams.http.views import register_views
from streams.journey_file import load_journey_map
from streams.kafka.sinks import KafkaDeadLetters, OutboxPublisher
from streams.kafka.transport import BatchSchema
from streams.ops.metrics import WorkerMetrics
from streams.service.handler import Rewind
from streams.service.pipeline import Pipeline, limits_of
from streams.service.ports import SourceRecord
from streams.service.spend import SpendFeed
from streams.service.status import WorkerStatus
from streams.settings import Settings, faust_variables_set
from streams.state.clv_store import RedisClvStore
from streams.state.connect import connect, ping_all
from streams.state.keys import Keys
from streams.state.model_store import RedisModelStore
from streams.state.redis_store import RedisStore

log = logging.getLogger("journey.worker")

# Redis or Kafka being down must not lose events or crash the worker: the batch is retried (it
# is idempotent) with a capped backoff, holding the partition, as Kafka Streams does.
RETRYABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, RedisError, KafkaError)
EXIT_REWIND = 75  # EX_TEMPFAIL: restart me (see `Rewind`)


class RawProducer:
    """An aiokafka producer of the worker's own (acks=all, idempotent), for record batches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: Any = None
        self.lock = asyncio.Lock()

    async def get(self) -> Any:
        """The producer, started on first use."""
        async with self.lock:
            if self.producer is None:
                from aiokafka import AIOKafkaProducer

                producer = AIOKafkaProducer(
                    bootstrap_servers=",".join(self.settings.bootstrap_servers), acks="all",
                    enable_idempotence=True, max_batch_size=1024 * 1024, max_request_size=2 * 1024 * 1024,
                )
                await producer.start()
                self.producer = producer
        return self.producer

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


class KafkaControl:
    """Control records (erasure requests) to one partition of the touchpoints topic."""

    def __init__(self, app: faust.App, topic: str) -> None:
        self.app = app
        self.topic = topic

    async def send_control(self, partition: int, key: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent = await self.app.producer.send(self.topic, key.encode(), value, partition=partition, timestamp=None,
                                            headers=headers)
        await sent


def create_app(settings: Settings, journey: JourneyMap | None = None) -> faust.App:
    """Build the Faust app for these settings (loads and validates the journey map)."""
    journey = journey or load_journey_map(settings.map)
    (settings.home / "faust-data").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url.replace("kafka://", "kafka+batch://"),
        store="memory://",
        datadir=str(settings.home / "faust-data"),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=2 * 1024 * 1024,
        broker_commit_interval=settings.commit_interval,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 3),
        broker_max_poll_records=settings.batch_size,  # a batch: what one fetch returns, at most this many
        stream_buffer_maxsize=64,
        env={},  # Faust's own environment variables (WEB_BIND, BROKER_URL, ...) must not override ours
    )
    app.web.blueprints._enabled = []  # Faust's own pages expose internals; this worker serves its own
    keys = Keys(settings.redis_prefix)
    redis = connect(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    store = RedisStore(redis, keys, pseudonym_key=settings.pseudonym_secret())
    models = RedisModelStore(redis, keys, model_key=settings.model_secret())
    raw = RawProducer(settings)  # dead letters and alerts: a raw aiokafka producer (alerts in record batches)
    dead_letters = KafkaDeadLetters(raw.get, settings.dlq_topic)
    pipeline = Pipeline(
        settings, journey, store=store, models=models, clv_store=RedisClvStore(redis, keys),
        dead_letters=dead_letters, control=KafkaControl(app, settings.touchpoints_topic), retryable=RETRYABLE,
    )
    pipeline.is_leader = app.is_leader
    publisher = OutboxPublisher(store, raw.get, settings.alerts_topic, touchpoints_topic=settings.touchpoints_topic,
                                pseudonym=lambda cid: pseudonym(pipeline.pseudonym_key, cid))
    pipeline.publisher = publisher
    status = WorkerStatus(pipeline, publisher, ping_redis=lambda: ping_all(redis),
                          lag=lambda: _lag(app, settings, pipeline))
    metrics = WorkerMetrics(status)
    status.exposition = metrics.exposition
    pipeline.observers.append(metrics.observe_batch)
    app.journey_status = status  # type: ignore[attr-defined]

    touchpoints = app.topic(settings.touchpoints_topic, schema=BatchSchema(), maxsize=16)  # batches, not records

    async def batch_positions(tps: list[TP]) -> dict[TP, int]:
        # On assignment: claim the partitions (fencing out their earlier owner) and resume each
        # where the store says it is, not where Kafka's committed offsets are.
        await store.set_partitions(await _partitions(app, settings))
        ours = {tp.partition: tp for tp in tps if tp.topic == settings.touchpoints_topic}
        positions = await pipeline.assign(sorted(ours))
        for p in positions:
            publisher.request({p})  # publish what an earlier owner committed and did not publish
        return {ours[p]: offset for p, offset in positions.items()}

    app.batch_positions = batch_positions  # type: ignore[attr-defined]

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def on_revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:  # noqa: ARG001
        pipeline.revoke([tp.partition for tp in revoked if tp.topic == settings.touchpoints_topic])

    @app.agent(touchpoints, name="advance_journeys")
    async def advance_journeys(stream: Any) -> None:
        async for batch in stream:
            records = [
                SourceRecord(r.key, r.value, r.topic, r.partition, r.offset, r.timestamp, dict(r.headers or ()))
                for r in batch
            ]
            try:
                await pipeline.process(records)
            except Rewind as exc:
                # The store lost writes this worker had made (a Redis crash without its last second of
                # AOF): start again from the store's offset, which a restart does.
                log.critical("%s; stopping so that a restart resumes there", exc)
                app._crash_reason = exc  # type: ignore[attr-defined]
                await app.crash(exc)

    erasures = app.topic(settings.erasure_topic, key_serializer="raw", value_serializer="raw")

    @app.agent(erasures, name="erase_customers")
    async def erase_customers(stream: Any) -> None:
        # value: {"customer_id": "...", "requested_by": "..."} (or just the key = customer id)
        async for event in stream.events():
            try:
                body = orjson.loads(event.message.value) if event.message.value else {}
            except orjson.JSONDecodeError:
                body = {}
            body = body if isinstance(body, dict) else {}
            key = event.message.key.decode(errors="replace") if event.message.key else None
            customer_id = body.get("customer_id") or key
            if not isinstance(customer_id, str) or not customer_id:
                log.error("erasure request at offset %d names no customer; skipped", event.message.offset)
                continue
            requester = str(body.get("requested_by", "unknown"))
            await pipeline.erase(customer_id, requested_by=f"topic {settings.erasure_topic}: {requester}", wait_s=0)

    spend_feed = SpendFeed(store, dead_letters, limits_of(settings), retryable=RETRYABLE)
    spend = app.topic(settings.spend_topic, key_serializer="raw", value_serializer="raw")

    @app.agent(spend, name="apply_spend")
    async def apply_spend(stream: Any) -> None:
        # key <channel>|<day>, value {"channel", "day", "amount", "currency"} (models/spend.py). Acks
        # are manual: a record is acked (its offset may be committed) only once it was applied or its
        # dead letter acknowledged, never because the agent stopped half-way through it.
        manual = stream.noack()
        async for event in manual.events():
            m = event.message
            ts_ms = int(m.timestamp * 1000) if m.timestamp is not None else None
            await spend_feed.handle(SourceRecord(m.key, m.value, m.topic, m.partition, m.offset, ts_ms,
                                                 dict(m.headers or ())))
            await manual.ack(event)

    @app.task
    async def publish_outbox() -> None:
        await publisher.run()

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def _stop_raw_producer(app: faust.App, **kwargs: Any) -> None:  # noqa: ARG001
        await raw.stop()

    @app.timer(interval=settings.deadline_check_interval, on_leader=False)
    async def idle_partitions() -> None:
        try:
            await pipeline.idle()
        except RETRYABLE as exc:
            log.warning("idle check skipped, Redis unavailable: %s", exc)

    @app.timer(interval=1.0, on_leader=True)
    async def learn_propensity() -> None:
        # The leader is the one learner; examples come from every partition's stream.
        if pipeline.scoring_enabled:
            try:
                await pipeline.learn()
            except RETRYABLE as exc:
                log.warning("propensity learning paused, Redis unavailable: %s", exc)

    @app.timer(interval=settings.model_reload_interval, on_leader=False)
    async def refresh_model() -> None:
        if pipeline.scoring_enabled:
            try:
                await pipeline.refresh_model()
            except RETRYABLE as exc:
                log.warning("could not refresh the propensity model: %s", exc)

    @app.timer(interval=5.0, on_leader=False)
    async def reload_map() -> None:
        if pipeline.reload_map_if_changed():
            status.journey = pipeline.journey

    @app.timer(interval=settings.clv_refit_interval, on_leader=True)
    async def refit_clv() -> None:
        # One worker (the leader) refits, as of the stream's time; everyone picks the new version up below.
        try:
            result = await pipeline.clv.refit()
            log.info("CLV model refit: %s", {k: result.get(k) for k in ("model", "version", "n_customers", "as_of")})
        except RETRYABLE as exc:
            log.warning("CLV refit skipped, Redis unavailable: %s", exc)

    @app.timer(interval=60.0, on_leader=False)
    async def load_clv() -> None:
        try:
            await pipeline.clv.load()
        except RETRYABLE as exc:
            log.warning("could not load the CLV model: %s", exc)

    @app.task  # a task runs once the worker has set up logging (on_after_configured ran before: lost)
    async def announce() -> None:
        ignored = faust_variables_set()
        if ignored:
            log.warning("ignoring Faust's own environment variables %s: the worker is configured by JOURNEY_ "
                        "variables only", ", ".join(ignored))
        log.info("journey worker: %s -> Redis %s, map %s, web http://%s:%d", settings.touchpoints_topic,
                 settings.redis_url, settings.map, settings.web_host, settings.web_port)

    register_views(app, status)
    return app


async def _partitions(app: faust.App, settings: Settings) -> int:
    """The touchpoints topic's partition count (from the consumer's metadata)."""
    parts = app.consumer._thread._ensure_consumer().partitions_for_topic(settings.touchpoints_topic)  # noqa: SLF001
    return len(parts) if parts else settings.topic_partitions


def _lag(app: faust.App, settings: Settings, pipeline: Pipeline) -> dict[int, int]:
    lag: dict[int, int] = {}
    try:
        assigned = app.consumer.assignment()
    except ConsumerNotStarted:
        return lag
    for tp in assigned:
        if tp.topic != settings.touchpoints_topic:
            continue
        high = app.consumer.highwater(tp)
        if high is not None:
            lag[tp.partition] = max(0, high - pipeline.offsets.get(tp.partition, -1) - 1)
    return lag
