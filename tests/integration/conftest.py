"""Integration fixtures: the real Kafka and Redis from `journey stack up`, a real worker process.

Each test module gets its own topics, consumer group, Redis key prefix and web port, so
modules never see each other's data. Nothing here skips: a missing stack is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from streams.settings import Settings

T = TypeVar("T")
ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll until ``check`` returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")


@pytest.fixture(scope="session")
def stack() -> Settings:
    """The running local stack; fails (never skips) with a hint when it is not up."""
    settings = Settings()
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {settings.redis_url} ({exc}); run `journey stack up` first")
    try:
        KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=10_000).close()
    except Exception as exc:
        pytest.fail(f"Kafka is not reachable at {settings.kafka_bootstrap} ({exc}); run `journey stack up` first")
    return settings


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

    def start(self) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: self.get("/healthz")[0] == 200, 60, f"the worker to be healthy (log: {self.log_path})")

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
        status, body = self.get(f"/customers/{customer_id}")
        return body if status == 200 else None

    def wait_customer(self, customer_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict:
        return wait_for(
            lambda: (c := self.customer(customer_id)) and check(c) and c,
            timeout,
            f"customer {customer_id} to match (log: {self.log_path})",
        )

    def dead_letters(self, expected: int, timeout: float = 30) -> list[Any]:
        """Read the DLQ topic from the start until ``expected`` messages have arrived."""
        return read_topic(self.settings, self.settings.dlq_topic, at_least=expected, timeout=timeout, settle=0)


def read_topic(settings: Settings, topic: str, *, at_least: int, timeout: float = 60, settle: float = 3.0) -> list[Any]:
    """Every message on ``topic`` from the start: wait for ``at_least``, then ``settle`` seconds more
    (so that a message that should not be there has time to show up)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    settled_at = None
    try:
        while time.monotonic() < deadline:
            got.extend(consumer)
            if len(got) >= at_least:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle:
                    break
    finally:
        consumer.close()
    return got


def _cleanup(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}:*", count=10_000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        topics = [settings.touchpoints_topic, settings.dlq_topic, settings.alerts_topic, settings.erasure_topic]
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
            "JOURNEY_REDIS_PREFIX": f"jt:test:{suffix}",
            "JOURNEY_WEB_PORT": str(free_port()),
            "JOURNEY_TOPIC_PARTITIONS": "2",
            "JOURNEY_BATCH_WITHIN": "0.02",
            "JOURNEY_MODEL_KEY": "integration-test-model-key",
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

    Keyword arguments are extra environment variables, e.g. ``JOURNEY_IDLE_TIMEOUT="1h"``.
    """
    made: list[WorkerProcess] = []

    def make(**overrides: str) -> WorkerProcess:
        tmp = tmp_path_factory.mktemp("worker")
        env = make_worker_env(stack, tmp, **overrides)
        w = WorkerProcess(settings_of(env), env, tmp / "worker.log")
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()
        w.producer.close()
        _cleanup(w.settings)


@pytest.fixture(scope="module")
def worker(worker_factory: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A running worker for this test module."""
    w = worker_factory()
    w.start()
    return w
