"""Chaos: the same records drained once without interruption and once through crashes, compared.

The crashed copy's worker is killed with SIGKILL five times mid-drain (each time between its Redis
commits and its Kafka offset commits: the commit interval is long), then Redis is killed with
SIGKILL and restarted mid-drain, then the Kafka broker. Everything the worker keeps must come out
exactly as in the uninterrupted copy: every customer's state (with its pending predictions), the
aggregates, the gap counts, the set of stall and drop-off alerts, and the propensity model (the
examples it learned and its weights). Alerts may be published again after a crash (at-least-once,
documented), never differently.

The simulator's seeded mix is the input: purchases, onboarding and upgrades (so predictions are
made and settled), about 1 % duplicates, 2 % late and 0.5 % malformed records, and half of the
customers browsing anonymously before signup (their histories merge across partitions, through
identity messages that the crashes interrupt too).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import time
from typing import Any

import pytest

from models.events import anonymous_profile
from streams.devtools import stack as local_stack
from streams.devtools.compare import outcome
from streams.devtools.simulate import simulate
from streams.settings import Settings
from streams.state.connect import connect
from streams.state.model_store import RedisModelStore
from tests.integration.conftest import ROOT, WorkerProcess, wait_for

# e.g. 20 for a longer run by hand (with --timeout=1400: it takes about 6 minutes)
WORKER_KILLS = int(os.environ.get("CHAOS_WORKER_KILLS", "5"))
CUSTOMERS = 1_000 * WORKER_KILLS  # about 5 records each: enough backlog for every disruption
SETTINGS = {
    "JOURNEY_BATCH_SIZE": "100",
    "JOURNEY_COMMIT_INTERVAL": "120s",  # a kill lands between the Redis commits and Kafka's offset commit
    "JOURNEY_IDLE_TIMEOUT": "1h",  # no idle ticks: event time alone moves the watermarks
    "JOURNEY_MODEL_CHECKPOINT_INTERVAL": "0.5s",
    "JOURNEY_MODEL_ALERT_MIN_EXAMPLES": "0",
}


def applied(w: WorkerProcess) -> int:
    """Records the store has committed, over all partitions (survives the worker's restarts)."""
    r, k = w.redis, w.keys
    return sum(int(v) + 1 for p in range(2) if (v := r.hget(k.meta(p), "offset")) is not None)


def progress_then(w: WorkerProcess, by: int, what: str) -> None:
    start = applied(w)
    wait_for(lambda: applied(w) >= start + by, 120, f"{by} more records applied before {what}")


def kill_service(name: str) -> None:
    """SIGKILL the local stack's Redis or Kafka and start it again (`journey stack up` restarts what is gone)."""
    settings = Settings()
    (service,) = [s for s in local_stack.status(settings) if s.name == name]
    assert service.running and service.pid, f"the stack's {name} is not running"
    os.kill(service.pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{service.pid}") or _zombie(service.pid), 30, f"{name} to die")
    host, port = service.address.rsplit(":", 1)
    wait_for(lambda: not _listening(host, int(port)), 30, f"{name}'s port to close")
    local_stack.up(settings, echo=lambda _line: None)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except OSError:
        return True


def learner_settled(w: WorkerProcess) -> bool:
    """The learner has learned and checkpointed every example it may learn: what is left in the
    example streams was settled at or above the lowest watermark (those wait for the clock)."""
    async def check() -> bool:
        from streams.devtools.compare import store_of

        store, redis = store_of(w.settings)
        try:
            clocks = await store.clocks()
            bound = min(c.watermark_ms for c in clocks.values())
            for p in clocks:
                if any(e.settled_ms < bound for _, e in await store.examples(p, "0-0", 100_000)):
                    return False
            return True
        finally:
            await redis.aclose()

    return asyncio.run(check())


def model_of(w: WorkerProcess) -> tuple[int, dict[str, Any]]:
    async def load() -> tuple[int, dict[str, Any]]:
        redis = connect(w.settings.redis_url)
        try:
            snap = await RedisModelStore(redis, w.keys, model_key=b"integration-test-model-key").load()
            return snap.version, dict(snap.model["LogisticRegression"].weights)
        finally:
            await redis.aclose()

    return asyncio.run(load())


@pytest.fixture(scope="module")
def records():
    # journeys starting over 45 days: the 14-day horizons of the early ones end within the stream
    # half of the customers browse anonymously until signup: their histories merge across partitions
    _, planned = simulate(CUSTOMERS, seed=29, now_ms=int(time.time() * 1000), days=45, anonymous_share=0.5)
    return list(planned)


def publish(w: WorkerProcess, records) -> None:
    for r in records:
        w.producer.send(w.settings.touchpoints_topic, key=r.key, value=r.value)
    w.producer.flush()
    w.producer.close()  # not connected when the broker is killed (kafka-python would leak its sockets)


# kafka-python drops the sockets of the connections a killed broker broke without closing them; they
# are collected (and warned about) here, not in whichever test happens to run the garbage collector next.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_crashes_of_the_worker_redis_and_the_broker_change_nothing(worker_factory, records):
    keys = sorted({r.key.decode() for r in records if r.key})
    customers = keys + [anonymous_profile(k) for k in keys]  # customers, anonymous visitors and merged markers
    calm, chaos = worker_factory(**SETTINGS), worker_factory(**SETTINGS)

    publish(calm, records)
    calm.start()
    calm.wait_drained()
    wait_for(lambda: learner_settled(calm), 60, "the uninterrupted copy's learner to settle")
    calm.stop()

    publish(chaos, records)
    chaos.start()
    step = 300  # then kill: each disruption lands mid-drain, with most of the backlog still ahead
    for i in range(WORKER_KILLS):
        progress_then(chaos, step, f"kill {i + 1}")
        assert chaos.stop(kill=True) == -signal.SIGKILL
        chaos.start()
    progress_then(chaos, step, "the Redis kill")
    kill_service("redis")
    progress_then(chaos, step, "the broker kill")
    kill_service("kafka")
    assert chaos.alive(), f"the worker died with the broker (log: {chaos.log_path})"
    chaos.wait_drained(timeout=240)
    wait_for(lambda: learner_settled(chaos), 60, "the crashed copy's learner to settle")

    expected = asyncio.run(outcome(calm.settings, customers))
    got = asyncio.run(outcome(chaos.settings, customers))
    assert len(expected["customers"]) > 0.95 * CUSTOMERS and expected["alerts"]
    def differing(part: str) -> int:
        a, b = expected[part], got[part]
        if isinstance(a, dict):
            return sum(1 for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return len(set(a) ^ set(b))

    def example() -> str:
        """The first differing customer, field by field, and the differing aggregates (for the failure message)."""
        a, b = expected["customers"], got["customers"]
        cid = next((k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)), None)
        fields = {} if cid is None else {f: (a.get(cid, {}).get(f), b.get(cid, {}).get(f))
                                         for f in (a.get(cid) or b.get(cid) or {})
                                         if (a.get(cid) or {}).get(f) != (b.get(cid) or {}).get(f)}
        aggs = {k: (expected["aggregates"].get(k), got["aggregates"].get(k))
                for k in expected["aggregates"].keys() | got["aggregates"].keys()
                if expected["aggregates"].get(k) != got["aggregates"].get(k)}
        return f"first differing customer {cid}: {fields}; aggregates: {aggs}"

    assert {part: differing(part) for part in ("customers", "aggregates", "gaps", "alerts")} == {
        "customers": 0, "aggregates": 0, "gaps": 0, "alerts": 0}, example()
    # pending predictions are part of the states compared
    assert sum(len(s["predictions"]) for s in expected["customers"].values()) > 100

    version, weights = model_of(calm)
    assert version > 0  # examples were settled and learned
    assert model_of(chaos) == (version, weights)  # no example lost or learned twice, in the same order
    gc.collect()
    # what was compared, for the record (test-output/ is kept by CI)
    (ROOT / "test-output").mkdir(exist_ok=True)
    (ROOT / "test-output" / "chaos.json").write_text(json.dumps({
        "records": len(records), "worker_kills": WORKER_KILLS, "redis_kills": 1, "broker_kills": 1,
        "customers_compared": len(expected["customers"]),
        "pending_predictions_compared": sum(len(s["predictions"]) for s in expected["customers"].values()),
        "examples_learned": version, "alerts_compared": len(expected["alerts"]),
        "alert_copies_after_crashes": got["alert_copies"], "mismatches": 0,
    }, indent=1))
