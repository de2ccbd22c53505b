"""A run's whole outcome in comparable form: every customer's state, the aggregates, the alerts.

``journey bench`` (single Redis against the cluster) and the chaos test (crashed and restarted
against uninterrupted) compare two runs of the same records with it.

Left out: what depends on how far the propensity learner had got when a customer was scored
(their scores, the upsell alerts, and what those alerts' measurement counts: their exposures and
``u|upsell_opportunity|…`` counters): not a function of the records (README, "Upsell
propensity"). Alerts are compared as a set: a crash between publishing and acknowledging an
outbox publishes the same alert again (README, "Exactly-once effect"); ``alert_copies`` says how
many extra copies there were.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import orjson

from streams.settings import Settings

UPSELL = "upsell_opportunity"
UPSELL_UPLIFT = f"u|{UPSELL}|"


def store_of(settings: Settings) -> tuple[Any, Any]:
    """The partition store of these settings, and its Redis client (to close)."""
    from streams.state.connect import connect
    from streams.state.keys import Keys
    from streams.state.redis_store import RedisStore

    redis = connect(settings.redis_url)
    return RedisStore(redis, Keys(settings.redis_prefix), pseudonym_key=settings.pseudonym_secret()), redis


async def outcome(settings: Settings, customers: Sequence[str]) -> dict[str, Any]:
    """Customers' states (predictions without their scores), aggregates, gap counts and alerts."""
    store, redis = store_of(settings)
    try:
        states = {c: await store.customer(c) for c in customers}
        for state in states.values():
            if state is not None:
                state.predictions = [dataclasses.replace(p, proba=None, predicted=None, model_version=0)
                                     for p in state.predictions]
                state.score, state.upsell_alert_ms = None, None
                state.exposures = [e for e in state.exposures if e.type != UPSELL]
        out: dict[str, Any] = {
            # every field, including those left out of the repr (the dedupe digests, the predictions)
            "customers": {c: dataclasses.asdict(s) for c, s in states.items() if s is not None},
            "aggregates": {k: v for k, v in (await store.aggregates()).items()
                           if v and not k.startswith(UPSELL_UPLIFT)},
            "gaps": {k: v for k, v in (await store.gap_counts(0, 200_000)).items()
                     if not k.startswith(UPSELL_UPLIFT)},
        }
    finally:
        await redis.aclose()
    alerts = _alerts(settings)
    out["alerts"] = sorted(set(alerts))
    out["alert_copies"] = len(alerts) - len(out["alerts"])
    return out


def _alerts(settings: Settings) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    try:
        topic = settings.alerts_topic
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        alerts = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end offsets {ends} within 60 s")
            for batch in consumer.poll(timeout_ms=500).values():
                for m in batch:
                    if m.value:
                        body = orjson.loads(m.value)
                        if body["type"] == "upsell_opportunity":
                            continue
                        body.pop("emitted_at", None)
                        alerts.append(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        return alerts
    finally:
        consumer.close()
