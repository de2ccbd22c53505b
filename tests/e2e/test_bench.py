"""`journey bench --quick` on the real stack: every scenario runs and reports what a reader of its
figures needs. No timed assertions; the checks are about what the bench measured, cross-checked
against the data it produced (the simulator's records and the store), not its own flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from streams.devtools.bench import PEERS, SCENARIOS


def test_quick_bench_runs_every_scenario_and_reports_the_figures(
    journey: Callable[..., CompletedProcess[str]], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    result = journey("bench", "--quick", "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "figure" in result.stdout and str(out) in result.stdout  # the table was printed

    report = json.loads(out.read_text())
    r = report["results"]
    assert set(r) == set(SCENARIOS)

    # The drain: our worker and every peer each drained a copy of the same records; ours accounted
    # for every record (applied, duplicate or dead-lettered), and as many as the simulator says are
    # malformed went to the DLQ.
    drain = r["drain"]
    records = drain["records"]
    for run in drain["runs"]["ours"]:
        assert run["consumed"] == run["produced"] == records
        assert run["applied"] + run["duplicates"] + run["dead_letters"] == records
        assert run["committed_lag_after"] == 0
    assert set(drain["peers"]) == set(PEERS)
    for kind in PEERS:
        for run in drain["runs"][kind]:
            assert run["consumed"] >= run["produced"] > 0 and run["committed_lag_after"] == 0
    assert drain["ours_cpu_seconds_per_1k_events"]["worker"] > 0
    assert drain["ours_cpu_seconds_per_1k_events"]["redis"] > 0

    # The same records on a single Redis and on the Redis Cluster: the bench compared the two stores
    # (their customers, aggregates and alerts), and both applied the same events.
    cluster = r["cluster"]
    assert cluster["identical"] is True and cluster["differences"] == []
    assert cluster["compared"]["customers"] > 0 and cluster["compared"]["alerts"] > 0
    assert cluster["single"]["applied"] == cluster["cluster"]["applied"] > 0
    assert cluster["shards"] == 3 and cluster["redis_cpu_us_per_event"] > 0

    # Identity stitching's cost: the same journeys with customer ids only, and with half of the
    # customers anonymous before signup; the worker processed every published record in both, and
    # the anonymous copy's merges added identity records of their own.
    identity = r["identity"]
    for run in identity["runs"]["known"]:
        assert run["identity_records"] == run["forwarded"] == 0 and run["consumed"] == run["produced"]
    for run in identity["runs"]["anonymous"]:
        assert run["identity_records"] > 0
        assert run["consumed"] - run["identity_records"] - run["forwarded"] == run["produced"] == identity["records"]
        assert run["accounted"] and run["committed_lag_after"] == 0

    scale = r["scale"]
    assert scale["one"]["applied"] == scale["two"]["applied"] > 0
    for run in (scale["one"], scale["two"]):
        assert run["consumed"] == run["produced"] and run["committed_lag_after"] == 0

    for run in r["latency"]["runs"]:
        assert run["observed"] >= run["sent"] > 0  # every paced event's latency was recorded
        assert 0 < run["p50_ms"] <= run["p99_ms"]

    memory = r["memory"]  # the quick preset's 2,000 simulated customers (some never send a valid event)
    assert 1_500 < memory["customers"] <= 2_000 and memory["bytes_per_customer"] > 0
    assert memory["records"] > memory["customers"]

    deadlines = r["deadlines"]
    assert deadlines["customers"] == 20_000 and deadlines["due"] == deadlines["alerts_fired"] == 1000
    assert deadlines["none_due_ms_median"] > 0
