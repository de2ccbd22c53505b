"""Integration fixtures: the real Kafka, Redis and Redis Cluster from `journey stack up --redis-cluster`,
and real worker processes.

Each test module gets its own topics, consumer group, Redis key prefix and web port, so
modules never see each other's data. Nothing here skips: a missing stack is a failure.
"Settled" is always an observable condition (the store's committed offsets reached the topic's
end, the outbox is empty), never a fixed sleep.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from redis.cluster import RedisCluster

from streams.devtools.stack import StackOptions
from streams.settings import Settings
from streams.state.connect import is_cluster_url, seeds
from streams.state.keys import Keys

T = TypeVar("T")
ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "condition", *,
             interval: float = 0.1) -> T:
    """Poll until ``check`` returns something truthy (every ``interval`` s); fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")


CLUSTER_URL = StackOptions().cluster_url
REDIS_MODES = ("single", "cluster")


def sync_redis(url: str) -> Any:
    """A blocking client for a test's own checks: one Redis or the cluster."""
    if is_cluster_url(url):
        host, port = seeds(url)[0]
        return RedisCluster(host=host, port=port)
    return redis.Redis.from_url(url)


@pytest.fixture(scope="session")
def stack() -> Settings:
    """The running local stack; fails (never skips) with a hint when it is not up."""
    settings = Settings()
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {settings.redis_url} ({exc}); run `journey stack up` first")
    try:
        sync_redis(CLUSTER_URL).ping()
    except Exception as exc:  # redis-py's cluster client raises RedisClusterException here
        pytest.fail(f"the Redis Cluster is not reachable at {CLUSTER_URL} ({exc}); "
                    "run `journey stack up --redis-cluster` first")
    try:
        KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=10_000).close()
    except Exception as exc:
        pytest.fail(f"Kafka is not reachable at {settings.kafka_bootstrap} ({exc}); run `journey stack up` first")
    return settings


def redis_url_of(stack: Settings, mode: str) -> str:
    return CLUSTER_URL if mode == "cluster" else stack.redis_url


