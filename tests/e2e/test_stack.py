"""The real local stack: `up` brings Kafka, Redis and the Redis Cluster up (or finds them up) and is idempotent."""

from __future__ import annotations

import socket

import pytest
from kafka.admin import KafkaAdminClient

from streams.devtools.stack import ServiceStatus, StackError, StackOptions, status, up
from streams.settings import Settings

pytestmark = pytest.mark.timeout(900)  # a first run fetches the Kafka jars with mvn


OPTIONS = StackOptions(redis_cluster=True)


def _up(settings: Settings) -> dict[str, ServiceStatus]:
    try:
        return {s.name: s for s in up(settings, OPTIONS, echo=lambda line: None)}
    except StackError as exc:
        # Fail, never skip: the message says what broke and what to do.
        pytest.fail(f"journey stack up failed: {exc}", pytrace=False)


def _redis_ping(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64)


def test_up_starts_both_services_and_is_idempotent() -> None:
    settings = Settings()
    first = _up(settings)

    assert set(first) == {"kafka", "redis", "redis-cluster"}
    for service in first.values():
        assert service.running, service
        assert service.pid is not None and service.pid > 0, service
    assert first["kafka"].address == "{}:{}".format(*settings.kafka_host_port)
    assert first["redis"].address == "{}:{}".format(*settings.redis_host_port)

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=15_000)
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()
    assert _redis_ping(*settings.redis_host_port).startswith(b"+PONG")
    for node in first["redis-cluster"].address.split(","):
        host, port = node.split(":")
        assert _redis_ping(host, int(port)).startswith(b"+PONG")

    again = _up(settings)
    assert {n: s.pid for n, s in again.items()} == {n: s.pid for n, s in first.items()}
    assert all(s.running for s in again.values())

    reported = {s.name: s for s in status(settings, OPTIONS)}
    assert reported == again
