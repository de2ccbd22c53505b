"""``journey bench``: the whole pipeline measured on the real stack, against a naive baseline in the same run.

Every scenario uses fresh topics, a fresh consumer group and a fresh Redis key prefix, and
removes them afterwards, so a bench never sees (or disturbs) anyone else's data:

- ``drain``: the simulator's seeded event mix is pre-loaded into identical topic copies; then
  a real ``journey worker`` and each peer (``streams/devtools/peers.py``: the bare Faust agent,
  the batch-delivery floor, a Quix Streams app; and the naive baseline,
  ``streams/devtools/naive_worker.py``) each drain one copy from offset 0. Events/s is counted
  from each process's ``/worker/stats`` between its first processed record and the last
  (start-up excluded), CPU from ``/proc/<pid>/stat`` of the process, Redis and Kafka over the
  same window.
- ``cluster``: the same records drained by a worker on the single Redis and by one on the
  3-master Redis Cluster: customer state, aggregates and alerts must be identical; Redis CPU
  per event summed over the shards.
- ``scale``: the same backlog drained by one worker, then by two (one consumer group, a
  2-partition topic).
- ``latency``: a worker caught up on an empty topic, then a paced producer at a fixed offered
  load; broker append time to state applied, read from the worker's latency histogram.
- ``memory``: the worker's batch handler (no Kafka) applies ``--customers`` simulated customers;
  ``MEMORY USAGE`` per key kind and the ``INFO memory`` delta, per customer.
- ``deadlines``: the due-set lookup a batch makes, with 1 M customers waiting and none due, and a
  batch that fires 1,000 customers due (their alerts included).

Numbers, never assertions: the figures go to a table on stdout and to a JSON file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import platform
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.devtools import redis_cluster, stack
from streams.devtools.compare import outcome, store_of
from streams.devtools.simulate import SimRecord, publish, simulate
from streams.kafka.topics import ensure_topics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]  # a source checkout (for the git commit); the bench runs without one
SCENARIOS = ("drain", "identity", "cluster", "scale", "latency", "memory", "deadlines")
PEERS = ("faust_bare", "faust_batch", "quix", "naive")
POLL_S = 0.1
DAY_MS = 86_400_000

# What the issues ask of the pipeline on this 2-core machine (printed next to the figures).
TARGETS = {
    "events_per_s": "≥ 25,000",
    "worker_cpu": "≤ 0.040 worker, ≤ 0.015 Redis",
    "ratio_quix": "≥ 1.0×",
    "latency_p99": "p99 ≤ 100 ms",
    "bytes_per_customer": "≤ 1,024",
    "deadline_none_due": "≤ 1 ms",
    "scale": "≥ 1.8×",
    "cluster": "identical",
    "identity": "≤ 15 % fewer events/s",
}


class BenchError(RuntimeError):
    """The bench could not run or a scenario failed; the message says why and where the logs are."""


@dataclass(frozen=True)
class BenchOptions:
    """What to run and how big. ``full()`` and ``quick()`` give the two presets."""

    quick: bool = False
    events: int = 40_000  # records per drain run (each run gets an identical copy; scale twice as many)
    customers: int = 100_000  # customers tracked for the memory figure
    deadline_customers: int = 1_000_000
    pairs: int = 2  # rounds of the drain scenario (ours and every peer each drain one copy per round)
    naive_events: int = 8_000  # the naive baseline drains this many (it does a few hundred events/s)
    rate: float = 10_000.0  # offered load of the latency scenario, events/s
    low_rate: float | None = 2_000.0  # and a second, lighter load (None: only ``rate``)
    latency_seconds: float = 10.0
    seed: int = 7
    only: tuple[str, ...] = SCENARIOS
    json_path: Path = Path("bench-results/bench.json")

    @classmethod
    def preset(cls, quick: bool, **overrides: Any) -> BenchOptions:
        base = (
            cls(
                quick=True,
                events=6_000,
                naive_events=1_000,
                customers=2_000,
                deadline_customers=20_000,
                pairs=1,
                latency_seconds=1.0,
                low_rate=None,
            )
            if quick
            else cls()
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = [name for name in given.get("only", ()) if name not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return BenchOptions(**{**asdict(base), **given})


# ---------------------------------------------------------------------------------------------
# Measuring helpers


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``), None if unknown."""
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0] (field 3)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent not idle since boot (``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_per_1k(
    before: dict[str, float | None], after: dict[str, float | None], events: int, seconds: float
) -> dict[str, float | None]:
    """CPU seconds per 1,000 events of the worker(s), Redis and Kafka between two snapshots, and how
    many cores everything else on the machine kept busy meanwhile (``other_cores``: other people's
    tests, the bench's own polling excluded) — a busy machine makes every figure worse."""
    delta = {
        k: (after[k] - v) if v is not None and after[k] is not None else None  # type: ignore[operator]
        for k, v in before.items()
    }
    out: dict[str, float | None] = {
        k: 1000 * delta[k] / events if delta[k] is not None and events else None  # type: ignore[operator]
        for k in ("worker", "redis", "kafka")
    }
    parts = [delta[k] for k in ("worker", "redis", "kafka", "bench")]
    if delta["machine"] is not None and None not in parts and seconds > 0:
        out["other_cores"] = round((delta["machine"] - sum(parts)) / seconds, 3)  # type: ignore[arg-type,operator]
    else:
        out["other_cores"] = None
    return out


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> dict[str, float | None]:
    """The ``q`` quantile of a cumulative histogram ``[(upper bound, count), ..., (inf, total)]``,
    interpolated linearly inside its bucket (as Prometheus' ``histogram_quantile``); also the
    bucket's bounds, so a reader knows how exact it is.

    Examples
    --------
    >>> histogram_quantile([(0.01, 50), (0.02, 90), (0.05, 100), (math.inf, 100)], 0.99)
    {'value': 0.047, 'bucket_low': 0.02, 'bucket_high': 0.05}
    >>> histogram_quantile([(0.01, 0), (math.inf, 0)], 0.5)
    {'value': None, 'bucket_low': None, 'bucket_high': None}
    """
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return {"value": None, "bucket_low": None, "bucket_high": None}
    rank = q * total
    low, below = 0.0, 0.0
    for high, cum in buckets:
        if cum >= rank and cum > below:
            if math.isinf(high):  # beyond the last finite bound: all we know is "more than low"
                return {"value": low, "bucket_low": low, "bucket_high": None}
            value = low + (high - low) * (rank - below) / (cum - below)
            return {"value": round(value, 9), "bucket_low": low, "bucket_high": high}
        low, below = high, cum
    return {"value": low, "bucket_low": low, "bucket_high": None}


def latency_buckets(metrics_text: str, clock: str = "append_time") -> dict[float, float]:
    """Cumulative bucket counts of ``journey_processing_latency_seconds{clock=...}`` from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "journey_processing_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("clock") == clock:
                out[float(sample.labels["le"])] = sample.value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own worker on loopback
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    """One worker process (ours or the naive one) with its own port and log."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.popen.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) + f"\n(log: {self.log_path})"

    def get(self, path: str) -> tuple[int, bytes]:
        return _http(f"http://127.0.0.1:{self.port}{path}")

    def stats(self) -> dict[str, Any] | None:
        status, body = self.get("/worker/stats")
        return orjson.loads(body) if status == 200 else None

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


# ---------------------------------------------------------------------------------------------
# The bench


@dataclass
class RunSpace:
    """Topics, consumer group and key prefix of one run (deleted at the end of the bench)."""

    tag: str
    env: dict[str, str]
    settings: Settings
    produced: int = 0


@dataclass
class Bench:
    options: BenchOptions
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))

    def __post_init__(self) -> None:
        self.base = Settings()
        self.run_id = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"journey-bench-{self.run_id}-"))
        self.spaces: list[RunSpace] = []
        self.procs: list[Proc] = []
        self.finishers: list[threading.Thread] = []
        self.failed = False
        self.pids: dict[str, int | None] = {}
        self._records: dict[str, list[SimRecord]] = {}
        self.now_ms = int(time.time() * 1000)

    # -- set-up ----------------------------------------------------------------------------

    def check_stack(self) -> dict[str, Any]:
        options = stack.StackOptions(redis_cluster="cluster" in self.options.only)
        statuses = {s.name: s for s in stack.status(self.base, options)}
        missing = [name for name, s in statuses.items() if not s.running]
        if missing:
            flag = " --redis-cluster" if "redis-cluster" in missing else ""
            raise BenchError(
                f"{' and '.join(missing)} not running ({'; '.join(statuses[n].detail for n in missing)}). "
                f"Start the local stack with `journey stack up{flag}` (the cluster scenario needs the cluster; "
                "or leave it out with --only)."
            )
        self.pids = {name: s.pid for name, s in statuses.items()}
        self.cluster_url = options.cluster_url
        self.cluster_pids = [n.pid for n in redis_cluster.status(self.base.home / "stack" / "redis-cluster").nodes
                             if n.pid] if "redis-cluster" in statuses else []
        found = re.search(r"Kafka ([\w.-]+)", statuses["kafka"].detail)
        return {"kafka": found[1] if found else options.kafka_version, "pids": self.pids,
                "cluster_pids": self.cluster_pids}

    def space(self, tag: str, partitions: int = 2, topics: bool = True, redis_url: str | None = None,
              touchpoints_topic: str | None = None) -> RunSpace:
        """Fresh topics, group, prefix and port for one run; the topics are created now."""
        suffix = f"{self.run_id}-{tag}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
        env.update(
            {
                "JOURNEY_KAFKA_BOOTSTRAP": self.base.kafka_bootstrap,
                "JOURNEY_REDIS_URL": redis_url or self.base.redis_url,
                "JOURNEY_MODEL_KEY": "journey-bench",
                "JOURNEY_PSEUDONYM_KEY": "journey-bench",
                "JOURNEY_HOME": str(self.tmp / tag),
                "JOURNEY_APP_ID": f"journey-bench-{suffix}",
                "JOURNEY_TOUCHPOINTS_TOPIC": touchpoints_topic or f"bench-touchpoints-{suffix}",
                "JOURNEY_DLQ_TOPIC": f"bench-dlq-{suffix}",
                "JOURNEY_ALERTS_TOPIC": f"bench-alerts-{suffix}",
                "JOURNEY_ERASURE_TOPIC": f"bench-erasures-{suffix}",
                "JOURNEY_SPEND_TOPIC": f"bench-spend-{suffix}",
                "JOURNEY_REDIS_PREFIX": f"jt:bench:{suffix}",
                "JOURNEY_TOPIC_PARTITIONS": str(partitions),
                "PYTHONPATH": str(ROOT),
            }
        )
        settings = Settings(
            **{k.removeprefix("JOURNEY_").lower(): v for k, v in env.items() if k.startswith("JOURNEY_")}
        )
        (self.tmp / tag).mkdir(parents=True, exist_ok=True)
        if topics:
            ensure_topics(settings)
        space = RunSpace(tag, env, settings)
        self.spaces.append(space)
        return space

    def records(self, name: str, events: int, seed: int, anonymous_share: float = 0.0) -> list[SimRecord]:
        """The simulator's seeded mix, about ``events`` records (journeys over the last 14 days)."""
        if name not in self._records:
            _, pilot = simulate(500, seed=seed, now_ms=self.now_ms)
            per_customer = sum(1 for _ in pilot) / 500
            customers = max(1, round(events / per_customer))
            _, stream = simulate(customers, seed=seed, now_ms=self.now_ms, anonymous_share=anonymous_share)
            self._records[name] = list(stream)
        return self._records[name]

    def preload(self, space: RunSpace, records: list[SimRecord]) -> None:
        summary = publish(
            records,
            bootstrap_servers=self.base.bootstrap_servers,
            topic=space.settings.touchpoints_topic,
            rate=None,
            progress=False,
        )
        space.produced = summary.sent

    def proc(self, space: RunSpace, kind: str, index: int = 0) -> Proc:
        port = free_port()
        env = {**space.env, "JOURNEY_WEB_PORT": str(port)}
        if kind == "ours":
            argv = [sys.executable, "-m", "streams.cli", "worker"]
        elif kind == "naive":
            argv = [sys.executable, "-m", "streams.devtools.naive_worker"]
        elif kind in PEERS:
            argv = [sys.executable, "-m", "streams.devtools.peers", kind]
        else:
            raise BenchError(f"unknown process kind {kind!r}")
        p = Proc(f"{kind} worker {space.tag}#{index}", argv, env, self.tmp / f"{space.tag}-{kind}-{index}.log", port)
        self.procs.append(p)
        return p

    # -- one drain -------------------------------------------------------------------------

    def cpu_snapshot(self, procs: Sequence[Proc], *, cluster: bool = False) -> dict[str, float | None]:
        workers = [cpu_seconds(p.pid) for p in procs]
        if cluster:  # every shard's CPU
            shards = [cpu_seconds(pid) for pid in self.cluster_pids]
            redis = None if not shards or None in shards else sum(x for x in shards if x is not None)
        else:
            redis = cpu_seconds(self.pids.get("redis"))
        return {
            "worker": None if None in workers else sum(w for w in workers if w is not None),
            "redis": redis,
            "kafka": cpu_seconds(self.pids.get("kafka")),
            "bench": cpu_seconds(os.getpid()),
            "machine": machine_busy_seconds(),
        }

    def committed_lag(self, space: RunSpace) -> int | None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        topic = space.settings.touchpoints_topic
        tps = [TopicPartition(topic, p) for p in range(space.settings.topic_partitions)]
        admin = KafkaAdminClient(bootstrap_servers=self.base.bootstrap_servers, request_timeout_ms=10_000)
        consumer = KafkaConsumer(bootstrap_servers=self.base.bootstrap_servers)
        try:
            ends = consumer.end_offsets(tps)
            committed = admin.list_group_offsets({space.settings.app_id: tps}).get(space.settings.app_id, {})
            return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)
        except Exception:  # a lookup failure only loses this cross-check, never the figures
            return None
        finally:
            consumer.close()
            admin.close()

    def drain(
        self, space: RunSpace, kind: str, workers: int = 1, burst: list[SimRecord] | None = None,
        cluster: bool = False,
    ) -> dict[str, Any]:
        """Start ``workers`` processes and measure until every record is processed.

        Without ``burst`` the topic is already loaded and the processes start from offset 0.
        With ``burst`` (several processes) they first settle as one consumer group on the empty
        topic, then the records are published all at once: a group that forms on a loaded topic
        lets its first member drain alone for seconds until the rebalance, which is not what the
        scale figure is about.
        """
        procs = [self.proc(space, kind, i) for i in range(workers)]
        for p in procs:
            p.start()
        spawned = time.monotonic()
        if burst is not None:
            self.wait_assigned(procs, space.settings.topic_partitions)
            space.produced = asyncio.run(burst_publish(self.base, space.settings.touchpoints_topic, burst))
        produced = space.produced
        timeout = 90 + produced / 100  # generous: the naive baseline does a few hundred events/s
        t0 = c0 = cpu0 = None
        first_any = None
        while True:
            now = time.monotonic()
            if now - spawned > timeout:
                raise BenchError(f"{kind} did not drain {produced} events in {timeout:.0f}s:\n{procs[0].log_tail()}")
            for p in procs:
                p.check_alive()
            stats = [p.stats() for p in procs]
            # Records published to the topic: what the worker consumed, less the identity records its
            # own outbox added (link and merge records, and a second copy of each forwarded event).
            consumed = [s["consumed"] - s.get("identity_records", 0) - s.get("forwarded", 0) if s else 0
                        for s in stats]
            if first_any is None and any(consumed):
                first_any = now
            if t0 is None and all(consumed):
                if self.finishers:  # the previous run's processes must be gone before the window opens
                    self.settle()
                    continue
                t0, c0, cpu0 = now, sum(consumed), self.cpu_snapshot(procs, cluster=cluster)
            # Done when every published record is processed, and so is every identity record the
            # workers published to the topic themselves (none without anonymous traffic).
            published = sum(sum((s.get("identity_messages_published") or {}).values()) for s in stats if s)
            everything = sum(s["consumed"] for s in stats if s)
            if sum(consumed) >= produced and everything >= produced + published:
                t1, cpu1 = now, self.cpu_snapshot(procs, cluster=cluster)
                break
            time.sleep(POLL_S)
        if t0 is None or c0 is None or cpu0 is None:  # one process drained it all before the other got work
            raise BenchError(f"{kind}: only one of {workers} workers got any work; use more --events")
        final = [p.stats() or {} for p in procs]
        window = t1 - t0
        counted = sum(consumed) - c0
        per_1k = cpu_per_1k(cpu0, cpu1, counted, window)
        total = {k: sum(s.get(k, 0) for s in final)
                 for k in ("consumed", "applied", "duplicates", "dead_letters", "identity_records", "forwarded")}
        result: dict[str, Any] = {
            "kind": kind,
            "workers": workers,
            "partitions": space.settings.topic_partitions,
            "produced": produced,
            "startup_seconds": round((first_any or t0) - spawned, 2),
            "window_seconds": round(window, 3),
            "events_in_window": counted,
            "events_per_s": counted / window if window > 0 else None,
            "events_per_s_per_process": counted / window / workers if window > 0 else None,
            "cpu_seconds_per_1k_events": per_1k,
            **total,
            "alerts_emitted": sum(s.get("alerts_emitted", 0) for s in final),
            "accounted": total["applied"] + total["duplicates"] + total["dead_letters"] + total["identity_records"]
            + total["forwarded"] == total["consumed"] and total["consumed"] >= produced,
            "redelivered": total["consumed"] - total["identity_records"] - total["forwarded"] - produced,
            "committed_lag_after": None,  # filled in by finish()
        }
        self.finish(procs, space, result)
        return result

    def finish(self, procs: Sequence[Proc], space: RunSpace, result: dict[str, Any]) -> None:
        """Stop a finished run's processes in the background (a clean stop commits their offsets), then
        check that the group has no lag left; overlaps with the next run's start-up, never its window."""
        for p in procs:
            if p.popen is not None and p.popen.poll() is None:
                p.popen.terminate()

        def wait() -> None:
            for p in procs:
                p.stop()
            result["committed_lag_after"] = self.committed_lag(space)

        thread = threading.Thread(target=wait, name=f"finish-{space.tag}", daemon=True)
        thread.start()
        self.finishers.append(thread)

    def settle(self) -> None:
        """Wait for every finished run's processes to be gone (before a measured window starts)."""
        while self.finishers:
            self.finishers.pop().join()

    def wait_assigned(self, procs: Sequence[Proc], partitions: int, timeout: float = 90.0) -> None:
        """Until every process owns at least one partition and together they own all, twice in a row."""
        deadline = time.monotonic() + timeout
        settled = 0
        while settled < 2:
            if time.monotonic() > deadline:
                raise BenchError(f"the workers did not share the partitions within {timeout:.0f}s")
            owned = []
            for p in procs:
                p.check_alive()
                status, body = p.get("/readyz")
                owned.append(orjson.loads(body).get("assigned_partitions", []) if status in (200, 503) and body else [])
            ok = all(owned) and sorted(q for o in owned for q in o) == list(range(partitions))
            settled = settled + 1 if ok else 0
            time.sleep(0.25)

    def _say_run(self, label: str, r: dict[str, Any]) -> None:
        cpu = r["cpu_seconds_per_1k_events"]
        self.echo(
            f"   {label}: {_num(r['events_per_s'])} events/s over {r['window_seconds']:.1f}s "
            f"({r['events_in_window']:,} events; start-up {r['startup_seconds']:.1f}s); CPU s/1k events "
            f"worker {_num(cpu['worker'], 3)} redis {_num(cpu['redis'], 3)} kafka {_num(cpu['kafka'], 3)} "
            f"(other processes: {_num(cpu['other_cores'], 2)} cores); "
            f"applied {r['applied']:,} dup {r['duplicates']:,} DLQ {r['dead_letters']:,}"
        )

    # -- scenarios -------------------------------------------------------------------------

    def scenario_drain(self) -> dict[str, Any]:
        o = self.options
        records = self.records("drain", o.events, o.seed)
        naive_records = records[: o.naive_events]
        peers = [p for p in PEERS if p != "quix" or importlib.util.find_spec("quixstreams") is not None]
        rounds = []
        for i in range(o.pairs):
            rounds.append({"ours": self.space(f"ours{i}"), **{p: self.space(f"{p}{i}") for p in peers}})
        self.echo(f"== drain: pre-loading {len(records):,} records into {len(rounds) * (1 + len(peers))} topic "
                  f"copies (the naive baseline gets the first {len(naive_records):,})")
        for r in rounds:
            for kind, space in r.items():
                self.preload(space, naive_records if kind == "naive" else records)
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ("ours", *peers)}
        for i, r in enumerate(rounds):
            self.echo(f"== drain round {i + 1}/{o.pairs}: journey worker, then {', '.join(peers)}")
            for kind, space in r.items():
                run = self.drain(space, kind)
                self._say_run(f"{kind:<11}", run)
                runs[kind].append(run)
        ours = runs["ours"]
        out: dict[str, Any] = {
            "records": len(records),
            "naive_records": len(naive_records),
            "runs": runs,
            "ours_events_per_s": statistics.median([r["events_per_s"] or 0.0 for r in ours]),
            "ours_cpu_seconds_per_1k_events": _median_cpu(ours),
            "peers": {},
            "same_applied_everywhere": len({r["applied"] for r in ours}) == 1,
        }
        for kind in peers:
            measured = [r["events_per_s"] for r in runs[kind] if r["events_per_s"]]
            eps = statistics.median(measured) if measured else None
            out["peers"][kind] = {
                "events_per_s": eps,
                "cpu_seconds_per_1k_events": _median_cpu(runs[kind]),
                "ours_over_peer": out["ours_events_per_s"] / eps if eps and out["ours_events_per_s"] else None,
            }
        if "quix" not in peers:
            out["peers"]["quix"] = {"skipped": "quixstreams is not installed (pip install 'journey-tracker[bench]')"}
        # the naive baseline applied the same events as ours did from the same first records
        return out

    def scenario_identity(self) -> dict[str, Any]:
        """The cost of identity stitching: the same journeys drained with every event naming its
        customer, and with half of the customers browsing anonymously until signup (their events
        keyed by the anonymous id; the merges add link and merge records), in alternating pairs."""
        o = self.options
        known = self.records("identity-known", o.events, o.seed + 9)
        anonymous = self.records("identity-anonymous", o.events, o.seed + 9, anonymous_share=0.5)
        rounds = [(self.space(f"known{i}"), self.space(f"anon{i}")) for i in range(o.pairs)]
        self.echo(f"== identity: {len(known):,} records with customer ids only, then the same journeys with half "
                  f"of the customers anonymous before signup; {o.pairs} pair(s)")
        for a, b in rounds:
            self.preload(a, known)
            self.preload(b, anonymous)
        runs: dict[str, list[dict[str, Any]]] = {"known": [], "anonymous": []}
        for a, b in rounds:
            for label, space in (("known", a), ("anonymous", b)):
                run = self.drain(space, "ours")
                self._say_run(f"{label:<11}", run)
                runs[label].append(run)
        eps = {k: statistics.median([r["events_per_s"] or 0.0 for r in v]) for k, v in runs.items()}
        cpu = {k: _median_cpu(v) for k, v in runs.items()}
        return {
            "records": len(known),
            "runs": runs,
            "known_events_per_s": eps["known"],
            "anonymous_events_per_s": eps["anonymous"],
            "drop": 1 - eps["anonymous"] / eps["known"] if eps["known"] else None,
            "cpu_seconds_per_1k_events": cpu,
            "identity_records": [r["identity_records"] for r in runs["anonymous"]],
            "method": "events/s and CPU per published record; the identity records the worker adds are work "
            "inside the window, not counted as events",
        }

    def scenario_cluster(self) -> dict[str, Any]:
        o = self.options
        records = self.records("cluster", o.events, o.seed + 5)
        single, cluster = self.space("single"), self.space("cluster", redis_url=self.cluster_url)
        self.echo(f"== cluster: {len(records):,} records through a single Redis, then through the Redis Cluster")
        for space in (single, cluster):
            self.preload(space, records)
        r1 = self.drain(single, "ours")
        self._say_run("single Redis ", r1)
        r2 = self.drain(cluster, "ours", cluster=True)
        self._say_run("Redis Cluster", r2)
        self.settle()
        customers = sorted({rec.key.decode() for rec in records if rec.key})
        first, second = (asyncio.run(outcome(space.settings, customers)) for space in (single, cluster))
        differences = [k for k in first if k != "alert_copies" and first[k] != second[k]]
        return {
            "records": len(records),
            "single": r1,
            "cluster": r2,
            "identical": not differences,
            "differences": differences,
            "compared": {k: len(v) for k, v in first.items() if k != "alert_copies"},
            "redis_cpu_us_per_event": _us(r2["cpu_seconds_per_1k_events"]["redis"]),
            "single_redis_cpu_us_per_event": _us(r1["cpu_seconds_per_1k_events"]["redis"]),
            "shards": len(self.cluster_pids),
        }

    def scenario_scale(self) -> dict[str, Any]:
        o = self.options
        records = self.records("scale", 2 * o.events, o.seed + 3)
        one, two = self.space("scale1"), self.space("scale2")
        self.echo(
            f"== scale: {len(records):,} records burst-published once the group has settled on an empty "
            "2-partition topic: one worker process, then two"
        )
        r1 = self.drain(one, "ours", workers=1, burst=records)
        self._say_run("1 worker ", r1)
        r2 = self.drain(two, "ours", workers=2, burst=records)
        self._say_run("2 workers", r2)
        return {
            "records": len(records),
            "one": r1,
            "two": r2,
            "ratio": r2["events_per_s"] / r1["events_per_s"] if r1["events_per_s"] else None,
            "method": "workers settle as one consumer group on an empty topic, then the backlog is published "
            "in record batches (about 0.1 s per 10k records) and drained",
        }

    def scenario_latency(self) -> dict[str, Any]:
        o = self.options
        # The lighter load first: after a saturated run the worker still works off its alert backlog.
        rates = [*([o.low_rate] if o.low_rate else []), o.rate]
        sizes = [int(rate * o.latency_seconds) for rate in rates]
        records = self.records("latency", sum(sizes), o.seed + 1)
        space = self.space("latency")
        p = self.proc(space, "ours")
        p.start()
        self.wait_assigned([p], space.settings.topic_partitions)
        self.settle()
        time.sleep(1.0)  # let the first (empty) fetches and the deadline timer settle
        runs, offset = [], 0
        for rate, n in zip(rates, sizes, strict=True):
            chunk = records[offset : offset + n]
            offset += n
            self.echo(f"== latency: a caught-up worker, then {len(chunk):,} events paced at {rate:,.0f}/s")
            run = self.paced(p, space, chunk, rate)
            self.echo(
                f"   p50 {_num(run['p50_ms'], 1)} ms, p99 {_num(run['p99_ms'], 1)} ms; applied "
                f"{run['applied_during_publish_per_s']:,.0f}/s while publishing, caught up "
                f"{run['catch_up_seconds_after_publish']:.1f}s after"
            )
            runs.append(run)
        p.stop()
        main = runs[-1]
        return {
            **{k: main[k] for k in ("offered_events_per_s", "p50_ms", "p99_ms", "saturated")},
            "runs": runs,
            "method": "delta of the worker's journey_processing_latency_seconds{clock=append_time} histogram "
            "over each paced run (topic with LogAppendTime), interpolated linearly inside a bucket; the "
            "producer sends record batches every 5 ms",
        }

    def paced(self, p: Proc, space: RunSpace, records: list[SimRecord], rate: float) -> dict[str, Any]:
        """Publish ``records`` at ``rate`` to a worker's topic; latency of exactly those events."""
        before = latency_buckets(p.get("/metrics")[1].decode())
        consumed0 = (p.stats() or {}).get("consumed", 0)
        cpu0 = self.cpu_snapshot([p])
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        progress: list[tuple[float, int]] = []  # (seconds since start, events processed) while publishing
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.25):
                progress.append((time.monotonic() - started, (p.stats() or {}).get("consumed", 0) - consumed0))

        watcher = threading.Thread(target=watch, name="latency-watch", daemon=True)
        watcher.start()
        try:
            sent = asyncio.run(burst_publish(self.base, space.settings.touchpoints_topic, records, rate=rate))
        finally:
            done.set()
            watcher.join()
        published = time.monotonic()
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        # Throughput over the last three quarters of the publishing window: below the offered load,
        # the backlog (and the latency) grows for as long as the load lasts.
        steady = [(t, n) for t, n in progress if t >= 0.25 * (published - started)]
        steady_rate = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0]) if len(steady) > 1 else None
        at_publish_end = (p.stats() or {}).get("consumed", 0) - consumed0
        deadline = time.monotonic() + 60 + sent / 500
        while (p.stats() or {}).get("consumed", 0) - consumed0 < sent:
            p.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"the worker did not catch up with the paced load:\n{p.log_tail()}")
            time.sleep(POLL_S)
        caught_up = time.monotonic()
        cpu1 = self.cpu_snapshot([p])
        after = latency_buckets(p.get("/metrics")[1].decode())
        delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
        quantiles = {f"p{round(q * 100)}": histogram_quantile(delta, q) for q in (0.5, 0.9, 0.99)}
        per_1k = cpu_per_1k(cpu0, cpu1, sent, caught_up - started)
        return {
            "offered_events_per_s": rate,
            "sent": sent,
            "publish_seconds": round(published - started, 3),
            "achieved_send_rate": sent / (published - started),
            "applied_during_publish_per_s": at_publish_end / (published - started),
            "catch_up_seconds_after_publish": round(caught_up - published, 3),
            "steady_applied_per_s": steady_rate,
            "saturated": steady_rate is not None and steady_rate < 0.9 * rate,
            "observed": delta[-1][1] if delta else 0,
            "quantiles_seconds": quantiles,
            "p50_ms": _ms(quantiles["p50"]["value"]),
            "p99_ms": _ms(quantiles["p99"]["value"]),
            "cpu_seconds_per_1k_events": per_1k,
            "producer_cpu_seconds": (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime),
        }

    def scenario_memory(self) -> dict[str, Any]:
        o = self.options
        self.echo(f"== memory: {o.customers:,} simulated customers through the worker's batch handler (no Kafka)")
        space = self.space("memory", topics=False)
        _, stream = simulate(o.customers, seed=o.seed + 2, now_ms=self.now_ms)
        return _memory(space.env, list(stream), self.echo)

    def scenario_deadlines(self) -> dict[str, Any]:
        o = self.options
        self.echo(f"== deadlines: the due-set lookup with {o.deadline_customers:,} customers waiting")
        space = self.space("deadlines", topics=False)
        return asyncio.run(_deadlines(space.settings, o.deadline_customers, due=1000, repeat=100 if o.quick else 500,
                                      echo=lambda line: self.echo(f"   {line}")))

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        load_at_start = os.getloadavg()
        versions = self.check_stack()
        machine = machine_info(self.base, versions["kafka"])
        results: dict[str, Any] = {}
        try:
            for name in SCENARIOS:
                if name in self.options.only:
                    if name in ("memory", "deadlines", "cluster"):
                        self.settle()
                    t = time.monotonic()
                    results[name] = getattr(self, f"scenario_{name}")()
                    results[name]["scenario_seconds"] = round(time.monotonic() - t, 1)
        except BaseException:
            self.failed = True
            raise
        finally:
            self.cleanup()
        others = [v for v in _walk(results, "other_cores") if v is not None]
        lags = _walk(results, "committed_lag_after")
        accounted = _walk(results, "accounted")
        # The same records give the same applied count in every run (ours, naive, one or two workers).
        same = _walk(results, "same_applied_everywhere")
        if "scale" in results:
            same.append(results["scale"]["one"]["applied"] == results["scale"]["two"]["applied"])
        if "cluster" in results:
            same.append(results["cluster"]["single"]["applied"] == results["cluster"]["cluster"]["applied"])
        return {
            "bench": {
                "mode": "quick" if self.options.quick else "full",
                "options": {**asdict(self.options), "json_path": str(self.options.json_path)},
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now_ms / 1000)),
                "seconds": round(time.monotonic() - started, 1),
                "stack_pids": versions["pids"],
                "loadavg_at_start": load_at_start,
                "drain_runs": len(accounted),
                "all_events_accounted": all(accounted),
                "all_committed_lag_zero": all(lag == 0 for lag in lags),
                "same_events_applied": all(same),
                "other_cores_max": max(others, default=None),
                "other_cores_mean": statistics.mean(others) if others else None,
            },
            "machine": machine,
            "results": results,
        }

    def cleanup(self) -> None:
        self.settle()
        for p in self.procs:
            p.stop(timeout=10)
        try:
            _delete_spaces(self.base, self.spaces)
        except Exception as exc:  # leftovers are named jt:bench:<run id>, bench-*-<run id>
            self.echo(f"warning: cleanup incomplete ({exc!r})")
        if self.failed:
            self.echo(f"worker logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def burst_publish(
    base: Settings, topic: str, records: Sequence[SimRecord], rate: float | None = None, tick: float = 0.005
) -> int:
    """Publish ``records`` in record batches with Kafka's default key partitioning (so partitions get
    what ``streams.simulate.publish`` would give them); return how many were acknowledged.

    ``rate`` None: as fast as the broker takes them (about 100k records/s here). Otherwise paced:
    every ``tick`` the records due by then go out, as a busy producer with a short linger would
    send them. Record batches cost the producer a tenth of the CPU of per-record ``send`` calls,
    which matters when the producer shares two cores with the worker, Redis and Kafka.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import murmur2

    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(base.bootstrap_servers), acks="all", max_batch_size=512 * 1024, linger_ms=5
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        pending = []

        async def send(chunk: Sequence[SimRecord]) -> None:
            batches: dict[int, Any] = {}
            for rec in chunk:
                p = partitions[(murmur2(rec.key) & 0x7FFFFFFF) % len(partitions)]
                batch = batches.get(p) or batches.setdefault(p, producer.create_batch())
                if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=p))
                    batches[p] = producer.create_batch()
                    batches[p].append(key=rec.key, value=rec.value, timestamp=None)
            for p, batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=p))

        if not rate:
            await send(records)
        else:
            loop = asyncio.get_running_loop()
            started, i = loop.time(), 0
            while i < len(records):
                due = min(len(records), int((loop.time() - started) * rate) + 1)
                if due > i:
                    await send(records[i:due])
                    i = due
                await asyncio.sleep(tick)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(records)


class _NoDeadLetters:
    """Dead letters counted and dropped (the memory figure needs no DLQ topic)."""

    def __init__(self) -> None:
        self.count = 0

    async def send(self, letters: Sequence[Any]) -> None:
        self.count += len(letters)


def _settings_from(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("JOURNEY_").lower(): v for k, v in env.items() if k.startswith("JOURNEY_")})


def _handler(settings: Settings, store: Any) -> Any:
    from streams.journey_file import load_journey_map
    from streams.service.handler import BatchHandler
    from streams.service.pipeline import limits_of, rules_of

    journey = load_journey_map(settings.map)
    return BatchHandler(store, _NoDeadLetters(), rules_of(settings, journey), limits_of(settings))


def _load_partition(env: dict[str, str], partition: int, records: list[tuple[bytes, bytes]]) -> int:
    """One loader process: apply one partition's records in batches with the worker's own handler,
    as a worker owning it would (no Kafka)."""
    from streams.service.ports import SourceRecord

    settings = _settings_from(env)

    async def load() -> int:
        store, redis = store_of(settings)
        handler = _handler(settings, store)
        topic, size = settings.touchpoints_topic, settings.batch_size
        try:
            await handler.assign(partition)
            for lo in range(0, len(records), size):
                batch = [SourceRecord(key, value, topic, partition, lo + i, None)
                         for i, (key, value) in enumerate(records[lo : lo + size])]
                await handler.handle(batch, int(time.time() * 1000))
        finally:
            await redis.aclose()
        return handler.dead_letters.count

    return asyncio.run(load())


def _memory(env: dict[str, str], records: list[SimRecord], echo: Callable[[str], None]) -> dict[str, Any]:
    """Apply ``records`` with the worker's own batch handler (one loader process per partition, like
    one worker per partition), then measure Redis per tracked customer."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    import redis as redis_sync

    settings = _settings_from(env)
    partitions = settings.topic_partitions
    split: list[list[tuple[bytes, bytes]]] = [[] for _ in range(partitions)]
    for rec in records:
        split[zlib.crc32(rec.key) % partitions].append((rec.key, rec.value))  # any stable spread
    client = redis_sync.Redis.from_url(settings.redis_url)
    try:
        used_before = client.info("memory")["used_memory"]
        t = time.perf_counter()
        asyncio.run(_set_partitions(settings, partitions))
        with ProcessPoolExecutor(partitions, mp_context=get_context("spawn")) as pool:
            dead = sum(pool.map(_load_partition, [env] * partitions, range(partitions), split))
        applied_s = time.perf_counter() - t
        used_after = client.info("memory")["used_memory"]
    finally:
        client.close()
    return asyncio.run(_measure_memory(settings, len(records), dead, applied_s, used_after - used_before, echo))


