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
        anonymous_share=args.anonymous_share, survey_share=args.survey_share,
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
    report = with_store(settings, lambda store: _segmented(gaps_view(store, journey, args.days, as_of,
                                                                     channel=args.channel, cohort=args.cohort)))
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


async def _segmented(view: Awaitable[T]) -> T:
    """A report for a segment: a segment the user got wrong is a user error."""
    from streams.service.queries import SegmentError

    try:
        return await view
    except SegmentError as exc:
        raise UserError(str(exc)) from None


def cmd_kpis(args: argparse.Namespace) -> int:
    from streams.service.pipeline import rules_of
    from streams.service.queries import kpis_view

    settings = _settings()
    rules = rules_of(settings, load_journey_map(settings.map))
    as_of = _as_of(args.as_of)
    r = with_store(settings, lambda store: kpis_view(store, rules, args.days, as_of))
    if args.json:
        print(orjson.dumps(r).decode())
        return 0

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x: float | None, digits: int = 2) -> str:
        return "-" if x is None else f"{x:,.{digits}f}"

    cur = settings.currency
    print(f"Journey KPIs as of {r['as_of'] or '(nothing applied yet)'} (event time)\n")
    print(f"  repeat purchase rate  {pct(r['repeat_purchase_rate']):>8}   ({r['repeat_buyers']:,} of "
          f"{r['customers_buying']:,} buying customers ordered twice or more)")
    print(f"  churn rate            {pct(r['churn_rate']):>8}   ({r['churned']:,} silent after buying, longer than "
          "the map allows)")
    nps, csat = r["nps"]["overall"], r["csat"]["overall"]
    last = f"last {r['window_days']} d"
    print(f"  NPS                   {num(nps['nps'], 1):>8}   ({nps['responses']:,} answers, {last})")
    print(f"  CSAT                  {num(csat['csat']):>8}   ({csat['responses']:,} answers, {last})")
    print(f"\nAcquisition, last {r['window_days']} days ({cur}): CLV = net revenue to date x margin")
    print(f"  {'channel':<12} {'acquired':>9} {'spend':>11} {'CAC':>9} {'CLV':>9} {'CLV/CAC':>8}")
    for a in r["acquisition"]:
        print(f"  {a['channel']:<12} {a['customers_acquired']:>9,} {a['spend']:>11,.2f} {num(a['cac']):>9} "
              f"{num(a['clv_per_customer']):>9} {num(a['clv_to_cac']):>8}")
    print("\nRetention: share of each weekly cohort (first seen) active k weeks later")
    weeks = [k for k in (r["retention"][0] if r["retention"] else {}) if k.startswith("week_")]
    print(f"  {'cohort':<10} {'customers':>9} " + " ".join(f"{'wk ' + w[5:]:>7}" for w in weeks))
    for row in r["retention"]:
        print(f"  {row['cohort']:<10} {row['customers']:>9,} " + " ".join(f"{pct(row[w]):>7}" for w in weeks))
    return 0


def cmd_uplift(args: argparse.Namespace) -> int:
    from streams.service.pipeline import rules_of
    from streams.service.queries import uplift_view

    settings = _settings()
    rules = rules_of(settings, load_journey_map(settings.map))
    r = with_store(settings, lambda store: uplift_view(store, rules, args.days, _as_of(args.as_of)))
    if args.json:
        print(orjson.dumps(r).decode())
        return 0

    days = "every alert so far" if args.days is None else f"alerts of the last {args.days} days"
    print(f"What alerts are worth ({days}, measured {r['measured_for_seconds'] / 86400:g} days after each), "
          f"as of {r['as_of'] or '(nothing applied yet)'}\n")
    print(f"  {'alert type':<22} {'treated':>8} {'held out':>8} {'conv. t':>8} {'conv. h':>8} "
          f"{'uplift (points, 95% CI)':>28} {'revenue t/h':>15}")
    for a in r["alert_types"]:
        ci = "-" if a["uplift"] is None else \
            f"{100 * a['uplift']:+.1f} [{100 * a['ci_low']:+.1f}, {100 * a['ci_high']:+.1f}]"
        rev = "-" if a["revenue_treated"] is None or a["revenue_held_out"] is None else \
            f"{a['revenue_treated']:.2f}/{a['revenue_held_out']:.2f}"
        conv_t = "-" if a["conversion_treated"] is None else f"{100 * a['conversion_treated']:.1f}%"
        conv_h = "-" if a["conversion_held_out"] is None else f"{100 * a['conversion_held_out']:.1f}%"
        print(f"  {a['type']:<22} {a['treated']:>8,} {a['held_out']:>8,} {conv_t:>8} {conv_h:>8} {ci:>28} {rev:>15}")
    print("\nConversion: reached a later stage within the window. An interval that excludes 0 is an effect.")
    return 0


