"""Prometheus metrics of one worker: counters read from the worker at scrape time, histograms observed per batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streams.service.handler import BatchResult
    from streams.service.ports import SourceRecord
    from streams.service.status import WorkerStatus

# Fine from 1 ms to 1 s (at most a third apart), so a p99 read back from the buckets is within one
# narrow bucket (`journey bench` does that); coarse beyond, where the event-time clock lands. A
# superset of the earlier bounds, so existing queries keep working.
# fmt: off
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300, 3600, 86400,
)
# fmt: on
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000)


class WorkerCollector(Collector):
    """Counters and gauges taken from the worker's own state when Prometheus scrapes."""

    def __init__(self, status: WorkerStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        s = self.status.stats
        for name, value, doc in (
            ("journey_events_consumed", s.consumed, "Events read from the touchpoints topic."),
            ("journey_events_applied", s.applied, "Events applied to journey state (first delivery)."),
            ("journey_events_duplicate", s.duplicates, "Redelivered or re-sent events recognised and skipped."),
            ("journey_identity_records", s.identity, "Link and merge records applied (identity stitching)."),
            ("journey_events_forwarded", s.forwarded,
             "Anonymous events of visitors already merged, sent on to their customer."),
            ("journey_redis_errors", s.redis_errors, "Redis calls that failed and were retried."),
            ("journey_kafka_errors", s.kafka_errors, "Kafka sends (alerts) that failed and were retried."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        dead = CounterMetricFamily("journey_dead_letters", "Events sent to the dead-letter topic.", labels=["reason"])
        for reason, n in sorted(s.dead_letters.items()):
            dead.add_metric([reason], n)
        yield dead
        alerts = CounterMetricFamily(
            "journey_alerts_emitted", "Alert messages published.", labels=["type", "status"]
        )
        for label, n in sorted(self.status.emitted.items()):
            kind, _, status = label.partition(":")
            alerts.add_metric([kind, status], n)
        yield alerts
        identity = CounterMetricFamily(
            "journey_identity_messages", "Identity messages published to the touchpoints topic (link, merge, "
            "erase: control records; forward: a merged visitor's late event sent on to the customer).",
            labels=["kind"],
        )
        for kind, n in sorted(self.status.identity.items()):
            identity.add_metric([kind], n)
        yield identity
        wm = GaugeMetricFamily(
            "journey_watermark_seconds", "Event-time watermark per partition (Unix seconds).", labels=["partition"]
        )
        for p, mark in self.status.watermarks().items():
            wm.add_metric([str(p)], mark / 1000)
        yield wm
        lag = GaugeMetricFamily("journey_consumer_lag", "Messages not yet read, per partition.", labels=["partition"])
        for p, n in sorted(self.status.lag().items()):
            lag.add_metric([str(p)], n)
        yield lag
        scored, refused, version = self.status.scorer_counts
        yield CounterMetricFamily("journey_predictions", "Propensity scoring points scored by this worker.",
                                  value=scored)
        yield CounterMetricFamily("journey_model_snapshots_refused",
                                  "Model snapshots refused (integrity or version check).", value=refused)
        yield GaugeMetricFamily("journey_model_scoring_version",
                                "Version (examples learned) of the model this worker scores with.", value=version)
        if self.status.predictions_pending is not None:
            yield GaugeMetricFamily(
                "journey_model_predictions_pending",
                "Predictions waiting for their label (all partitions).",
                value=self.status.predictions_pending,
            )
        report = self.status.model_report
        if report:
            yield CounterMetricFamily(
                "journey_model_examples_learned",
                "Labelled examples the propensity model has learned.",
                value=report["examples_learned"],
            )
            for name, doc in (
                ("roc_auc", "Propensity model ROC AUC, progressive validation (scored before learning)."),
                ("log_loss", "Propensity model log loss, progressive validation."),
                ("accuracy", "Propensity model accuracy, progressive validation."),
            ):
                family = GaugeMetricFamily(f"journey_model_{name}", doc, labels=["window"])
                for window, value in (("since_start", report.get(name)), ("recent", report["recent"].get(name))):
                    if value is not None:
                        family.add_metric([window], value)
                yield family
        yield from _kpi_gauges(self.status.kpis, self.status.uplift)
        if self.status.pending_deadlines is not None:
            yield GaugeMetricFamily(
                "journey_pending_deadlines",
                "Customers with a deadline or a label due in the partitions this worker owns.",
                value=self.status.pending_deadlines,
            )


def _kpi_gauges(kpis: dict[str, Any] | None, uplift: dict[str, Any] | None) -> Iterator[Any]:
    """The journey KPIs and the alerts' uplift (the whole deployment's: the same on every worker, use max())."""
    if kpis is not None:
        for name, doc in (("repeat_purchase_rate", "Share of buying customers with two orders or more."),
                          ("churn_rate", "Share of buying customers with an open drop-off after the purchase stage.")):
            if kpis[name] is not None:
                yield GaugeMetricFamily(f"journey_kpi_{name}", doc, value=kpis[name])
        for kind, field in (("nps", "nps"), ("csat", "csat")):
            value = kpis[kind]["overall"][field]
            if value is not None:
                yield GaugeMetricFamily(f"journey_kpi_{kind}", f"{kind.upper()} over the last "
                                        f"{kpis['window_days']} days of event time.", value=value)
        for name, doc in (("cac", "Customer acquisition cost per acquisition channel (window)."),
                          ("clv_to_cac", "CLV to date per acquired customer / CAC, per channel (window).")):
            family = GaugeMetricFamily(f"journey_kpi_{name}", doc, labels=["channel"])
            for row in kpis["acquisition"]:
                if row[name] is not None:
                    family.add_metric([row["channel"]], row[name])
            yield family
        retention = GaugeMetricFamily("journey_kpi_retention", "Share of the latest complete weekly cohort "
                                      "active k weeks later.", labels=["cohort", "week"])
        for row in kpis["retention"]:
            for key, value in row.items():
                if key.startswith("week_") and value is not None:
                    retention.add_metric([row["cohort"], key.removeprefix("week_")], value)
        yield retention
    if uplift is not None:
        family = GaugeMetricFamily("journey_alert_uplift", "Conversion uplift of alerted over held-out customers "
                                   "(estimate and 95 % interval).", labels=["type", "bound"])
        for row in uplift["alert_types"]:
            for bound, key in (("estimate", "uplift"), ("low", "ci_low"), ("high", "ci_high")):
                if row[key] is not None:
                    family.add_metric([row["type"], bound], row[key])
        yield family


class WorkerMetrics:
    """The worker's registry: scrape-time collector plus per-batch histograms."""

    def __init__(self, status: WorkerStatus) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = WorkerCollector(status)
        self.registry.register(self.collector)
        self.batch_size = Histogram(
            "journey_batch_size", "Events per processed batch.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.latency = Histogram(
            "journey_processing_latency_seconds",
            "From event time, or from the broker's append time, until the event is applied.",
            ["clock"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._event_time = self.latency.labels("event_time")
        self._append_time = self.latency.labels("append_time")

    def observe_batch(self, records: Sequence[SourceRecord], result: BatchResult, now_ms: int) -> None:
        """Once per batch: the batch size, and the latency of each record (bucketed in one pass)."""
        self.batch_size.observe(len(records))
        _observe_many(self._event_time, ((now_ms - ts) / 1000 for ts in result.applied_event_ms))
        _observe_many(self._append_time,
                      ((now_ms - r.timestamp_ms) / 1000 for r in records if r.timestamp_ms is not None))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _observe_many(histogram: Any, values: Iterable[float]) -> None:
    """``histogram.observe`` for many values: one binary search per value and one increment per bucket
    (``observe`` walks the bounds and takes a lock per value). Buckets are ``value <= bound``, as there."""
    import bisect

    bounds = histogram._upper_bounds  # noqa: SLF001 - prometheus_client's own bucket bounds
    counts = [0] * len(bounds)
    total, n = 0.0, 0
    for v in values:
        v = max(0.0, v)
        counts[bisect.bisect_left(bounds, v)] += 1
        total += v
        n += 1
    if not n:
        return
    histogram._sum.inc(total)  # noqa: SLF001
    for i, c in enumerate(counts):
        if c:
            histogram._buckets[i].inc(c)  # noqa: SLF001
