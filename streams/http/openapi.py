"""The worker's HTTP API as an OpenAPI 3.1 document (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

_JSON = {"application/json": {"schema": {"type": "object"}}}


def _get(summary: str, *, personal: bool = False, params: list[dict[str, Any]] | None = None,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": _JSON}}}
    if params:
        op["parameters"] = params
    if personal:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = {"description": "missing or wrong bearer token (or not loopback without a token)"}
    if extra:
        op["responses"].update(extra)
    return op


CUSTOMER = {"name": "customer_id", "in": "path", "required": True, "schema": {"type": "string"}}
DAYS = {"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 400}}
AS_OF = {"name": "as_of", "in": "query", "schema": {"type": "string"}, "description": "ISO-8601 or epoch ms"}
CHANNEL = {"name": "channel", "in": "query", "schema": {"type": "string"}, "description": "an acquisition channel"}
COHORT = {"name": "cohort", "in": "query", "schema": {"type": "string"},
          "description": "a weekly acquisition cohort (first seen): 2026-W47 or a date in that week"}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "journey-tracker worker", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/customers/{customer_id}": {
                "get": _get("A customer's journey, value (clv), upsell propensity and open alerts", personal=True,
                            params=[CUSTOMER],
                            extra={"404": {"description": "unknown customer"}}),
                "delete": _get("Erase a customer (right to be forgotten); publishes a tombstone", personal=True,
                               params=[CUSTOMER]),
            },
            "/journey/funnel": {"get": _get("Customers currently in each stage")},
            "/journey/gaps": {"get": _get("Expected vs actual transition times, conversion and drop-off rates",
                                          params=[DAYS, AS_OF, CHANNEL, COHORT],
                                          extra={"400": {"description": "bad days, as_of or segment"}})},
            "/journey/value": {"get": _get("Value attributed to touchpoints, channels, stages; value lost",
                                           params=[CHANNEL, COHORT],
                                           extra={"400": {"description": "bad segment"}})},
            "/journey/kpis": {"get": _get("Repeat purchase and churn rates, retention cohorts, NPS, CSAT, CAC and "
                                          "CLV/CAC per channel, in event time", params=[DAYS, AS_OF],
                                          extra={"400": {"description": "bad days or as_of"}})},
            "/journey/uplift": {"get": _get("Per alert type: treated vs held-out customers' conversion and revenue "
                                            "after the alert, the uplift and its 95 % interval",
                                            params=[DAYS, AS_OF], extra={"400": {"description": "bad days or as_of"}})},
            "/clv/model": {"get": _get("The newest CLV model version and parameters")},
            "/model": {"get": _get("The upsell-propensity model: version, examples learned, predictions pending, "
                                   "ROC AUC / log loss / accuracy since start and recent, calibration",
                                   extra={"404": {"description": "propensity scoring is off in the journey map"}})},
            "/alerts/recent": {"get": _get("The latest alerts this worker published (pseudonymised)")},
            "/worker/stats": {"get": _get("This worker's counters")},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/healthz": {"get": _get("Liveness: Kafka and Redis reachable",
                                     extra={"503": {"description": "degraded"}})},
            "/readyz": {"get": _get("Readiness: Kafka and Redis reachable and partitions assigned",
                                    extra={"503": {"description": "not ready"}})},
            "/": {"get": {"summary": "The live dashboard", "responses": {"200": {"description": "HTML"}}}},
        },
    }
