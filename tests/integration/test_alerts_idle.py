"""A partition with no traffic does not freeze alerts: after the idle timeout its watermark
follows the wall clock, and deadlines that have passed in real time fire."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import WorkerProcess, wait_for


@pytest.fixture(scope="module")
def idle_worker(worker_factory) -> WorkerProcess:
    w = worker_factory(JOURNEY_IDLE_TIMEOUT="2s", JOURNEY_ALLOWED_LATENESS="1m", JOURNEY_DEADLINE_CHECK_INTERVAL="0.2s")
    w.start()
    return w


def test_a_stall_fires_from_the_wall_clock_once_the_partition_is_idle(idle_worker: WorkerProcess):
    w = idle_worker
    two_hours_ago = int(time.time() * 1000) - 2 * 3_600_000
    # The only event anywhere: event time alone would keep the watermark two hours back.
    w.send({"event_id": "i1", "customer_id": "idler", "touchpoint": "add_to_cart", "timestamp": two_hours_ago})
    # Nothing more is published: only the wall clock can open the alert, once the partition is idle.
    alerts = wait_for(lambda: w.alerts(), 30, "the idle partition's stall alert")
    assert [(a["customer_id"], a["type"], a["status"]) for a in alerts] == [("idler", "stalled_critical_path", "open")]
    # opened at the wall-clock watermark (now - lateness - idle timeout), not at any event's time
    assert alerts[0]["elapsed_seconds"] == pytest.approx(2 * 3600 - 60 - 2, abs=30)