async def _set_partitions(settings: Settings, n: int) -> None:
    store, redis = store_of(settings)
    try:
        await store.set_partitions(n)
    finally:
        await redis.aclose()


async def _measure_memory(
    settings: Settings, n_records: int, dead: int, applied_s: float, used_delta: int, echo: Callable[[str], None]
) -> dict[str, Any]:
    store, redis = store_of(settings)
    keys = store.keys
    try:
        customers: list[tuple[int, str]] = []  # (partition, customer)
        partition_keys: dict[str, int] = {}
        directory: dict[str, int] = {}
        for pattern in keys.patterns():
            async for raw in redis.scan_iter(match=pattern, count=10_000):
                key = raw.decode()
                if ":c:" in key:
                    tag, _, cid = key.partition(":c:")
                    customers.append((int(tag.rsplit(":p", 1)[1].rstrip("}")), cid))
                elif key.startswith(f"{keys.prefix}:dir:"):
                    directory[key] = 0
                else:
                    partition_keys[key] = 0
        for group in (partition_keys, directory):
            for key in group:
                group[key] = int(await redis.memory_usage(key, samples=0) or 0)
        sample = random.Random(1).sample(customers, min(500, len(customers)))
        sizes = [int(await redis.memory_usage(keys.customer(p, cid), samples=0) or 0) for p, cid in sample]
        n = max(1, len(customers))

        def share(part: str) -> float:
            return sum(v for k, v in partition_keys.items() if k.endswith(part) or f"{part}:" in k) / n

        per_kind = {
            "customer state": statistics.mean(sizes) if sizes else 0.0,
            "due index": share(":due"),
            "order summaries": share(":orders"),
            "directory": sum(directory.values()) / n,
            "aggregates and gaps": share(":agg") + share(":gaps"),
        }
        outbox_bytes = sum(v for k, v in partition_keys.items() if k.endswith(":outbox"))
        examples_bytes = sum(v for k, v in partition_keys.items() if k.endswith(":examples"))
        result = {
            "customers": len(customers),
            "records": n_records,
            "dead_letters": dead,
            "loader_processes": settings.topic_partitions,
            "apply_seconds": round(applied_s, 1),
            "sampled_customers": len(sample),
            "bytes_per_customer_by_kind": per_kind,
            "bytes_per_customer": sum(per_kind.values()),
            "bytes_per_customer_tracked": sum(per_kind.values()),
            "info_used_memory_delta_per_customer": (used_delta - outbox_bytes - examples_bytes) / n,
            "outbox_and_examples_bytes_not_counted": outbox_bytes + examples_bytes,
            "largest_partition_keys": dict(sorted(partition_keys.items(), key=lambda kv: -kv[1])[:8]),
            "note": "MEMORY USAGE (SAMPLES 0) of a random sample of customers' state (which holds their dedupe "
            "ids, deadlines and pending predictions), plus every partition key and directory bucket divided by "
            "customers; the alert outbox and the examples stream (drained by a running worker) are left out. "
            "INFO delta: Redis is shared, so other clients' writes land in it too.",
        }
        echo(
            f"   {result['customers']:,} customers: {result['bytes_per_customer']:.0f} B each by MEMORY USAGE "
            f"({', '.join(f'{k} {v:.0f}' for k, v in per_kind.items())}); INFO delta "
            f"{result['info_used_memory_delta_per_customer']:.0f} B; applied in {applied_s:.1f}s"
        )
        return result
    finally:
        await redis.aclose()


