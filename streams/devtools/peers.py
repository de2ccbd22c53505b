"""The peers `journey bench` measures the worker against, in the same run, on the same records.

``python -m streams.devtools.peers <name>`` drains ``JOURNEY_TOUCHPOINTS_TOPIC`` from its start
(consumer group ``JOURNEY_APP_ID``) and serves ``{"consumed": N, ...}`` at
``http://127.0.0.1:$JOURNEY_WEB_PORT/worker/stats``, which is how the bench counts:

- ``faust_bare``: the floor of a plain Faust agent: ``stream.take(500, within=0.05)`` and
  ``orjson.loads`` of each record, no other work;
- ``faust_batch``: the same with this project's batch delivery (``kafka+batch://``): the floor
  the worker builds on;
- ``quix``: a Quix Streams 3.x application (the ``bench`` extra) doing per-customer work in its
  RocksDB state: decode, drop an event id already seen, keep the furthest stage, the count of each
  touchpoint and the last event time. It does *not* do what else the worker does: no money, no
  deadlines or alerts, no gap statistics, no value attribution, no propensity, no DLQ, no
  exactly-once state (its state is at-least-once with the default processing guarantee).

The naive baseline (``streams/devtools/naive_worker.py``) is the fourth.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from streams.settings import Settings

STAGES = {"ad_click": 0, "site_visit": 0, "signup": 1, "product_view": 1, "add_to_cart": 2, "checkout": 2,
          "purchase": 2, "onboarding_complete": 3, "upgrade": 3, "refund": 3, "review": 4}


class Counter:
    def __init__(self) -> None:
        self.consumed = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.consumed += n


def serve_stats(port: int, counter: Counter) -> None:
    """``/worker/stats`` on a thread (the bench polls it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"consumed": counter.consumed, "applied": counter.consumed, "duplicates": 0,
                               "dead_letters": 0}).encode()
            self.send_response(200 if self.path == "/worker/stats" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def loads(value: bytes | None) -> Any:
    """``orjson.loads``, None for what is not JSON (the mix has malformed records)."""
    try:
        return orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None


def faust_app(settings: Settings, *, batch: bool, counter: Counter) -> Any:
    import faust

    broker = settings.broker_url.replace("kafka://", "kafka+batch://") if batch else settings.broker_url
    app = faust.App(settings.app_id, broker=broker, store="memory://", web_enabled=False, env={},
                    datadir=str(settings.home / "faust-data"), consumer_auto_offset_reset="earliest",
                    topic_partitions=settings.topic_partitions, broker_max_poll_records=settings.batch_size)
    if batch:
        from streams.kafka.transport import BatchSchema

        topic = app.topic(settings.touchpoints_topic, schema=BatchSchema(), maxsize=16)

        @app.agent(topic)
        async def drain(stream: Any) -> None:
            async for records in stream:
                for r in records:
                    loads(r.value)
                counter.add(len(records))
    else:
        topic = app.topic(settings.touchpoints_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")

        @app.agent(topic)
        async def drain(stream: Any) -> None:
            async for values in stream.take(500, within=0.05):
                for v in values:
                    loads(v)
                counter.add(len(values))

    return app


def quix_app(settings: Settings, counter: Counter) -> None:
    from quixstreams import Application, State

    app = Application(broker_address=",".join(settings.bootstrap_servers), consumer_group=settings.app_id,
                      auto_offset_reset="earliest", state_dir=str(settings.home / "quix-state"),
                      loglevel="WARNING")
    topic = app.topic(settings.touchpoints_topic, value_deserializer="bytes", key_deserializer="bytes")

    def journey(value: bytes, state: State) -> None:
        counter.add(1)
        try:
            e = orjson.loads(value)
            eid, tp, ts = e["event_id"], e["touchpoint"], e["timestamp"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        seen = state.get("seen", [])
        if eid in seen:
            return
        seen.append(eid)
        state.set("seen", seen[-200:])
        state.set("stage", max(state.get("stage", 0), STAGES.get(tp, 0)))
        counts = state.get("counts", {})
        counts[tp] = counts.get(tp, 0) + 1
        state.set("counts", counts)
        if isinstance(ts, int):
            state.set("last_seen", max(state.get("last_seen", 0), ts))

    app.dataframe(topic).update(journey, stateful=True)
    app.run()


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else ""
    settings = Settings()
    counter = Counter()
    serve_stats(settings.web_port, counter)
    if name in ("faust_bare", "faust_batch"):
        (settings.home / "faust-data").mkdir(parents=True, exist_ok=True)
        app = faust_app(settings, batch=name == "faust_batch", counter=counter)
        app.Worker(loglevel="warning").execute_from_commandline()
        return 0
    if name == "quix":
        quix_app(settings, counter)
        return 0
    print(f"error: unknown peer {name!r}; choose faust_bare, faust_batch or quix", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
