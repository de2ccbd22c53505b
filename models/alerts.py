"""Journey alerts: deterministic ids and the message marketing tools receive."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from models.durations import format_duration, iso
from models.events import external_id, is_anonymous


class AlertType(StrEnum):
    STALLED_CRITICAL_PATH = "stalled_critical_path"
    DROP_OFF = "drop_off"
    UPSELL_OPPORTUNITY = "upsell_opportunity"


class AlertStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What the store decided, atomically with the customer's state (times: event time, ms).

    ``anchor_ms`` is when the customer did ``touchpoint`` (the last thing they did before
    going quiet); ``due_ms = anchor_ms + expected_ms``; ``at_ms`` is the watermark when the
    alert opened, or the event time of the event that resolved it.

    An ``upsell_opportunity`` is about a scoring point instead: ``touchpoint`` is the scoring
    touchpoint done at ``anchor_ms`` (= ``at_ms``), ``expected_ms`` the propensity horizon,
    ``next_touchpoint`` the upsell, and ``score`` / ``model_version`` the prediction.
    """

    type: AlertType
    status: AlertStatus
    customer_id: str
    stage: str
    touchpoint: str
    anchor_ms: int
    expected_ms: int
    at_ms: int
    next_touchpoint: str | None = None
    severity: str = "medium"
    score: float | None = None
    model_version: int | None = None


def alert_id(facts: AlertFacts) -> str:
    """One id per customer per stall: the same facts give the same id on any replay.

    Examples
    --------
    >>> f = AlertFacts(AlertType.DROP_OFF, AlertStatus.OPEN, "c1", "purchase", "add_to_cart", 1000, 60000, 61000)
    >>> alert_id(f)
    'drop_off-...'
    >>> alert_id(f) == alert_id(AlertFacts(AlertType.DROP_OFF, AlertStatus.RESOLVED, "c1", "purchase",
    ...                                    "add_to_cart", 1000, 60000, 99000))
    True
    """
    key = f"{facts.type}|{facts.customer_id}|{facts.touchpoint}|{facts.anchor_ms}"
    return f"{facts.type}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


def reason(facts: AlertFacts) -> str:
    """One human sentence saying why.

    Examples
    --------
    >>> reason(AlertFacts(AlertType.STALLED_CRITICAL_PATH, AlertStatus.OPEN, "c1", "purchase", "checkout",
    ...                   0, 3_600_000, 7_200_000, next_touchpoint="purchase"))
    'c1 did checkout 2h ago and has not reached purchase, which is expected within 1h.'
    """
    elapsed = format_duration(max(0, facts.at_ms - facts.anchor_ms) / 1000)
    expected = format_duration(facts.expected_ms / 1000)
    if facts.type is AlertType.UPSELL_OPPORTUNITY:
        return (
            f"{facts.customer_id} is likely to take {facts.next_touchpoint} within {expected} after "
            f"{facts.touchpoint}: propensity {facts.score:.2f} (model version {facts.model_version})."
        )
    if facts.status is AlertStatus.RESOLVED:
        return f"{facts.customer_id} moved on {elapsed} after {facts.touchpoint}; the alert is resolved."
    if facts.type is AlertType.STALLED_CRITICAL_PATH:
        return (
            f"{facts.customer_id} did {facts.touchpoint} {elapsed} ago and has not reached "
            f"{facts.next_touchpoint}, which is expected within {expected}."
        )
    return (
        f"{facts.customer_id} has been silent for {elapsed} in stage {facts.stage}, longer than "
        f"the expected maximum gap of {expected}."
    )


def render(facts: AlertFacts, *, holdout: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The alert message (JSON Schema: ``models/schemas/alert.schema.json``), without ``emitted_at``.

    Everything in it is decided in event time, so a replay renders the same body; only the
    wall-clock ``emitted_at`` is added when it is published (:func:`stamp`). ``holdout``: the
    customer is in this alert type's holdout group (:mod:`models.uplift`).
    """
    body: dict[str, Any] = {
        "alert_id": alert_id(facts),
        "type": facts.type.value,
        "status": facts.status.value,
        "customer_id": facts.customer_id,
        "stage": facts.stage,
        "touchpoint": facts.touchpoint,
        "next_touchpoint": facts.next_touchpoint,
        "expected_seconds": facts.expected_ms / 1000,
        "elapsed_seconds": max(0, facts.at_ms - facts.anchor_ms) / 1000,
        "severity": "info" if facts.status is AlertStatus.RESOLVED else facts.severity,
        "event_time": iso(facts.at_ms if facts.status is AlertStatus.RESOLVED else facts.anchor_ms + facts.expected_ms),
        "reason": reason(facts),
        "holdout": holdout,
    }
    if is_anonymous(facts.customer_id):  # an anonymous visitor: named by their anonymous id
        anonymous_id = external_id(facts.customer_id)
        body["customer_id"], body["anonymous_id"] = None, anonymous_id
        body["reason"] = body["reason"].replace(facts.customer_id, f"anonymous visitor {anonymous_id}")
    if facts.type is AlertType.UPSELL_OPPORTUNITY:
        body["event_time"] = iso(facts.at_ms)
        body["score"] = facts.score
        body["model_version"] = facts.model_version
    if extra:
        body.update(extra)
    return body


def stamp(body: bytes, emitted_at_ms: int) -> bytes:
    """Add ``emitted_at`` to a rendered JSON object (bytes) as its last field, without re-encoding it.

    Examples
    --------
    >>> stamp(b'{"type":"drop_off"}', 0)
    b'{"type":"drop_off","emitted_at":"1970-01-01T00:00:00.000Z"}'
    """
    return body[:-1] + b',"emitted_at":"' + iso(emitted_at_ms).encode() + b'"}'