async def _deadlines(settings: Settings, customers: int, *, due: int, repeat: int,
                     echo: Callable[[str], None]) -> dict[str, Any]:
    """The due-set lookup each batch makes (``load.lua``) with ``customers`` waiting and none due, and a
    batch that moves the watermark past ``due`` of them (load, fire, commit: their alerts included)."""
    from models.events import TouchpointEvent
    from models.partition import process
    from models.watermark import Clock

    store, redis = store_of(settings)
    handler = _handler(settings, store)
    keys = store.keys
    t0 = 1_790_000_000_000
    try:
        await store.set_partitions(1)
        claim = await handler.assign(0)
        # the index of everyone else waiting (their state is not needed for a lookup that finds none due)
        chunk = 50_000
        for lo in range(0, customers - due, chunk):
            await redis.zadd(keys.due(0), {f"w{i}": t0 + 365 * DAY_MS + i
                                           for i in range(lo, min(customers - due, lo + chunk))})
        # ``due`` customers who carted (a stall due 66.5 minutes later), applied the worker's way
        events = [TouchpointEvent(f"e{i}", f"d{i:05d}", "add_to_cart", t0 + i) for i in range(due)]
        effect = process(events, rules=handler.rules, clock=Clock(), customers={}, erased={}, due=[],
                         due_complete_until=1 << 62)
        await store.commit(claim, effect, offset=None)
        waiting = await redis.zcard(keys.due(0))
        none_due = []
        for _ in range(repeat):
            t = time.perf_counter()
            await store.load(claim, [], due_until=t0 - 1, due_limit=1000)
            none_due.append((time.perf_counter() - t) * 1000)
        clock_event = TouchpointEvent("clock", "clock", "review", t0 + 2 * DAY_MS)
        t = time.perf_counter()
        loaded = await store.load(claim, ["clock"], due_until=t0 + 2 * DAY_MS, due_limit=1000)
        loaded.customers.update(await store.load_customers(claim, [c for _, c in loaded.due]))
        fired = process([clock_event], rules=handler.rules, clock=claim.clock, customers=loaded.customers,
                        erased={}, due=loaded.due, due_complete_until=loaded.due_complete_until)
        await store.commit(claim, fired, offset=None)
        due_ms = (time.perf_counter() - t) * 1000
        alerts = len(fired.outbox)
        result = {
            "customers": waiting,
            "partitions": 1,
            "due": due,
            "none_due_ms_median": statistics.median(none_due),
            "none_due_ms_p99": sorted(none_due)[int(0.99 * (len(none_due) - 1))],
            "due_batch_ms": due_ms,
            "alerts_fired": alerts,
            "method": "load.lua (ZRANGEBYSCORE on the partition's due index, the customers' MGET) timed from "
            "this process, median of the repeats; the due batch: load, the due customers' MGET, the engine, "
            "the commit",
        }
        echo(f"{waiting:,} waiting, none due: {result['none_due_ms_median']:.3f} ms median; "
             f"{due:,} due: {due_ms:.1f} ms ({alerts} alerts)")
        return result
    finally:
        for pattern in keys.patterns():
            async for key in redis.scan_iter(match=pattern, count=10_000):
                await redis.unlink(key)
        await redis.aclose()


