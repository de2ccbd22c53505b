"""What the HTTP views and the metrics may see of a running worker: a narrow, read-mostly view."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from models.journey_map import JourneyMap
from models.watermark import NO_WATERMARK
from streams.service.pipeline import Pipeline
from streams.service.ports import StateQueries
from streams.settings import Settings


class Published(Protocol):
    """The outbox publisher, as far as the status needs it."""

    emitted: dict[str, int]
    identity: dict[str, int]
    errors: int
    recent: Any


class WorkerStatus:
    """The running worker as the views and the metrics see it."""

    def __init__(self, pipeline: Pipeline, publisher: Published, *, ping_redis: Callable[[], Awaitable[bool]],
                 lag: Callable[[], dict[int, int]]) -> None:
        self._pipeline = pipeline
        self._publisher = publisher
        self.ping_redis = ping_redis  # every Redis node answers
        self.lag = lag
        self.exposition: Callable[[], bytes] = lambda: b""  # the metrics' text format, set by the app
        self.pending_deadlines: int | None = None
        self.kpis: dict[str, Any] | None = None  # as of the stream's time, read at each scrape
        self.uplift: dict[str, Any] | None = None
        self.settings: Settings = pipeline.settings
        self.journey: JourneyMap = pipeline.journey
        self.queries: StateQueries = pipeline.store
        self.clv = pipeline.clv

    @property
    def rules(self) -> Any:
        return self._pipeline.rules

    @property
    def scoring_enabled(self) -> bool:
        return self._pipeline.scoring_enabled

    async def metrics(self) -> bytes:
        """The Prometheus exposition, with the gauges that need Redis read now."""
        from streams.service.queries import kpis_view, uplift_view

        try:
            self.pending_deadlines = await self.queries.pending_due(self.owned())
            self.kpis = await kpis_view(self.queries, self.rules)
            self.uplift = await uplift_view(self.queries, self.rules)
        except (OSError, ConnectionError):
            self.pending_deadlines = self.kpis = self.uplift = None
        return self.exposition()

    def owned(self) -> list[int]:
        return self._pipeline.owned

    def watermarks(self) -> dict[int, int]:
        """Each owned partition's watermark (epoch ms), where there is one."""
        claims = self._pipeline.handler.claims
        return {p: c.clock.watermark_ms for p, c in sorted(claims.items()) if c.clock.watermark_ms > NO_WATERMARK}

    def counters(self) -> dict[str, Any]:
        """``/worker/stats``: what this worker has done since it started."""
        emitted = self._publisher.emitted
        return {
            "uptime_seconds": round(time.time() - self._pipeline.started_at, 1),
            **self._pipeline.stats.as_dict(),
            "kafka_errors": self._pipeline.stats.kafka_errors + self._publisher.errors,
            "alerts_emitted": sum(n for k, n in emitted.items() if not k.startswith("tombstone")),
            "alerts_emitted_by_type": dict(sorted(emitted.items())),
            "identity_messages_published": dict(sorted(self._publisher.identity.items())),
            "owned_partitions": self.owned(),
        }

    @property
    def stats(self) -> Any:
        return self._pipeline.stats

    @property
    def emitted(self) -> dict[str, int]:
        return self._publisher.emitted

    @property
    def identity(self) -> dict[str, int]:
        return self._publisher.identity

    def recent_alerts(self) -> list[dict[str, Any]]:
        return list(self._publisher.recent)

    async def erase(self, customer_id: str, *, requested_by: str) -> str:
        return await self._pipeline.erase(customer_id, requested_by=requested_by)

    def model_status(self) -> dict[str, Any]:
        """The scorer's and the learner's own view of the model."""
        p = self._pipeline
        return {
            "scoring_model_version": p.scorer.version,
            "snapshots_refused": p.scorer.refused + p.learner.refused,
            "learning": p.learner.stopped is None,
            "learning_stopped": p.learner.stopped,
        }

    @property
    def model_report(self) -> dict[str, Any] | None:
        return self._pipeline.model_report

    @property
    def predictions_pending(self) -> int | None:
        return self._pipeline.predictions_pending

    async def model_report_now(self) -> dict[str, Any] | None:
        return await self._pipeline.models.report()

    @property
    def scorer_counts(self) -> tuple[int, int, int]:
        """(scoring points scored by this worker, snapshots refused, scoring model version)."""
        p = self._pipeline
        return p.stats.predictions, p.scorer.refused + p.learner.refused, p.scorer.version
