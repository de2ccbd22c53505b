"""The stack's readiness check for Kafka, on log files shaped like a real broker's."""

from __future__ import annotations

import socket

import pytest

from streams.devtools import stack


@pytest.fixture
def listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def service(tmp_path, port):
    return stack._Service("kafka", "127.0.0.1", port, tmp_path, "kafka.Kafka", "JOURNEY_KAFKA", "")


@pytest.mark.parametrize("recovery_bytes", [40_000, 9 * 2**20, 4 * 2**20 - 58 - 10])
def test_a_broker_that_logs_megabytes_of_recovery_first_is_seen_as_started(tmp_path, listening, recovery_bytes):
    # A broker recovering hundreds of partitions logs megabytes before the line; one 4 MiB read
    # missed it (found in the field: 4.3 MB of recovery lines). The last case splits the line
    # across two reads.
    s = service(tmp_path, listening)
    filler = b"[2026-11-29 16:30:01,000] INFO Deleted log for partition t-0 (kafka.log.LogManager)\n"
    body = (filler * (recovery_bytes // len(filler) + 1))[:recovery_bytes]
    s.log_file.write_bytes(body + b"[2026-11-29 16:30:09,172] INFO [KafkaRaftServer nodeId=1] Kafka Server started\n")
    assert stack._kafka_started(s)


def test_a_broker_still_recovering_is_not_started(tmp_path, listening):
    s = service(tmp_path, listening)
    s.log_file.write_bytes(b"[2026-11-29 16:30:01,000] INFO Loading logs\n" * 200_000)
    assert not stack._kafka_started(s)
