"""Alert precision and recall on simulated traffic with planted drop-offs, through the real stack.

Publishes `--customers` simulated journeys (the simulator knows who really dropped off) to
fresh topics, runs a real `journey worker` over them, waits until the alerts settle, and
compares the customers left with an open alert against the ground truth.

    .venv/bin/python scripts/alert_quality.py --customers 5000 --seed 11

Requires `journey stack up`. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from kafka import KafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.devtools.simulate import publish, simulate  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402
from streams.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "alert-quality.json")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")}
    env.update(
        JOURNEY_APP_ID=f"quality-{run}",
        JOURNEY_TOUCHPOINTS_TOPIC=f"quality-tp-{run}",
        JOURNEY_DLQ_TOPIC=f"quality-dlq-{run}",
        JOURNEY_ALERTS_TOPIC=f"quality-alerts-{run}",
        JOURNEY_REDIS_PREFIX=f"jt:quality:{run}",
        JOURNEY_WEB_PORT="16099",
        JOURNEY_IDLE_TIMEOUT="5s",  # once the stream ends, judge what is overdue as of now
        PYTHONPATH=str(ROOT),
    )
    settings = Settings(**{k.removeprefix("JOURNEY_").lower(): v for k, v in env.items() if k.startswith("JOURNEY_")})
    ensure_topics(settings)
    now_ms = int(time.time() * 1000)
    truth, records = simulate(args.customers, seed=args.seed, now_ms=now_ms)
    sent = publish(records, bootstrap_servers=settings.bootstrap_servers, topic=settings.touchpoints_topic,
                   rate=None, progress=False)
    print(f"published {sent.sent} records for {args.customers} customers", file=sys.stderr)

    log = open(ROOT / "bench-results" / f"quality-worker-{run}.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{env['JOURNEY_WEB_PORT']}"
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 15:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"{base}/worker/stats", timeout=2) as r:  # noqa: S310
                    stats = orjson.loads(r.read())
            except OSError:
                continue
            progress = (stats["consumed"], stats["alerts_emitted"])
            if progress != last:
                last, stable_since = progress, time.monotonic()
        print(f"worker settled: {stats['consumed']} consumed, {stats['alerts_emitted']} alerts", file=sys.stderr)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()

    consumer = KafkaConsumer(settings.alerts_topic, bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    open_now: dict[tuple[str, str], bool] = {}
    for message in consumer:
        a = orjson.loads(message.value)
        open_now[(a["customer_id"], a["type"])] = a["status"] == "open"
    consumer.close()

    dropped = {c.customer_id for c in truth if c.dropped_after}
    result: dict[str, object] = {"customers": args.customers, "seed": args.seed, "dropped": len(dropped)}
    kinds = {"any": {"stalled_critical_path", "drop_off"}, "stalled_critical_path": {"stalled_critical_path"},
             "drop_off": {"drop_off"}}
    for label, types in kinds.items():
        flagged = {cid for (cid, t), is_open in open_now.items() if is_open and t in types}
        hit = len(flagged & dropped)
        result[label] = {
            "flagged": len(flagged),
            "precision": round(hit / len(flagged), 4) if flagged else None,
            "recall": round(hit / len(dropped), 4) if dropped else None,
        }
    print(f"{'alert type':<24} {'flagged':>8} {'precision':>10} {'recall':>8}   (ground truth: {len(dropped)} dropped)")
    for label in ("any", "stalled_critical_path", "drop_off"):
        r = result[label]
        print(f"{label:<24} {r['flagged']:>8} {r['precision']!s:>10} {r['recall']!s:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
