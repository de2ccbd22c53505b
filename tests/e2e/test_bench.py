"""`journey bench --quick` on the real stack: it completes and its figures are sane. No timed assertions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from streams.bench import SCENARIOS


def test_quick_bench_completes_and_accounts_for_every_event(
    journey: Callable[..., CompletedProcess[str]], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    result = journey("bench", "--quick", "--json", str(out), timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "figure" in result.stdout and str(out) in result.stdout  # the table was printed

    report = json.loads(out.read_text())
    r = report["results"]
    assert set(r) == set(SCENARIOS)
    assert report["machine"]["cores"] >= 1 and report["machine"]["git_commit"]

    # Ours and the naive baseline drained identical copies: every record is accounted for, the
    # offsets are committed, and both applied exactly the same events.
    for pair in r["drain"]["pairs"]:
        for run in (pair["ours"], pair["naive"]):
            assert run["events_per_s"] > 0
            assert run["consumed"] == run["produced"] > 0
            assert run["applied"] + run["duplicates"] + run["dead_letters"] == run["produced"]
            assert run["duplicates"] > 0 and run["dead_letters"] > 0  # the simulator's mix reached both
            assert run["committed_lag_after"] == 0
            assert run["cpu_seconds_per_1k_events"]["worker"] > 0
        assert pair["ours"]["applied"] == pair["naive"]["applied"]
        assert pair["ratio"] > 0

    # One worker and two in a group: same records, same events applied once, nothing left behind.
    scale = r["scale"]
    for run in (scale["one"], scale["two"]):
        assert run["events_per_s"] > 0 and run["accounted"] and run["committed_lag_after"] == 0
    assert scale["one"]["applied"] == scale["two"]["applied"]
    assert scale["ratio"] > 0

    latency = r["latency"]
    for run in latency["runs"]:
        assert run["observed"] >= run["sent"] > 0  # every paced event's latency was recorded
        assert 0 < run["p50_ms"] <= run["p99_ms"]
    assert latency["p50_ms"] <= latency["p99_ms"]

    memory = r["memory"]
    assert memory["customers"] > 0 and memory["bytes_per_customer"] > 0
    assert all(v >= 0 for v in memory["bytes_per_customer_by_kind"].values())

    deadlines = r["deadlines"]
    assert deadlines["due"] == 1000 and deadlines["due_check_ms"] > 0
    assert deadlines["none_due_one_partition_ms_median"] > 0

    bench = report["bench"]
    assert bench["all_events_accounted"] and bench["all_committed_lag_zero"] and bench["same_events_applied"]