def _delete_spaces(base: Settings, spaces: Sequence[RunSpace]) -> None:
    if not spaces:
        return
    import redis as redis_sync
    from kafka import KafkaAdminClient
    from redis.cluster import RedisCluster

    from streams.state.connect import is_cluster_url, seeds
    from streams.state.keys import Keys

    for space in spaces:
        url = space.settings.redis_url
        client = RedisCluster(*seeds(url)[0]) if is_cluster_url(url) else redis_sync.Redis.from_url(url)
        try:
            for pattern in Keys(space.settings.redis_prefix).patterns():
                for key in list(client.scan_iter(match=pattern, count=10_000)):
                    client.unlink(key)
        finally:
            client.close()
    admin = KafkaAdminClient(bootstrap_servers=base.bootstrap_servers, request_timeout_ms=30_000)
    try:
        existing = set(admin.list_topics())
        apps = tuple(f"{s.settings.app_id}-" for s in spaces)  # Faust's own topics, e.g. <app>-__assignor-__leader
        topics = [t for t in existing if t.startswith(apps)] + [
            t
            for s in spaces
            for t in (
                s.settings.touchpoints_topic,
                s.settings.dlq_topic,
                s.settings.alerts_topic,
                s.settings.erasure_topic,
                s.settings.spend_topic,
            )
            if t in existing
        ]
        if topics:
            admin.delete_topics(topics, raise_errors=False)
        with contextlib.suppress(Exception):  # groups that never committed do not exist
            admin.delete_groups([s.settings.app_id for s in spaces])
    finally:
        admin.close()


