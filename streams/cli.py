"""The ``journey`` command: local stack, worker, simulator, demo, map checks and lookups."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from kafka.errors import KafkaError
from pydantic import ValidationError
from redis.exceptions import RedisError

from models.journey_map import JourneyMap
from streams.devtools.stack import StackError
from streams.journey_file import MapFileError, load_journey_map
from streams.kafka.topics import TopicError
from streams.settings import Settings

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the command line or the configuration; printed without a traceback (exit 2)."""


class Unavailable(Exception):
    """A service the command needs is not there; printed with what to do next (exit 1)."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"JOURNEY_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"invalid setting: {problems}") from None


def cmd_stack(args: argparse.Namespace) -> int:
    from streams.devtools import stack

    settings = _settings()
    options = stack.StackOptions.from_environment(redis_cluster=args.redis_cluster)
    action: Callable[..., list[stack.ServiceStatus]] = {"up": stack.up, "down": stack.down}.get(
        args.action, lambda s, o, echo: stack.status(s, o)
    )
    statuses = action(settings, options, echo=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(orjson.dumps([dataclasses.asdict(s) for s in statuses]).decode())
    else:
        for s in statuses:
            state = "running" if s.running else "stopped"
            pid = f"pid {s.pid}" if s.pid else "-"
            print(f"{s.name:<6} {state:<8} {s.address:<22} {pid:<10} {s.detail}")
    return 0 if args.action == "down" or all(s.running for s in statuses) else 1


def with_store(settings: Settings, use: Callable[..., Awaitable[T]]) -> T:
    """Run ``use(store)`` against the configured Redis (single or cluster), and close the connection."""
    from streams.state.connect import connect
    from streams.state.keys import Keys
    from streams.state.redis_store import RedisStore

    async def run() -> T:
        redis = connect(settings.redis_url, socket_connect_timeout=3)
        try:
            return await use(RedisStore(redis, Keys(settings.redis_prefix), pseudonym_key=settings.pseudonym_secret()))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def check_redis(settings: Settings) -> None:
    """Fail fast, with a hint, when Redis is not there (the worker would only retry)."""
    from streams.state.connect import connect, ping_all

    async def ping() -> None:
        client = connect(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
        try:
            await ping_all(client)
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, OSError) as exc:
        raise Unavailable(
            f"cannot reach Redis at {settings.redis_url}: {str(exc).rstrip('.')}. "
            "Start the local stack with `journey stack up` or set JOURNEY_REDIS_URL."
        ) from None


def cmd_worker(args: argparse.Namespace) -> int:  # noqa: ARG001
    from streams.kafka.app import create_app
    from streams.kafka.topics import ensure_topics

    settings = _settings()
    problem = settings.unsafe_exposure()
    if problem:
        raise UserError(problem)
    journey = load_journey_map(settings.map)
    check_redis(settings)
    created = ensure_topics(settings)
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)
    app = create_app(settings, journey)
    worker = app.Worker(loglevel="info")
    worker.execute_from_commandline()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import time

    from streams.devtools.simulate import publish, simulate
    from streams.kafka.topics import ensure_topics

    settings = _settings()
    ensure_topics(settings)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    print(f"simulating {args.customers} customers (seed {seed}) -> {settings.touchpoints_topic}", file=sys.stderr)
    _, records = simulate(
        args.customers, seed=seed, now_ms=int(time.time() * 1000), days=args.days, upsell_signal=args.upsell_signal,
        anonymous_share=args.anonymous_share,
    )
    summary = publish(
        records,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.touchpoints_topic,
        rate=args.rate,
        progress=not args.quiet,
    )
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(summary.by_kind.items()))
    print(f"sent {summary.sent} records in {summary.seconds:.1f}s ({summary.rate:.0f}/s): {kinds}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.devtools.demo import run_demo

    return run_demo(
        _settings(),
        customers=args.customers,
        rate=args.rate,
        seed=args.seed,
        exit_when_drained=args.exit_when_drained,
    )


def cmd_map(args: argparse.Namespace) -> int:
    from streams.ops.map_view import describe, render_svg

    settings = _settings()
    path: Path = args.file or settings.map
    journey = load_journey_map(path)
    if args.action == "schema":
        from models.schema import event_schema

        schema = event_schema(journey, currency=settings.currency, rates=settings.rates,
                              max_value=settings.max_value, min_event_ms=settings.min_event_ms)
        print(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.json and args.action in ("check", "show"):
        print(orjson.dumps(map_json(journey, path)).decode())
        return 0
    if args.action == "check":
        flow = f", {len(journey.flow.activities)} activities" if journey.flow else ""
        print(f"{path}: OK ({len(journey.stages)} stages, {len(journey.touchpoints)} touchpoints{flow})")
        return 0
    if args.action == "show":
        print(describe(journey))
        return 0
    if journey.flow is None:
        raise UserError(f"{path} has no flow: section to draw")
    out: Path = args.output
    try:
        out.write_text(render_svg(journey), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out} (critical path in red)")
    return 0


def map_json(journey: JourneyMap, path: Path) -> dict[str, object]:
    activities = []
    if journey.flow:
        for t in journey.flow.activity_timings():
            a = t.activity
            activities.append({"from": a.source, "to": a.target, "expected_seconds": a.expected,
                               "sigma_seconds": a.sigma, "slack_seconds": t.slack, "critical": t.critical})
    return {
        "file": str(path),
        "valid": True,
        "stages": [{"stage": s, "max_silence_seconds": journey.max_silence_s.get(s),
                    "severity": journey.severity.get(s, "medium"),
                    "touchpoints": [tp for tp, st in journey.touchpoints.items() if st == s]} for s in journey.stages],
        "activities": activities,
        "critical_path": list(journey.critical_path),
        "stall_after_seconds": [ms / 1000 for ms in journey.stall_after_ms],
    }


def _as_of(text: str | None) -> int | None:
    """``--as-of`` (ISO-8601 with a zone, or epoch ms) as epoch ms."""
    if text is None:
        return None
    from models.events import parse_timestamp

    parsed = parse_timestamp(int(text) if text.lstrip("-").isdigit() else text, min_ms=-(2**62))
    if not isinstance(parsed, int):
        raise UserError(f"--as-of {text!r}: expected an ISO-8601 time with a zone (2026-11-24T00:00:00Z) or epoch ms")
    return parsed


def cmd_customer(args: argparse.Namespace) -> int:
    from streams.service.clv import ClvModels
    from streams.service.pipeline import rules_of
    from streams.service.queries import customer_view
    from streams.state.clv_store import RedisClvStore

    settings = _settings()
    journey = load_journey_map(settings.map)
    as_of = _as_of(args.as_of)

    async def lookup(store: Any) -> dict[str, object] | None:
        clv = ClvModels(RedisClvStore(store.redis, store.keys), store)
        return await customer_view(store, clv, rules_of(settings, journey), args.customer_id, as_of_ms=as_of)

    body = with_store(settings, lookup)
    if body is None:
        print(f"no customer {args.customer_id!r} in Redis at {settings.redis_url}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(body).decode())
        return 0
    width = max(len(k) for k in body)
    for key, value in body.items():
        shown = orjson.dumps(value).decode() if isinstance(value, dict | list) else value
        print(f"{key:<{width}}  {shown}")
    return 0


def cmd_gaps(args: argparse.Namespace) -> int:
    from models.durations import format_duration
    from streams.service.queries import gaps_view

    settings = _settings()
    journey = load_journey_map(settings.map)
    as_of = _as_of(args.as_of)
    report = with_store(settings, lambda store: gaps_view(store, journey, args.days, as_of))
    if args.json:
        print(orjson.dumps(report).decode())
        return 0

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def dur(x: float | None) -> str:
        return "-" if x is None else format_duration(x)

    print(f"Gap analysis, {args.days} days of event time up to {report['as_of'] or '(nothing applied yet)'}\n")
    print(f"{'stage':<15} {'reached':>8} {'to next':>8} {'drop-offs':>9} {'drop rate':>9}")
    for s in report["stages"]:
        print(
            f"{s['stage']:<15} {s['reached']:>8} {pct(s['converted_to_next']):>8} {s['drop_offs']:>9} "
            f"{pct(s['drop_off_rate']):>9}"
        )
    print(f"\n  {'activity':<40} {'TE':>8} {'median':>8} {'p90':>8} {'n':>7} {'conv.':>7}")
    for a in report["activities"]:
        mark = "*" if a["critical"] else " "
        print(
            f"{mark} {a['from'] + ' -> ' + a['to']:<40} {dur(a['expected_seconds']):>8} "
            f"{dur(a['actual_median_seconds']):>8} {dur(a['actual_p90_seconds']):>8} {a['transitions']:>7} "
            f"{pct(a['conversion_rate']):>7}"
        )
    print("\n* on the critical path. TE = expected time (o+4m+p)/6; median and p90 are what customers took.")
    return 0


def cmd_clv(args: argparse.Namespace) -> int:
    from streams.service.clv import ClvModels
    from streams.state.clv_store import RedisClvStore

    settings = _settings()
    as_of = _as_of(args.as_of)

    async def refit(store: Any) -> dict[str, object]:
        return await ClvModels(RedisClvStore(store.redis, store.keys), store).refit(as_of)

    result = with_store(settings, refit)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if result["model"] == "fitted" else 1


def cmd_model(args: argparse.Namespace) -> int:  # noqa: ARG001
    from streams.state.model_store import RedisModelStore

    settings = _settings()

    async def reset(store: Any) -> bool:
        return await RedisModelStore(store.redis, store.keys, model_key=settings.model_secret()).delete()

    removed = with_store(settings, reset)
    print("the propensity model snapshot was removed: the learner starts a fresh model from the examples not yet "
          "learned" if removed else "there was no model snapshot")
    return 0


def cmd_value(args: argparse.Namespace) -> int:
    from streams.service.queries import value_view

    settings = _settings()
    journey = load_journey_map(settings.map)
    report = with_store(settings, lambda store: value_view(store, journey))
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    cur = settings.currency
    for title, rows, label in (("Touchpoints", report["touchpoints"], "touchpoint"),
                               ("Channels", report["channels"], "channel")):
        print(f"{title}: attributed purchase value ({cur})")
        print(f"  {label:<22} {'first':>10} {'last':>10} {'linear':>10} {'decay':>10}")
        for r in rows:
            print(f"  {r[label]:<22} {r['first_touch']:>10.2f} {r['last_touch']:>10.2f} {r['linear']:>10.2f} "
                  f"{r['time_decay']:>10.2f}")
        print()
    print(f"Stages ({cur}): value created (linear) / customers lost to drop-off / their revenue")
    for s in report["stages"]:
        print(f"  {s['stage']:<22} {s['value_created']:>10.2f} {s['customers_lost']:>8} {s['lost_revenue']:>10.2f}")
    print(f"\nUnattributed (no touch within the lookback): {report['unattributed']:.2f} {cur}")
    print(f"As of {report['as_of'] or '(nothing applied yet)'} (event time).")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer

    settings = _settings()
    consumer = KafkaConsumer(
        settings.alerts_topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(args.timeout * 1000) if args.timeout else float("inf"),
    )
    if not args.json:
        print(f"{'event time':<24} {'type':<22} {'status':<9} {'customer':<14} {'stage':<14} {'touchpoint':<22} "
              f"{'severity':<8} {'value':>9}  reason", flush=True)
    shown = 0
    try:
        for message in consumer:
            if message.value is None:  # a tombstone: the customer was erased
                if args.json:
                    print(orjson.dumps({"erased": (message.key or b"").decode()}).decode(), flush=True)
                continue
            a = orjson.loads(message.value)
            clv = a.get("clv") or {}
            worth = clv.get("predicted_clv") if clv.get("predicted_clv") is not None else clv.get("revenue", 0.0)
            if (args.type and a["type"] != args.type) or (args.min_clv is not None and (worth or 0) < args.min_clv):
                continue
            if args.json:
                print(orjson.dumps(a).decode(), flush=True)
            else:
                step = a["touchpoint"] + (f" -> {a['next_touchpoint']}" if a.get("next_touchpoint") else "")
                print(f"{a['event_time']:<24} {a['type']:<22} {a['status']:<9} {a['customer_id'][:14]:<14} "
                      f"{a['stage']:<14} {step[:22]:<22} {a['severity']:<8} {worth or 0:>9.2f}  {a['reason']}",
                      flush=True)
            shown += 1
            if args.max and shown >= args.max:
                break
    finally:
        consumer.close()
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    import time

    from streams.kafka.topics import ensure_topics
    from streams.ops import backfill

    settings = _settings()
    journey = load_journey_map(settings.map)
    now_ms = int(time.time() * 1000)
    lines = backfill.read_lines(args.file)
    show = sys.stderr.isatty() and not args.quiet

    def progress(n: int, seconds: float) -> None:
        if show:
            print(f"\r  {n:,} lines in {seconds:.0f} s ({n / max(seconds, 1e-9):,.0f}/s)", end="", file=sys.stderr)

    try:
        if args.dry_run:
            summary = backfill.Summary()
            for line in lines:
                summary.lines += 1
                problem = backfill.check(line, journey, now_ms=now_ms, currency=settings.currency,
                                         rates=settings.rates, max_value=settings.max_value,
                                         max_payload_bytes=settings.max_payload_bytes,
                                         min_event_ms=settings.min_event_ms)
                if problem is not None:
                    summary.invalid[problem.reason.value] += 1
                    if len(summary.examples) < 10:
                        summary.examples.append(f"line {line.number}: {problem.reason.value}: {problem.detail}")
            bad = sum(summary.invalid.values())
            print(f"{summary.lines:,} lines: {summary.lines - bad:,} would be applied, {bad:,} dead-lettered"
                  + (f" ({', '.join(f'{n} {r}' for r, n in sorted(summary.invalid.items()))})" if bad else ""))
            for example in summary.examples:
                print(f"  {example}")
            return 0 if bad == 0 else 1
        ensure_topics(settings)
        summary = backfill.publish(lines, bootstrap_servers=settings.bootstrap_servers,
                                   topic=settings.touchpoints_topic, rate=args.rate, progress=progress)
    except backfill.BackfillError as exc:
        raise UserError(str(exc)) from None
    if show:
        print(file=sys.stderr)
    print(f"sent {summary.sent:,} of {summary.lines:,} lines to {settings.touchpoints_topic} "
          f"in {summary.seconds:.1f} s")
    if args.no_wait or not summary.sent:
        return 0

    def applied(n: int, total: int) -> None:
        if show:
            print(f"\r  applied by the worker: {n:,} of {total:,}", end="", file=sys.stderr)

    async def wait(store: Any) -> bool:
        return await backfill.wait_applied(summary, store.offsets, timeout=args.timeout, progress=applied)

    done = with_store(settings, wait)
    if show:
        print(file=sys.stderr)
    if not done:
        raise Unavailable(f"the worker had not applied everything within {args.timeout:.0f} s: is `journey worker` "
                          "running? (the records are on the topic; run again with --no-wait to skip waiting)")
    reasons = backfill.dead_letters_of(summary, bootstrap_servers=settings.bootstrap_servers,
                                       source_topic=settings.touchpoints_topic, dlq_topic=settings.dlq_topic,
                                       since_ms=now_ms - 60_000)
    dead = sum(reasons.values())
    print(f"the worker applied or recognised as duplicates {summary.sent - dead:,} and dead-lettered {dead:,}"
          + (f" ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))})" if dead else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from streams.devtools.bench import BenchError, BenchOptions, run_bench

    only = tuple(n.strip() for n in args.only.split(",") if n.strip()) if args.only else None
    try:
        options = BenchOptions.preset(
            args.quick, events=args.events, customers=args.customers, pairs=args.pairs, seed=args.seed,
            rate=args.rate, only=only, json_path=args.json,
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        run_bench(options)
    except BenchError as exc:
        raise Unavailable(str(exc)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="journey", description="Customer journey tracker: Kafka touchpoints -> journey state in Redis."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stack", help="start, stop or inspect the local Kafka + Redis (+ a Redis Cluster)")
    p.add_argument("action", choices=["up", "down", "status"],
                   help="up: start what is not running (idempotent); down: stop it, keeping data; status: show it")
    p.add_argument("--redis-cluster", action="store_true",
                   help="also a 3-master Redis Cluster on 127.0.0.1 (JOURNEY_STACK_CLUSTER_PORTS, default 17000-17002)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("worker", help="run the stream worker (Faust)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("simulate", help="publish realistic touchpoint traffic to Kafka")
    p.add_argument("--customers", type=_positive_int, default=1000, help="how many customers' journeys (1000)")
    p.add_argument("--rate", type=float, default=2000.0, help="events per second (0 = as fast as possible)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    p.add_argument("--days", type=float, default=14.0, help="journeys start over the last N days")
    p.add_argument("--anonymous-share", type=_share, default=0.5,
                   help="share of customers who browse anonymously (anonymous_id only) until signup (0.5)")
    p.add_argument("--no-upsell-signal", dest="upsell_signal", action="store_false",
                   help="upgrades independent of the journey (the propensity model should then score about 0.5 AUC)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="stack up, worker, simulator and a live summary (the main job)")
    p.add_argument("--customers", type=_positive_int, default=20_000, help="simulated customers (20000)")
    p.add_argument("--rate", type=float, default=5000.0, help="events per second offered (5000)")
    p.add_argument("--seed", type=int, default=None, help="simulator seed (default: a new one, printed)")
    p.add_argument("--exit-when-drained", action="store_true", help="stop once every event is processed")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("map", help="check, show or draw a journey map; print its event JSON Schema")
    p.add_argument("action", choices=["check", "show", "render", "schema"],
                   help="schema: the touchpoint event contract for this map and the current settings")
    p.add_argument("file", nargs="?", type=Path, help="map file (default: JOURNEY_MAP or the built-in map)")
    p.add_argument("-o", "--output", type=Path, default=Path("journey-map.svg"), help="render: SVG file to write")
    p.add_argument("--json", action="store_true", help="check/show: machine-readable output")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("gaps", help="expected vs actual transition times, conversion and drop-off rates")
    p.add_argument("--days", type=_positive_int, default=30, help="sliding window of event-time days")
    p.add_argument("--as-of", default=None, help="end of the window (default: the stream's time)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_gaps)

    p = sub.add_parser("clv", help="predictive CLV model")
    p.add_argument("action", choices=["fit"], help="fit BG/NBD + Gamma-Gamma on the customers in Redis")
    p.add_argument("--as-of", default=None, help="fit as of this time (default: the stream's time, never the clock)")
    p.set_defaults(func=cmd_clv)

    p = sub.add_parser("model", help="the upsell-propensity model")
    p.add_argument("action", choices=["reset"], help="remove the model snapshot (e.g. after it was refused)")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("value", help="which touchpoints, channels and stages create or lose value")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_value)

    p = sub.add_parser("alerts", help="follow the alerts topic")
    p.add_argument("action", choices=["tail"], help="tail: print alerts as they are published (Ctrl-C stops)")
    p.add_argument("--type", choices=["stalled_critical_path", "drop_off", "upsell_opportunity"],
                   help="only this type")
    p.add_argument("--min-clv", type=float, default=None, help="only customers worth at least this much")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest alert, not the next one")
    p.add_argument("--max", type=_positive_int, default=None, help="stop after this many alerts")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without an alert")
    p.add_argument("--json", action="store_true", help="one JSON alert per line")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("backfill", help="publish a history (JSON lines or CSV) to the touchpoints topic")
    p.add_argument("file", help="JSON lines or CSV with a header row; - reads standard input")
    p.add_argument("--rate", type=float, default=0.0, help="lines per second (default 0: as fast as possible)")
    p.add_argument("--dry-run", action="store_true",
                   help="publish nothing: check every line and say what the worker would dead-letter")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the worker to apply what was sent")
    p.add_argument("--timeout", type=float, default=600.0, help="how long to wait for the worker (600 s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("bench", help="benchmark the whole pipeline on the local stack against a naive baseline")
    p.add_argument("--quick", action="store_true", help="a short smoke run (about two minutes)")
    p.add_argument("--json", type=Path, default=Path("bench-results/bench.json"), help="where to write the figures")
    p.add_argument("--events", type=_positive_int, default=None, help="records per drain run; 2x for scale (40000)")
    p.add_argument("--customers", type=_positive_int, default=None, help="customers for the memory figure (100000)")
    p.add_argument("--pairs", type=_positive_int, default=None,
                   help="drain rounds, each running ours and every peer (2; quick 1)")
    p.add_argument("--rate", type=float, default=None,
                   help="offered load of the latency run, events/s (10000; a 2000/s run comes first)")
    p.add_argument("--seed", type=int, default=None, help="simulator seed (7)")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of: drain,cluster,scale,latency,memory,deadlines")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("customer", help="print one customer's journey state")
    p.add_argument("customer_id", help="the customer id")
    p.add_argument("--as-of", default=None, help="value figures as of this time (default: the stream's time)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_customer)
    return parser


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, MapFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Unavailable, StackError, TopicError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (RedisError, KafkaError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("Is the stack running? Try `journey stack status` / `journey stack up`.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `journey ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