def cmd_clv(args: argparse.Namespace) -> int:
    from streams.service.clv import ClvModels, selection_text
    from streams.state.clv_store import RedisClvStore

    settings = _settings()
    as_of = _as_of(args.as_of)
    if args.holdout_days is not None and not args.validate:
        raise UserError("--holdout-days goes with --validate: journey clv fit --validate --holdout-days N")

    async def refit(store: Any) -> dict[str, Any]:
        models = ClvModels(RedisClvStore(store.redis, store.keys), store)
        if args.validate:
            return await models.validate(as_of, holdout_days=args.holdout_days)
        return await models.refit(as_of)

    result = with_store(settings, refit)
    if args.validate and not args.json:
        if result["model"] != "fitted" and not result.get("selection"):
            print(f"error: cannot choose a CLV model: {result['reason']}", file=sys.stderr)
        else:
            print(selection_text(result))
    else:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if result["model"] == "fitted" else 1


def cmd_model(args: argparse.Namespace) -> int:
    from streams.state.model_store import RedisModelStore

    settings = _settings()
    if args.action == "validate":
        from streams.service.learner import EXAMPLES_KEPT, validate_kinds, validation_text

        async def recorded(store: Any) -> list[Any]:
            return await RedisModelStore(store.redis, store.keys, model_key=settings.model_secret()).learned_examples()

        examples = with_store(settings, recorded)
        if not examples:
            print(f"error: no labelled examples recorded yet under {settings.redis_prefix}: the learner keeps the "
                  f"last {EXAMPLES_KEPT:,} it learned; let the worker run until scored customers' labels settle",
                  file=sys.stderr)
            return 1
        body = validate_kinds(examples, running=settings.model_kind, window=settings.model_window)
        print(orjson.dumps(body).decode() if args.json else validation_text(body))
        return 0

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
    report = with_store(settings, lambda store: _segmented(value_view(store, journey, channel=args.channel,
                                                                      cohort=args.cohort)))
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


