"""HTTP views on the worker's web port: customer lookup, funnel, health and counters."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View
from redis.exceptions import RedisError

from models.alerts import AlertFacts, AlertStatus, AlertType, alert_id
from models.gaps import gap_report
from models.journey import JourneyState
from models.value import value_report
from streams.openapi import openapi_document

if TYPE_CHECKING:
    from streams.app import Worker


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def customer_body(state: JourneyState) -> dict[str, Any]:
    """The JSON a customer lookup returns."""
    return {
        "customer_id": state.customer_id,
        "stage": state.stage,
        "stage_since": iso(state.stage_since_ms),
        "events": state.events,
        "first_seen": iso(state.first_seen_ms),
        "last_seen": iso(state.last_seen_ms),
        "touchpoints": dict(sorted(state.touchpoints.items())),
        "touchpoint_last_seen": {tp: iso(ms) for tp, ms in sorted(state.touchpoint_last_ms.items())},
        "path": [{"touchpoint": tp, "at": iso(ms), "channel": ch or None} for ms, tp, ch in state.path],
        "channel": state.channel,
    }


async def _tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def gaps_body(worker: Worker, days: int) -> dict[str, Any]:
    """Gap analysis over the last ``days`` event-time days (up to today)."""
    today = int(time.time() // 86400)
    counts = await worker.store.gap_counts(today - days + 1, today)
    return {"window_days": days, **gap_report(worker.journey, counts)}


def register_views(app: faust.App, worker: Worker) -> None:
    """Attach the worker's HTTP views to the Faust app."""

    def refused(view: View, request: Request) -> Response | None:
        """401 without the right bearer token; without a configured token, loopback callers only."""
        token = worker.settings.api_token
        if token is None:
            if request.remote in LOOPBACK:
                return None
            return view.json(
                {"error": "customer data is only served to this machine (set JOURNEY_API_TOKEN)"}, status=401
            )
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return view.json(
            {"error": "missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="journey-tracker"'},
        )

    @app.page("/customers/{customer_id}")
    class CustomerView(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            if (denied := refused(self, request)) is not None:
                return denied
            state = await worker.store.get(customer_id)
            if state is None:
                return self.json({"error": f"unknown customer {customer_id!r}"}, status=404)
            await worker.clv.load(max_age_s=5.0)
            propensity = await worker.propensity.customer(worker.store.journey_key(customer_id))
            if propensity is not None:
                propensity = {
                    "score": propensity["score"],
                    "scored_at": iso(propensity["scored_at_ms"]),
                    "model_version": propensity["model_version"],
                    "horizon_seconds": worker.journey.propensity.horizon_s,
                    "pending_labels": len(await worker.propensity.pending_of(customer_id)),
                }
            return self.json(
                {
                    **customer_body(state),
                    "clv": worker.value_of(state),
                    "propensity": propensity,
                    "open_alerts": await open_alerts(customer_id),
                }
            )

        async def delete(self, request: Request, customer_id: str) -> Response:
            if (denied := refused(self, request)) is not None:
                return denied
            erased = await worker.erase(customer_id, requested_by=f"api from {request.remote}")
            return self.json({"customer_id": customer_id, "erased": erased})

    async def reachable() -> tuple[bool, bool]:
        """Whether Kafka (a TCP connect to the bootstrap server) and Redis (PING) answer."""
        try:
            redis_ok = bool(await asyncio.wait_for(worker.redis.ping(), 2.0))
        except (RedisError, OSError, TimeoutError):
            redis_ok = False
        return await _tcp_reachable(*worker.settings.kafka_host_port), redis_ok

    async def open_alerts(customer_id: str) -> list[dict[str, Any]]:
        deadlines = await worker.store.get_deadlines(customer_id, partition=0)
        out = []
        for kind, alert in (
            (AlertType.STALLED_CRITICAL_PATH, deadlines.stall_open),
            (AlertType.DROP_OFF, deadlines.drop_open),
        ):
            if alert is not None:
                facts = AlertFacts(
                    kind,
                    AlertStatus.OPEN,
                    customer_id,
                    alert.stage,
                    alert.touchpoint,
                    alert.anchor_ms,
                    alert.expected_ms,
                    alert.anchor_ms + alert.expected_ms,
                    alert.next_touchpoint,
                    alert.severity,
                )
                out.append(
                    {
                        "alert_id": alert_id(facts),
                        "type": kind.value,
                        "stage": alert.stage,
                        "touchpoint": alert.touchpoint,
                        "next_touchpoint": alert.next_touchpoint,
                        "since": iso(alert.anchor_ms + alert.expected_ms),
                        "severity": alert.severity,
                    }
                )
        return out

    @app.page("/journey/funnel")
    class FunnelView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            counts = await worker.store.funnel()
            gaps = {s["stage"]: s for s in (await gaps_body(worker, 30))["stages"]}
            stages = [
                {
                    "stage": s,
                    "customers": n,
                    "reached_30d": gaps[s]["reached"],
                    "conversion_rate_30d": gaps[s]["converted_to_next"],
                    "drop_off_rate_30d": gaps[s]["drop_off_rate"],
                }
                for s, n in counts.items()
            ]
            return self.json({"stages": stages})

    @app.page("/journey/gaps")
    class GapsView(View):
        async def get(self, request: Request) -> Response:
            try:
                days = int(request.query.get("days", "30"))
                if not 1 <= days <= 400:
                    raise ValueError
            except ValueError:
                return self.json({"error": "days must be a whole number from 1 to 400"}, status=400)
            return self.json(await gaps_body(worker, days))

    @app.page("/journey/value")
    class ValueView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            return self.json(value_report(worker.journey, await worker.store.value_totals()))

    @app.page("/clv/model")
    class ClvModelView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            await worker.clv.load()
            fitted = worker.clv.current
            return self.json(
                {
                    **worker.clv.current_meta,
                    "bgnbd": dataclasses.asdict(fitted.bgnbd) if fitted else None,
                    "gamma_gamma": dataclasses.asdict(fitted.gamma_gamma) if fitted and fitted.gamma_gamma else None,
                    "n_customers": fitted.n_customers if fitted else None,
                    "log_likelihood_bgnbd": fitted.log_likelihood_bgnbd if fitted else None,
                }
            )

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            kafka_ok, redis_ok = await reachable()
            ok = redis_ok and kafka_ok
            body = {
                "status": "ok" if ok else "degraded",
                "kafka": {"reachable": kafka_ok, "bootstrap": worker.settings.kafka_bootstrap},
                "redis": {"reachable": redis_ok},
            }
            return self.json(body, status=200 if ok else 503)

    @app.page("/")
    class DashboardView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            page = DASHBOARD.read_text(encoding="utf-8") if DASHBOARD.exists() else "<h1>journey-tracker</h1>"
            return self.html(page)

    @app.page("/model")
    class ModelView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            if not worker.scoring_enabled:
                return self.json(
                    {"error": "propensity scoring is off: the journey map has no propensity section"}, status=404
                )
            report = await worker.propensity.report()
            if report is None:  # nothing learned yet
                report = {
                    "version": 0,
                    "model": worker.settings.model_kind,
                    "examples_learned": 0,
                    "examples_evaluated": 0,
                    "roc_auc": None,
                    "log_loss": None,
                    "accuracy": None,
                    "recent": {
                        "window": worker.settings.model_window,
                        "examples": 0,
                        "roc_auc": None,
                        "log_loss": None,
                        "accuracy": None,
                    },
                    "calibration": [],
                    "checkpointed_at": None,
                    "history": [],
                }
            # every partition of the topic (this worker's and the others'), without scanning the keyspace
            partitions = range(max([worker.settings.topic_partitions - 1, *worker.watermarks.partitions]) + 1)
            pending = await worker.propensity.pending(list(partitions))
            spec = worker.journey.propensity
            return self.json(
                {
                    **report,
                    "predictions_pending": pending,
                    "scoring_model_version": worker.scorer.version,
                    "snapshots_refused": worker.scorer.refused,
                    "score_after": list(spec.score_after),
                    "upsell": list(spec.upsell),
                    "horizon_seconds": spec.horizon_s,
                    "alert_threshold": spec.alert_threshold,
                }
            )

    @app.page("/alerts/recent")
    class RecentAlertsView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            return self.json({"alerts": list(worker.alerts.recent) if worker.alerts else []})

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            collector = worker.metrics.collector
            owned = [tp for tp in app.consumer.assignment() if tp.topic == worker.settings.touchpoints_topic]
            collector.lag = {}
            for tp in owned:
                high = app.consumer.highwater(tp)
                if high is not None:
                    collector.lag[tp.partition] = max(0, high - worker.offsets.get(tp.partition, -1) - 1)
            try:
                collector.pending_deadlines = sum([await worker.store.pending_deadlines(tp.partition) for tp in owned])
            except (RedisError, OSError):
                collector.pending_deadlines = None
            return self.bytes(worker.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            kafka_ok, redis_ok = await reachable()
            assigned = sorted(
                tp.partition for tp in app.consumer.assignment() if tp.topic == worker.settings.touchpoints_topic
            )
            ready = redis_ok and kafka_ok and bool(assigned)
            body = {"ready": ready, "kafka": kafka_ok, "redis": redis_ok, "assigned_partitions": assigned}
            return self.json(body, status=200 if ready else 503)

    @app.page("/openapi.json")
    class OpenApiView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            return self.json(openapi_document())

    @app.page("/worker/stats")
    class StatsView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            alerts = worker.alerts.emitted if worker.alerts else {}
            owned = sorted(worker.watermarks.partitions)
            return self.json(
                {
                    "uptime_seconds": round(time.time() - worker.started_at, 1),
                    **worker.stats.as_dict(),
                    "alerts_emitted": sum(alerts.values()),
                    "alerts_emitted_by_type": dict(sorted(alerts.items())),
                    "watermarks": {
                        str(p): iso(worker.watermarks.partitions[p].watermark_ms)
                        for p in owned
                        if worker.watermarks.partitions[p].watermark_ms > 0
                    },
                }
            )
