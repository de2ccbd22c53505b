"""The batch handler behind the touchpoints agent: decode, apply to journey state, dead-letter the rest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.events import Invalid, Reason, decode_event
from models.journey import Outcome
from models.journey_map import JourneyMap
from models.value import check_money
from models.watermark import NO_WATERMARK, Watermarks
from streams.journey_store import Arrival, JourneyStore, ScoringPoint


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One message as it came off the touchpoints topic."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be applied, and why."""

    record: SourceRecord
    reason: Reason
    detail: str

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers carrying the reason and the source position (Kafka Connect's DLQ convention)."""
        r = self.record
        return [
            ("journey.error.reason", self.reason.value.encode()),
            ("journey.error.detail", self.detail.encode()),
            ("journey.source.topic", r.topic.encode()),
            ("journey.source.partition", str(r.partition).encode()),
            ("journey.source.offset", str(r.offset).encode()),
            ("journey.source.timestamp", str(r.timestamp_ms or "").encode()),
        ]


class DeadLetterSink(Protocol):
    """Where dead letters go; must not return before they are durably written."""

    async def send(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits and money rules from the settings."""

    max_payload_bytes: int
    max_future_ms: int
    currency: str = "EUR"
    rates: Mapping[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    applied_event_times_ms: list[int] = field(default_factory=list)
    scoring_points: list[ScoringPoint] = field(default_factory=list)  # applied scoring events, in order
    upsold: dict[int, list[str]] = field(default_factory=dict)  # partition -> customers with an applied upsell


@dataclass(slots=True)
class PipelineStats:
    """Counters since the worker started, served at ``/worker/stats``."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    batches: int = 0
    last_batch_size: int = 0
    redis_errors: int = 0
    kafka_errors: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    def record(self, size: int, result: BatchResult) -> None:
        self.consumed += size
        self.applied += result.applied
        self.duplicates += result.duplicates
        self.batches += 1
        self.last_batch_size = size
        self.dead_letters.update(letter.reason.value for letter in result.dead)

    def as_dict(self) -> dict[str, object]:
        return {
            "consumed": self.consumed,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "dead_letters": sum(self.dead_letters.values()),
            "dead_letters_by_reason": dict(self.dead_letters),
            "batches": self.batches,
            "last_batch_size": self.last_batch_size,
            "redis_errors": self.redis_errors,
            "kafka_errors": self.kafka_errors,
        }


async def advance_journeys(
    records: Sequence[SourceRecord],
    *,
    journey: JourneyMap,
    store: JourneyStore,
    dead_letters: DeadLetterSink,
    limits: Limits,
    watermarks: Watermarks,
    now_ms: int,
) -> BatchResult:
    """Apply a batch of raw records to journey state; every record is either applied,
    recognised as a duplicate, or sent to the dead-letter sink with a reason.

    Each event carries the watermark its partition had when it arrived, so deadline
    decisions follow the order of the stream, not the batch boundaries. The watermarks
    advance only after the store has applied the batch.
    """
    result = BatchResult()
    upsell = journey.propensity.upsell
    arrivals: list[Arrival] = []
    sources: list[SourceRecord] = []
    lateness = watermarks.allowed_lateness_ms
    wm: dict[int, int] = {}  # each partition's watermark as the batch goes, committed after the store
    high: dict[int, int] = {}
    for record in records:
        if record.value is None:
            result.dead.append(DeadLetter(record, Reason.UNDECODABLE, "empty message (null value)"))
            continue
        decoded = decode_event(
            record.value,
            touchpoints=journey.touchpoints,
            now_ms=now_ms,
            max_payload_bytes=limits.max_payload_bytes,
            max_future_ms=limits.max_future_ms,
        )
        if not isinstance(decoded, Invalid):
            decoded = check_money(
                decoded, journey.value_roles.get(decoded.touchpoint), currency=limits.currency, rates=limits.rates
            )
        if isinstance(decoded, Invalid):
            result.dead.append(DeadLetter(record, decoded.reason, decoded.detail))
            continue
        p = record.partition
        if p not in wm:
            clock = watermarks.partitions.get(p)
            wm[p], high[p] = (clock.watermark_ms, clock.high_ms) if clock else (NO_WATERMARK, NO_WATERMARK)
        arrivals.append(Arrival(decoded, p, wm[p]))
        sources.append(record)
        if decoded.ts_ms > high[p]:
            high[p] = decoded.ts_ms
            wm[p] = max(wm[p], decoded.ts_ms - lateness)

    outcomes, result.scoring_points = await store.apply_scored(arrivals, wm)
    for p, h in high.items():
        watermarks.observe(p, h, now_ms)
    for arrival, record, outcome in zip(arrivals, sources, outcomes, strict=True):
        event = arrival.event
        if outcome is Outcome.APPLIED:
            result.applied += 1
            result.applied_event_times_ms.append(event.ts_ms)
            if event.touchpoint in upsell:
                result.upsold.setdefault(arrival.partition, []).append(event.customer_id)
        elif outcome is Outcome.DUPLICATE:
            result.duplicates += 1
        else:
            result.dead.append(
                DeadLetter(
                    record,
                    Reason.TOO_LATE,
                    f"event time is older than the customer's last event minus the dedupe window; "
                    f"it cannot be proven new (event {event.event_id!r})",
                )
            )
    if result.dead:
        await dead_letters.send(result.dead)
    return result