def _walk(node: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in nested dicts and lists."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in _walk(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _walk(v, key)]
    return []


def _median_cpu(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The median per-1k-event CPU of each process kind over runs."""
    out: dict[str, float | None] = {}
    for k in ("worker", "redis", "kafka"):
        values = [r["cpu_seconds_per_1k_events"][k] for r in runs if r["cpu_seconds_per_1k_events"][k] is not None]
        out[k] = statistics.median(values) if values else None
    return out


def _us(cpu_s_per_1k: float | None) -> float | None:
    return None if cpu_s_per_1k is None else round(cpu_s_per_1k * 1000, 2)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def machine_info(settings: Settings, kafka_version: str) -> dict[str, Any]:
    """What the figures were measured on."""
    import redis as redis_sync

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])  # type: ignore[index]
        ram_gib = round(kb / 1024 / 1024, 1)
    except (OSError, TypeError):
        pass
    client = redis_sync.Redis.from_url(settings.redis_url)
    try:
        redis_version = client.info("server").get("redis_version")
    finally:
        client.close()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kafka": kafka_version,
        "redis": redis_version,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": dirty.splitlines() if dirty else [],
    }


# ---------------------------------------------------------------------------------------------
# Report


def table(report: dict[str, Any]) -> str:
    """The figures as a plain-text table (what ``journey bench`` prints)."""
    m, r = report["machine"], report["results"]
    commit = (m["git_commit"] or "unknown")[:10] + (" (uncommitted changes)" if m["git_dirty_files"] else "")
    rows: list[tuple[str, str, str]] = []
    if "drain" in r:
        d = r["drain"]
        c = d["ours_cpu_seconds_per_1k_events"]
        rows.append((f"drain, 1 worker process, every feature on ({d['records']:,} events)",
                     _num(d["ours_events_per_s"], 0, " ev/s"), TARGETS["events_per_s"]))
        rows.append(("  CPU s per 1k events: worker / Redis / Kafka",
                     f"{_num(c['worker'], 3)} / {_num(c['redis'], 3)} / {_num(c['kafka'], 3)}", TARGETS["worker_cpu"]))
        names = {"faust_bare": "bare Faust agent (take 500 + orjson, no work)",
                 "faust_batch": "Faust with batch delivery (+ orjson, no work)",
                 "quix": "Quix Streams app (stateful per-customer work, RocksDB)",
                 "naive": f"naive baseline ({d['naive_records']:,} events)"}
        for name, peer in d["peers"].items():
            if "skipped" in peer:
                rows.append((f"  {names[name]}", "skipped", peer["skipped"]))
                continue
            pc = peer["cpu_seconds_per_1k_events"]
            rows.append((f"  {names[name]}: ev/s, worker CPU s/1k, ours / it",
                         f"{_num(peer['events_per_s'], 0)}, {_num(pc['worker'], 3)}, "
                         f"{_num(peer['ours_over_peer'], 2, '×')}", TARGETS["ratio_quix"] if name == "quix" else ""))
    if "identity" in r:
        i = r["identity"]
        ck, ca = i["cpu_seconds_per_1k_events"]["known"], i["cpu_seconds_per_1k_events"]["anonymous"]
        rows.append((f"identity: 50 % anonymous before signup vs customer ids only ({i['records']:,} events)",
                     f"{_num(i['anonymous_events_per_s'], 0)} / {_num(i['known_events_per_s'], 0)} ev/s, "
                     f"drop {_num(100 * i['drop'] if i['drop'] is not None else None, 1, ' %')}", TARGETS["identity"]))
        rows.append(("  worker CPU s per 1k events: anonymous / known",
                     f"{_num(ca['worker'], 3)} / {_num(ck['worker'], 3)}", ""))
    if "cluster" in r:
        cl = r["cluster"]
        rows.append((f"single Redis vs Redis Cluster ({cl['shards']} masters), same {cl['records']:,} records",
                     "identical" if cl["identical"] else f"DIFFERENT: {', '.join(cl['differences'])}",
                     TARGETS["cluster"]))
        rows.append(("  Redis CPU µs per event: single / cluster (summed over the shards)",
                     f"{_num(cl['single_redis_cpu_us_per_event'], 1)} / {_num(cl['redis_cpu_us_per_event'], 1)}",
                     "≤ 15"))
        rows.append(("  events/s: single / cluster",
                     f"{_num(cl['single']['events_per_s'], 0)} / {_num(cl['cluster']['events_per_s'], 0)}", ""))
    if "latency" in r:
        main_rate = r["latency"]["offered_events_per_s"]
        ordered = sorted(r["latency"]["runs"], key=lambda run: run["offered_events_per_s"] != main_rate)
        for i, lat in enumerate(ordered):
            indent = "  " if i else ""
            rows.append(
                (f"{indent}latency append→applied at {lat['offered_events_per_s']:,.0f} ev/s offered: p50 / p99",
                 f"{_num(lat['p50_ms'], 1)} / {_num(lat['p99_ms'], 1)} ms", "" if i else TARGETS["latency_p99"])
            )  # fmt: skip
            state = "saturated" if lat["saturated"] else "kept up"
            tail = lat["catch_up_seconds_after_publish"]
            rows.append(
                (f"    applied while publishing ({state}; all applied {tail:.1f}s after the last send)",
                 _num(lat["steady_applied_per_s"], 0, " ev/s"), "")
            )  # fmt: skip
    if "memory" in r:
        mem = r["memory"]
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in mem["bytes_per_customer_by_kind"].items())
        rows.append((f"Redis bytes per customer at {mem['customers']:,} (MEMORY USAGE)",
                     _num(mem["bytes_per_customer"], 0), TARGETS["bytes_per_customer"]))
        rows.append((f"  by kind: {kinds}", "", ""))
        rows.append(("  INFO used_memory delta per customer", _num(mem["info_used_memory_delta_per_customer"], 0), ""))
    if "deadlines" in r:
        dl = r["deadlines"]
        rows.append((f"due-set lookup, {dl['customers']:,} customers waiting, none due: median / p99",
                     f"{_num(dl['none_due_ms_median'], 3)} / {_num(dl['none_due_ms_p99'], 3)} ms",
                     TARGETS["deadline_none_due"]))
        rows.append((f"  a batch that fires {dl['due']:,} due ({dl['alerts_fired']} alerts)",
                     _num(dl["due_batch_ms"], 1, " ms"), ""))
    if "scale" in r:
        s = r["scale"]
        rows.append(
            ("scale: 2 worker processes / 1 (2 partitions)",
             f"{_num(s['two']['events_per_s'], 0)} / {_num(s['one']['events_per_s'], 0)} ev/s = "
             f"{_num(s['ratio'], 2, '×')}", TARGETS["scale"])
        )  # fmt: skip
    b = report["bench"]
    if b["drain_runs"]:
        ok = "yes" if b["all_events_accounted"] and b["all_committed_lag_zero"] and b["same_events_applied"] else "NO"
        rows.append(
            (f"every record applied, duplicate or dead-lettered, lag 0, same events applied ({b['drain_runs']} drains)",
             ok, "")
        )  # fmt: skip
    width = max(len(a) for a, _, _ in rows) if rows else 10
    vwidth = max(len(b) for _, b, _ in rows) if rows else 10
    header = (
        f"journey bench ({report['bench']['mode']}, {report['bench']['seconds']:.0f}s) at {commit}\n"
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, Python {m['python']}, "
        f"Kafka {m['kafka']}, Redis {m['redis']} (all on this machine)\n"
    )
    if b.get("other_cores_max") is not None:
        header += (
            f"other processes kept {b['other_cores_mean']:.2f} cores busy on average during the measured windows "
            f"(at most {b['other_cores_max']:.2f})\n"
        )
    lines = [f"{'figure':<{width}}  {'value':>{vwidth}}  target", "-" * (width + vwidth + 12)]
    lines += [f"{a:<{width}}  {b:>{vwidth}}  {c}".rstrip() for a, b, c in rows]
    return header + "\n".join(lines)


def run_bench(options: BenchOptions, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected scenarios, write the JSON file, print the table; return the report."""
    bench = Bench(options) if echo is None else Bench(options, echo)
    report = bench.run()
    path = options.json_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(table(report))
    print(f"\nfigures written to {path}")
    return report