def cmd_spend(args: argparse.Namespace) -> int:
    import time

    from models.spend import iso_day
    from streams.ops import spend_import
    from streams.service.pipeline import limits_of

    settings = _settings()
    today = int(time.time() * 1000) // 86_400_000
    if args.action == "show":
        first = today - args.days + 1

        async def read(store: Any) -> dict[str, int]:
            return await store.spend_by_channel(first, today)

        cents = with_store(settings, read)
        if args.json:
            print(orjson.dumps({"currency": settings.currency, "first_day": iso_day(first), "last_day": iso_day(today),
                                "spend": {c: n / 100 for c, n in sorted(cents.items())}}).decode())
            return 0
        print(f"marketing spend {iso_day(first)} to {iso_day(today)} (UTC days), {settings.currency}:")
        for channel, n in sorted(cents.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {channel:<24} {n / 100:>16,.2f}")
        print(f"  {'total':<24} {sum(cents.values()) / 100:>16,.2f}" if cents else "  (none)")
        return 0

    from streams.kafka.topics import ensure_topics

    now_ms = int(time.time() * 1000)
    try:
        checked = spend_import.check(spend_import.read_lines(args.file), limits_of(settings), now_ms=now_ms)
        if checked.problems:
            shown = checked.problems[:20]
            more = len(checked.problems) - len(shown)
            raise UserError(
                f"{args.file}: {len(checked.problems)} invalid line(s), nothing was imported:\n  "
                + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))
        if not checked.lines:
            raise UserError(f"{args.file}: no spend lines to import")
        ensure_topics(settings)
        ranges = spend_import.publish(checked, bootstrap_servers=settings.bootstrap_servers,
                                      topic=settings.spend_topic)
    except spend_import.SpendImportError as exc:
        raise UserError(str(exc)) from None
    days = sorted({spend.day for _, spend in checked.lines})
    channels = {spend.channel for _, spend in checked.lines}
    print(f"sent {len(checked.lines):,} lines ({len(channels)} channels, {iso_day(days[0])} to {iso_day(days[-1])}) "
          f"to {settings.spend_topic}")
    if args.no_wait:
        return 0

    async def wait(store: Any) -> bool:
        return await spend_import.wait_handled(ranges, store.spend_offsets, timeout=args.timeout)

    if not with_store(settings, wait):
        raise Unavailable(f"the worker had not applied the spend within {args.timeout:.0f} s: is `journey worker` "
                          f"running? (the lines are on {settings.spend_topic}; it applies them when it runs)")
    from streams.ops.backfill import Summary, dead_letters_of

    reasons = dead_letters_of(Summary(ranges=ranges), bootstrap_servers=settings.bootstrap_servers,
                              source_topic=settings.spend_topic, dlq_topic=settings.dlq_topic,
                              since_ms=now_ms - 60_000)
    if reasons:  # only if the worker's settings differ from these (e.g. another JOURNEY_FX_RATES)
        raise Unavailable(f"the worker dead-lettered {sum(reasons.values())} of the lines "
                          f"({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))}): are its settings "
                          f"the same as this command's? See {settings.dlq_topic}.")
    print(f"the worker applied them: `journey spend show --days {today - days[0] + 1}` shows the totals")
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
    p.add_argument("--survey-share", type=_share, default=0.3,
                   help="share of buyers answering an NPS survey and of onboarded customers a CSAT survey (0.3)")
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
    p.add_argument("--channel", default=None, help="only customers acquired through this channel")
    p.add_argument("--cohort", default=None, help="only this weekly cohort (first seen): 2026-W47 or a date in it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_gaps)

    p = sub.add_parser("kpis", help="repeat purchase, churn, retention cohorts, NPS, CSAT, CAC and CLV/CAC")
    p.add_argument("--days", type=_positive_int, default=30, help="window of event-time days for NPS, CSAT, CAC (30)")
    p.add_argument("--as-of", default=None, help="as of this time (default: the stream's time)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_kpis)

    p = sub.add_parser("uplift", help="what each alert type is worth: treated vs held-out customers")
    p.add_argument("--days", type=_positive_int, default=None, help="only alerts of the last N days (default: all)")
    p.add_argument("--as-of", default=None, help="end of those days (default: the stream's time)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_uplift)

    p = sub.add_parser("clv", help="predictive CLV model")
    p.add_argument("action", choices=["fit"], help="fit BG/NBD + Gamma-Gamma on the customers in Redis")
    p.add_argument("--as-of", default=None, help="fit as of this time (default: the stream's time, never the clock)")
    p.add_argument("--validate", action="store_true",
                   help="choose BG/NBD or MBG/NBD by their error on a holdout period, then fit the winner")
    p.add_argument("--holdout-days", type=_holdout_days, default=None,
                   help="with --validate: the last N days are the holdout (default: the last 25%% of the history)")
    p.add_argument("--json", action="store_true", help="with --validate: machine-readable output")
    p.set_defaults(func=cmd_clv)

    p = sub.add_parser("model", help="the upsell-propensity model")
    p.add_argument("action", choices=["reset", "validate"],
                   help="reset: remove the model snapshot (e.g. after it was refused); validate: compare the model "
                        "kinds on the recorded labelled examples (changes nothing)")
    p.add_argument("--json", action="store_true", help="validate: machine-readable output")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("value", help="which touchpoints, channels and stages create or lose value")
    p.add_argument("--channel", default=None, help="only customers acquired through this channel")
    p.add_argument("--cohort", default=None, help="only this weekly cohort (first seen): 2026-W47 or a date in it")
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

    p = sub.add_parser("spend", help="marketing spend per channel and day (the input of acquisition cost)")
    spend = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = spend.add_parser("import", help="check a CSV or JSON-lines file of spend, publish it, wait until applied")
    q.add_argument("file", help="CSV with the header channel,day,amount,currency, or JSON lines; - reads stdin")
    q.add_argument("--no-wait", action="store_true", help="do not wait for the worker to apply what was sent")
    q.add_argument("--timeout", type=float, default=60.0, help="how long to wait for the worker (60 s)")
    q.set_defaults(func=cmd_spend)
    q = spend.add_parser("show", help="spend per channel over the last N UTC days")
    q.add_argument("--days", type=_positive_int, default=30, help="days up to today, UTC (30)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_spend)

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


def _holdout_days(text: str) -> int:
    from models.clv import MAX_HOLDOUT_DAYS

    value = _positive_int(text)
    if value > MAX_HOLDOUT_DAYS:
        raise argparse.ArgumentTypeError(f"at most {MAX_HOLDOUT_DAYS} (orders per day are kept "
                                         f"{MAX_HOLDOUT_DAYS + 1} days)")
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
