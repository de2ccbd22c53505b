"""HTTP views on the worker's web port: customers, funnel, gaps, value, models, health and counters.

The views only see :class:`~streams.service.status.WorkerStatus` and the shared queries
(``streams/service/queries.py``), never the worker's internals.
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View
from redis.exceptions import RedisError

from models.events import parse_timestamp
from streams.http.openapi import openapi_document
from streams.service import queries
from streams.service.status import WorkerStatus
from streams.settings import LOOPBACK

DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


class BadRequest(Exception):
    """A query parameter a user got wrong; answered with 400 and this message."""


def as_of_param(request: Request) -> int | None:
    """The ``as_of`` query parameter (ISO-8601 with a zone, or epoch ms) as epoch ms."""
    raw = request.query.get("as_of")
    if raw is None:
        return None
    parsed = parse_timestamp(int(raw) if raw.lstrip("-").isdigit() else raw, min_ms=-(2**62))
    if not isinstance(parsed, int):
        raise BadRequest("as_of must be an ISO-8601 time with a zone (2026-11-24T00:00:00Z) or epoch milliseconds")
    return parsed


def days_param(request: Request) -> int:
    try:
        days = int(request.query.get("days", "30"))
    except ValueError:
        raise BadRequest("days must be a whole number from 1 to 400") from None
    if not 1 <= days <= 400:
        raise BadRequest("days must be a whole number from 1 to 400")
    return days


def segment_params(request: Request) -> dict[str, str | None]:
    """``channel=`` / ``cohort=`` (one of them): the segment of a gap or value report."""
    return {"channel": request.query.get("channel"), "cohort": request.query.get("cohort")}


async def _tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def register_views(app: faust.App, status: WorkerStatus) -> None:
    """Attach the worker's HTTP views to the Faust app."""
    settings = status.settings

    def refused(view: View, request: Request) -> Response | None:
        """401 without the right bearer token. Without a configured token (only possible when bound to
        loopback), callers on this machine only, and never through a proxy."""
        token = settings.api_token
        if token is None:
            if request.remote in LOOPBACK and not any(h in request.headers for h in PROXY_HEADERS):
                return None
            return view.json({"error": "customer data is only served to this machine without a proxy "
                                       "(set JOURNEY_API_TOKEN)"}, status=401)
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return view.json({"error": "missing or wrong bearer token"}, status=401,
                         headers={"WWW-Authenticate": 'Bearer realm="journey-tracker"'})

    def bad(view: View, exc: BadRequest) -> Response:
        return view.json({"error": str(exc)}, status=400)

    @app.page("/customers/{customer_id}")
    class CustomerView(View):
        async def get(self, request: Request, customer_id: str) -> Response:
            if (denied := refused(self, request)) is not None:
                return denied
            try:
                as_of = as_of_param(request)
            except BadRequest as exc:
                return bad(self, exc)
            body = await queries.customer_view(status.queries, status.clv, status.rules, customer_id, as_of_ms=as_of)
            if body is None:
                return self.json({"error": f"unknown customer {customer_id!r}"}, status=404)
            return self.json(body)

        async def delete(self, request: Request, customer_id: str) -> Response:
            if (denied := refused(self, request)) is not None:
                return denied
            outcome = await status.erase(customer_id, requested_by=f"api from {request.remote}")
            code = 202 if outcome == "pending" else 200
            return self.json({"customer_id": customer_id, "erased": outcome == "erased", "status": outcome},
                             status=code)

    @app.page("/journey/funnel")
    class FunnelView(View):
        async def get(self, request: Request) -> Response:
            try:
                as_of = as_of_param(request)
            except BadRequest as exc:
                return bad(self, exc)
            return self.json(await queries.funnel_view(status.queries, status.journey, as_of))

    @app.page("/journey/gaps")
    class GapsView(View):
        async def get(self, request: Request) -> Response:
            try:
                days, as_of = days_param(request), as_of_param(request)
                return self.json(await queries.gaps_view(status.queries, status.journey, days, as_of,
                                                         **segment_params(request)))
            except (BadRequest, queries.SegmentError) as exc:
                return self.json({"error": str(exc)}, status=400)

    @app.page("/journey/value")
    class ValueView(View):
        async def get(self, request: Request) -> Response:
            try:
                return self.json(await queries.value_view(status.queries, status.journey, **segment_params(request)))
            except (BadRequest, queries.SegmentError) as exc:
                return self.json({"error": str(exc)}, status=400)

    @app.page("/journey/kpis")
    class KpisView(View):
        async def get(self, request: Request) -> Response:
            try:
                days, as_of = days_param(request), as_of_param(request)
            except BadRequest as exc:
                return bad(self, exc)
            return self.json(await queries.kpis_view(status.queries, status.rules, days, as_of))

    @app.page("/journey/uplift")
    class UpliftView(View):
        async def get(self, request: Request) -> Response:
            try:
                days = days_param(request) if "days" in request.query else None
                as_of = as_of_param(request)
            except BadRequest as exc:
                return bad(self, exc)
            return self.json(await queries.uplift_view(status.queries, status.rules, days, as_of))

    @app.page("/clv/model")
    class ClvModelView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            await status.clv.load()
            return self.json(queries.clv_model_view(status.clv))

    async def reachable() -> tuple[bool, bool]:
        """Whether Kafka (a TCP connect to the bootstrap server) and Redis (PING, every node) answer."""
        try:
            redis_ok = await asyncio.wait_for(status.ping_redis(), 2.0)
        except (RedisError, OSError, TimeoutError):
            redis_ok = False
        return await _tcp_reachable(*settings.kafka_host_port), redis_ok

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            kafka_ok, redis_ok = await reachable()
            ok = redis_ok and kafka_ok
            model = status.model_status() if status.scoring_enabled else None
            body: dict[str, Any] = {
                "status": "ok" if ok else "degraded",
                "kafka": {"reachable": kafka_ok, "bootstrap": settings.kafka_bootstrap},
                "redis": {"reachable": redis_ok},
            }
            if model is not None:
                body["model"] = {"learning": model["learning"], "learning_stopped": model["learning_stopped"]}
            return self.json(body, status=200 if ok else 503)

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            kafka_ok, redis_ok = await reachable()
            assigned = status.owned()
            ready = redis_ok and kafka_ok and bool(assigned)
            body = {"ready": ready, "kafka": kafka_ok, "redis": redis_ok, "assigned_partitions": assigned}
            return self.json(body, status=200 if ready else 503)

    @app.page("/")
    class DashboardView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            page = DASHBOARD.read_text(encoding="utf-8") if DASHBOARD.exists() else "<h1>journey-tracker</h1>"
            return self.html(page)

    @app.page("/model")
    class ModelView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            if not status.scoring_enabled:
                return self.json({"error": "propensity scoring is off: the journey map has no propensity section"},
                                 status=404)
            report = await status.model_report_now() or _empty_report(settings.model_kind, settings.model_window)
            spec = status.journey.propensity
            totals = await status.queries.aggregates()
            return self.json({
                **report,
                "predictions_pending": totals.get("predictions_pending", 0),
                **status.model_status(),
                "score_after": list(spec.score_after),
                "upsell": list(spec.upsell),
                "horizon_seconds": spec.horizon_s,
                "alert_threshold": spec.alert_threshold,
            })

    @app.page("/alerts/recent")
    class RecentAlertsView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            return self.json({"alerts": status.recent_alerts()})

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            return self.bytes(await status.metrics(), content_type="text/plain; version=0.0.4")

    @app.page("/openapi.json")
    class OpenApiView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            return self.json(openapi_document())

    @app.page("/worker/stats")
    class StatsView(View):
        async def get(self, request: Request) -> Response:  # noqa: ARG002
            from models.durations import iso

            return self.json({**status.counters(),
                              "watermarks": {str(p): iso(ms) for p, ms in status.watermarks().items()}})


def _empty_report(kind: str, window: int) -> dict[str, Any]:
    """``/model`` before anything was learned."""
    return {
        "version": 0, "model": kind, "examples_learned": 0, "examples_evaluated": 0,
        "roc_auc": None, "log_loss": None, "accuracy": None,
        "recent": {"window": window, "examples": 0, "roc_auc": None, "log_loss": None, "accuracy": None},
        "calibration": [], "checkpointed_at": None, "history": [],
    }