@dataclass
class WorkerProcess:
    """A `journey worker` subprocess with its own topics, group and key prefix."""

    settings: Settings
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    producer: KafkaProducer = field(init=False)

    def __post_init__(self) -> None:
        self.producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, linger_ms=2)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self, *, ready: bool = True) -> None:
        assert not self.alive(), "this worker is already running (a second one would be orphaned)"
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: self.get("/healthz")[0] == 200, 60, f"the worker to be healthy (log: {self.log_path})")
        if ready:
            wait_for(lambda: self.get("/readyz")[0] == 200, 60, f"partitions to be assigned (log: {self.log_path})")

    @property
    def redis(self) -> Any:
        return sync_redis(self.settings.redis_url)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.redis_prefix)

    def end_offsets(self, topic: str | None = None) -> dict[int, int]:
        topic = topic or self.settings.touchpoints_topic
        consumer = KafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers)
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            consumer.close()

    def drained(self) -> bool:
        """Everything published so far is applied and committed to the store, and its alerts are
        published: the store's offset of every partition is at the topic's end, every outbox is empty,
        and the topic's end did not move meanwhile (applying a record may publish another one to the
        touchpoints topic: identity messages)."""
        r, k = self.redis, self.keys
        ends = self.end_offsets()
        for p, end in ends.items():
            offset = r.hget(k.meta(p), "offset")
            if end and (offset is None or int(offset) < end - 1):
                return False
        if any(r.llen(k.outbox(p)) for p in ends):
            return False
        return self.end_offsets() == ends

    def wait_drained(self, timeout: float = 120) -> None:
        wait_for(self.drained, timeout, f"the worker to apply everything published (log: {self.log_path})")

    def stop(self, *, kill: bool = False) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as r:  # noqa: S310
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, orjson.loads(err.read() or b"null")
        except (urllib.error.URLError, OSError):
            return 0, None

    def send(self, *values: bytes | dict[str, Any], key: bytes | None = None) -> None:
        """Publish events (dicts are JSON-encoded, keyed by their customer_id) and flush."""
        for value in values:
            if isinstance(value, dict):
                k = key if key is not None else str(value.get("customer_id", "")).encode()
                self.producer.send(self.settings.touchpoints_topic, key=k, value=orjson.dumps(value))
            else:
                self.producer.send(self.settings.touchpoints_topic, key=key, value=value)
        self.producer.flush()

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        status, body = self.get(f"/customers/{urllib.parse.quote(customer_id, safe='')}")
        return body if status == 200 else None

    def wait_customer(self, customer_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict:
        return wait_for(
            lambda: (c := self.customer(customer_id)) and check(c) and c,
            timeout,
            f"customer {customer_id} to match (log: {self.log_path})",
        )

    def dead_letters(self) -> list[Any]:
        """Every message on the DLQ topic, once everything published is applied."""
        self.wait_drained()
        return read_topic(self.settings, self.settings.dlq_topic)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert on the alerts topic (tombstones left out), once everything published is applied."""
        self.wait_drained()
        return [orjson.loads(m.value) for m in read_topic(self.settings, self.settings.alerts_topic)
                if m.value is not None]


def read_topic(settings: Settings, topic: str, *, timeout: float = 60) -> list[Any]:
    """Every message on ``topic`` now: read from the start up to its current end offsets.

    Call it once the worker is drained (:meth:`WorkerProcess.wait_drained`): nothing more can
    arrive then, so what is read is complete."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out reading {topic} up to its end offsets {ends}")
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
        return sorted(got, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def _cleanup(settings: Settings) -> None:
    client = sync_redis(settings.redis_url)
    for pattern in Keys(settings.redis_prefix).patterns():
        for key in list(client.scan_iter(match=pattern, count=10_000)):
            client.delete(key)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        topics = [settings.touchpoints_topic, settings.dlq_topic, settings.alerts_topic, settings.erasure_topic,
                  settings.spend_topic]
        admin.delete_topics([t for t in topics if t in set(admin.list_topics())])
    finally:
        admin.close()


def make_worker_env(stack: Settings, tmp: Path, **overrides: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    env.update(
        {
            "JOURNEY_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "JOURNEY_REDIS_URL": stack.redis_url,
            "JOURNEY_HOME": str(tmp),
            "JOURNEY_APP_ID": f"jt-test-{suffix}",
            "JOURNEY_TOUCHPOINTS_TOPIC": f"touchpoints-{suffix}",
            "JOURNEY_DLQ_TOPIC": f"touchpoints-dlq-{suffix}",
            "JOURNEY_ALERTS_TOPIC": f"journey-alerts-{suffix}",
            "JOURNEY_ERASURE_TOPIC": f"journey-erasures-{suffix}",
            "JOURNEY_SPEND_TOPIC": f"marketing-spend-{suffix}",
            "JOURNEY_REDIS_PREFIX": f"jt:test:{suffix}",
            "JOURNEY_WEB_PORT": str(free_port()),
            "JOURNEY_TOPIC_PARTITIONS": "2",
            "JOURNEY_MODEL_KEY": "integration-test-model-key",
            "JOURNEY_PSEUDONYM_KEY": "integration-test-pseudonym-key",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(overrides)
    return env


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("JOURNEY_").lower(): v for k, v in env.items() if k.startswith("JOURNEY_")})


@pytest.fixture(scope="module")
def worker_factory(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., WorkerProcess]]:
    """Make (not start) workers with their own topics, group, prefix and port; cleaned up at the end.

    Keyword arguments are extra environment variables, e.g. ``JOURNEY_IDLE_TIMEOUT="1h"``;
    ``redis="cluster"`` runs the worker on the Redis Cluster.
    """
    made: list[WorkerProcess] = []

    def make(redis: str = "single", **overrides: str) -> WorkerProcess:
        tmp = tmp_path_factory.mktemp("worker")
        env = make_worker_env(stack, tmp, **{"JOURNEY_REDIS_URL": redis_url_of(stack, redis), **overrides})
        w = WorkerProcess(settings_of(env), env, tmp / "worker.log")
        made.append(w)
        return w

    yield make
    for w in made:  # every process stopped first, whatever the cleanup below runs into
        w.stop()
        w.producer.close()
    for w in made:
        _cleanup(w.settings)


@pytest.fixture(scope="module")
def worker(worker_factory: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A running worker for this test module."""
    w = worker_factory()
    w.start()
    return w
