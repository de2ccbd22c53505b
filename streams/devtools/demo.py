"""``journey demo``: the main job in one command — stack, topics, worker, simulator, live summary."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from streams.devtools import stack
from streams.devtools.simulate import PublishSummary, publish, simulate
from streams.kafka.topics import ensure_topics
from streams.settings import Settings


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own worker on loopback
        return orjson.loads(response.read())


def _start_worker(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    log_path = settings.home / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
    return proc, str(log_path)


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log_path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise stack.StackError(f"the worker exited with code {proc.returncode}; see {log_path}")
        try:
            if _get(f"{base}/healthz")["status"] == "ok":
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.5)
    raise stack.StackError(f"the worker did not become healthy within {timeout:.0f}s; see {log_path}")


def _summary_line(stats: dict[str, Any], funnel: dict[str, Any], rate: float, model: dict[str, Any] | None) -> str:
    stages = " ".join(f"{s['stage']}={s['customers']}" for s in funnel["stages"])
    upsell = stats.get("alerts_emitted_by_type", {}).get("upsell_opportunity:open", 0)
    auc = model.get("recent", {}).get("roc_auc") if model else None
    learned = model.get("examples_learned", 0) if model else 0
    return (
        f"{rate:7.0f} ev/s | applied {stats['applied']:>7} | dup {stats['duplicates']:>5} | "
        f"DLQ {stats['dead_letters']:>4} | alerts {stats['alerts_emitted']:>5} (upsell {upsell:>4}) | "
        f"model AUC {'  -  ' if auc is None else f'{auc:.3f}'} on {learned:>5} learned | {stages}"
    )


def _model(base: str) -> dict[str, Any] | None:
    try:
        return _get(f"{base}/model")
    except (OSError, ValueError):  # 404 when scoring is off in the map
        return None


def run_demo(
    settings: Settings,
    *,
    customers: int,
    rate: float,
    seed: int | None,
    exit_when_drained: bool,
) -> int:
    """Run the whole pipeline on the local stack and print a live summary until drained or Ctrl-C."""
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    say("== starting the local stack (Kafka + Redis)")
    stack.up(settings, echo=say)
    created = ensure_topics(settings)
    if created:
        say(f"== created topics: {', '.join(created)}")
    base = f"http://{settings.web_host}:{settings.web_port}"
    say(f"== starting the worker (log: {settings.home / 'demo-worker.log'})")
    proc, log_path = _start_worker(settings)
    try:
        _wait_healthy(base, proc, log_path)
        seed = seed if seed is not None else random.SystemRandom().randrange(1_000_000)
        # 90 days of history, so that most scoring points reach the end of their horizon (labels)
        # half of them browse anonymously until signup: the demo shows their journeys stitched
        # customers of this run only (c<seed>-000042): a second run adds customers instead of sending
        # 90-day-old events to the first run's customers (refused as too late by their dedupe window)
        truth, records = simulate(customers, seed=seed, now_ms=int(time.time() * 1000), days=90, anonymous_share=0.5,
                                  survey_share=0.3, id_prefix=f"c{seed}-")
        say(f"== simulating {customers} customers at {rate:.0f} events/s (seed {seed})")
        outcome: dict[str, PublishSummary | BaseException] = {}
        stop = threading.Event()

        def feed() -> None:
            try:
                outcome["summary"] = publish(
                    records,
                    bootstrap_servers=settings.bootstrap_servers,
                    topic=settings.touchpoints_topic,
                    rate=rate,
                    progress=False,
                    stop=stop,
                )
            except BaseException as exc:  # reported below, in the main thread
                outcome["error"] = exc

        feeder = threading.Thread(target=feed, name="simulator", daemon=True)
        feeder.start()
        start = _get(f"{base}/worker/stats")
        last_consumed, last_t, idle_since = start["consumed"], time.monotonic(), time.monotonic()
        tty = sys.stdout.isatty()
        while True:
            time.sleep(1.0)
            if proc.poll() is not None:
                raise stack.StackError(f"the worker exited with code {proc.returncode}; see {log_path}")
            stats, funnel = _get(f"{base}/worker/stats"), _get(f"{base}/journey/funnel")
            now = time.monotonic()
            ev_rate = (stats["consumed"] - last_consumed) / (now - last_t)
            if stats["consumed"] != last_consumed:
                idle_since = now
            last_consumed, last_t = stats["consumed"], now
            line = _summary_line(stats, funnel, ev_rate, _model(base))
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
            if "error" in outcome:
                raise outcome["error"]  # type: ignore[misc]
            sent = outcome.get("summary")
            drained = isinstance(sent, PublishSummary) and stats["consumed"] - start["consumed"] >= sent.sent
            if drained or (sent is not None and now - idle_since > 10):
                break
        print()
        assert isinstance(sent, PublishSummary)
        say(
            f"== done: {sent.sent} records published at {sent.rate:.0f}/s; worker applied {stats['applied']}, "
            f"duplicates {stats['duplicates']}, dead letters {stats['dead_letters']} "
            f"({', '.join(f'{k}={v}' for k, v in sorted(stats['dead_letters_by_reason'].items()))})"
        )
        by_type = ", ".join(f"{k}={v}" for k, v in stats["alerts_emitted_by_type"].items()) or "none yet"
        say(f"== alerts on topic {settings.alerts_topic}: {by_type}")
        if model := _model(base):
            fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            say(
                f"== propensity model v{model['version']}: ROC AUC {fmt(model['roc_auc'])} since start, "
                f"{fmt(model['recent']['roc_auc'])} over the last {model['recent']['examples']} labels; "
                f"log loss {fmt(model['log_loss'])}; {model['predictions_pending']} predictions wait for labels "
                f"(curl {base}/model)"
            )
        example = next((c.customer_id for c in truth if c.touchpoints), truth[0].customer_id)
        say(f"== look a customer up: curl {base}/customers/{example}")
        stitched = next((c for c in truth if c.linked and len(c.devices) == 2), None)
        if stitched is not None:
            say(f"== a stitched journey (browsed anonymously on two devices, then signed up): "
                f"curl {base}/customers/{stitched.customer_id}   one of its devices: "
                f"curl {base}/customers/{stitched.devices[1]}")
        kpis = _get(f"{base}/journey/kpis")
        pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        nps = kpis["nps"]["overall"]["nps"]
        say(f"== KPIs: repeat purchase {pct(kpis['repeat_purchase_rate'])}, churn {pct(kpis['churn_rate'])}, "
            f"NPS {'-' if nps is None else f'{nps:.0f}'} (journey kpis; curl {base}/journey/kpis); "
            f"what alerts are worth: journey uplift")
        say(f"== funnel: curl {base}/journey/funnel   gaps: curl {base}/journey/gaps   health: curl {base}/healthz")
        if exit_when_drained:
            return 0
        say("== the worker keeps running; press Ctrl-C to stop it")
        while proc.poll() is None:
            time.sleep(1)
        return proc.returncode or 0
    except KeyboardInterrupt:
        print()
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
