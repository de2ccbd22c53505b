"""The batch handler behind the touchpoints agent: decode, load, apply (``models/partition.py``),
dead-letter, commit. Against ports only.

For one partition's batch, every record ends up exactly one of: applied, a duplicate (already
applied: its offset is at or below the partition's committed offset, or its event id was
seen), or dead-lettered with a reason. The order of the steps is what makes that hold
across crashes:

1. records at or below the partition's committed offset are duplicates (a redelivery);
2. the rest are decoded; the effect of the valid ones is computed from the loaded state;
3. every record that cannot be applied is sent to the dead-letter sink, and the sink's ack
   is awaited;
4. the effect is committed **with the offset reached**, in one atomic step, fenced by the
   partition's claim.

A crash before 4 changes nothing in the store (the batch is redone; its dead letters may be
sent twice, with the same source headers); after 4 the redelivered records are duplicates.
Kafka's own committed offsets only say where to resume fetching sooner: on assignment the
worker resumes from the offset in the store.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from models import identity
from models.clv import ClvModel
from models.events import Invalid, Reason, TouchpointEvent, anonymous_profile, decode_event
from models.journey import JourneyState, Outcome
from models.kpis import check_survey
from models.partition import Effect, Erase, Input, Link, Merge, Rules, Scorer, Tick, process
from models.value import check_money
from models.watermark import Clock
from streams.service.ports import Claim, Conflict, DeadLetter, DeadLetterSink, Loaded, PartitionStore, SourceRecord

log = logging.getLogger("journey.handler")

CONTROL_HEADER = "journey.control"


class Rewind(Exception):
    """The store is behind the records this worker has read (it lost writes, e.g. a Redis
    restart without its last second of AOF): fetch the partition again from ``offset``."""

    def __init__(self, partition: int, offset: int) -> None:
        super().__init__(f"partition {partition}: the store resumes at offset {offset}")
        self.partition = partition
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits and money rules from the settings."""

    max_payload_bytes: int = 16_384
    max_future_ms: int = 300_000
    min_event_ms: int = 0
    currency: str = "EUR"
    rates: dict[str, float] = field(default_factory=dict)
    max_value: float = 10_000_000.0


@dataclass(slots=True)
class BatchResult:
    """What one batch did, for the counters and the metrics."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    erasures: int = 0
    identity: int = 0  # link and merge records applied (models/identity.py)
    forwarded: int = 0  # anonymous events sent on to their customer
    predictions: int = 0
    examples: int = 0
    messages: int = 0  # alerts, tombstones and identity messages committed to the outbox
    applied_event_ms: list[int] = field(default_factory=list)
    partitions: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Stats:
    """Counters since the worker started, served at ``/worker/stats`` and as metrics."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    batches: int = 0
    last_batch_size: int = 0
    erasures: int = 0
    identity: int = 0
    forwarded: int = 0
    predictions: int = 0
    redis_errors: int = 0
    kafka_errors: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    def record(self, result: BatchResult) -> None:
        self.consumed += result.records
        self.applied += result.applied
        self.duplicates += result.duplicates
        self.erasures += result.erasures
        self.identity += result.identity
        self.forwarded += result.forwarded
        self.predictions += result.predictions
        self.batches += 1
        self.last_batch_size = result.records
        self.dead_letters.update(letter.reason.value for letter in result.dead)

    def as_dict(self) -> dict[str, object]:
        return {
            "consumed": self.consumed,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "dead_letters": sum(self.dead_letters.values()),
            "dead_letters_by_reason": dict(sorted(self.dead_letters.items())),
            "erasures": self.erasures,
            "identity_records": self.identity,
            "forwarded": self.forwarded,
            "predictions": self.predictions,
            "batches": self.batches,
            "last_batch_size": self.last_batch_size,
            "redis_errors": self.redis_errors,
            "kafka_errors": self.kafka_errors,
        }


def decode(record: SourceRecord, rules: Rules, limits: Limits, now_ms: int) -> Input | Invalid:
    """One record as the engine's input: an event, an erasure request, or why it is invalid."""
    control = record.headers.get(CONTROL_HEADER)
    if control is not None:
        return _decode_control(control, record)
    if record.value is None:
        return Invalid(Reason.UNDECODABLE, "empty message (null value)")
    journey = rules.journey
    event = decode_event(record.value, touchpoints=journey.touchpoints, now_ms=now_ms,
                         max_payload_bytes=limits.max_payload_bytes, max_future_ms=limits.max_future_ms,
                         min_event_ms=limits.min_event_ms)
    if isinstance(event, Invalid):
        return event
    event = check_money(event, journey.value_roles.get(event.touchpoint), currency=limits.currency,
                        rates=limits.rates, max_value=limits.max_value)
    return event if isinstance(event, Invalid) else check_survey(event, journey.surveys.get(event.touchpoint))


def _decode_control(control: bytes, record: SourceRecord) -> Input | Invalid:
    """A control record: an erasure request, or an identity message from another partition."""
    try:
        body = orjson.loads(record.value or b"")
        if control == b"erase":
            return Erase(str(body["customer_id"]), int(body["requested_ms"]))
        if control == identity.LINK.encode():
            return Link(str(body["anonymous_id"]), str(body["customer_id"]), int(body["ts_ms"]))
        if control == identity.MERGE.encode():
            anonymous_id = str(body["anonymous_id"])
            doc = body["history"]
            visitor = None if doc is None else identity.from_history(doc, anonymous_profile(anonymous_id))
            return Merge(str(body["customer_id"]), anonymous_id, int(body["ts_ms"]), visitor)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return Invalid(Reason.UNDECODABLE, f"a {control.decode(errors='replace')} control record is malformed: {exc}")
    return Invalid(Reason.UNDECODABLE, f"unknown control record {control.decode(errors='replace')!r}")


def erase_request(customer_id: str, requested_ms: int) -> bytes:
    """The body of the control record that erases a customer (see :func:`decode`)."""
    return orjson.dumps({"customer_id": customer_id, "requested_ms": requested_ms})


class StateCache:
    """The customers of each owned partition this worker applied last, decoded, kept between batches.

    The worker that claimed a partition is its only writer (the claim fences everyone else out),
    so what it committed is what the store holds: a customer found here needs no read and no
    decoding. An entry is ``(state or None, erasure time or None)``. A partition's entries are
    dropped when it is claimed or revoked, and whenever a batch fails (``process`` changes the
    states it is given, so they may hold what was never committed).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.partitions: dict[int, OrderedDict[str, tuple[JourneyState | None, int | None]]] = {}

    def of(self, partition: int) -> OrderedDict[str, tuple[JourneyState | None, int | None]]:
        return self.partitions.setdefault(partition, OrderedDict())

    def clear(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def keep(self, partition: int, entries: dict[str, tuple[JourneyState | None, int | None]]) -> None:
        if self.capacity <= 0:
            return
        cache = self.of(partition)
        for cid, entry in entries.items():
            cache[cid] = entry
            cache.move_to_end(cid)
        limit = max(1000, self.capacity // max(1, len(self.partitions)))
        while len(cache) > limit:
            cache.popitem(last=False)


class BatchHandler:
    """Applies batches of records, one partition at a time, to the store.

    ``scorer`` and ``clv`` give the side inputs as they are now: the propensity model to score
    with (None: scoring off) and the CLV model the alerts quote.
    """

    def __init__(
        self,
        store: PartitionStore,
        dead_letters: DeadLetterSink,
        rules: Rules,
        limits: Limits,
        *,
        scorer: Callable[[], Scorer | None] = lambda: None,
        clv: Callable[[], ClvModel | None] = lambda: None,
        due_limit: int = 1000,
        cache_customers: int = 100_000,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.rules = rules
        self.limits = limits
        self.scorer = scorer
        self.clv = clv
        self.due_limit = due_limit
        self.claims: dict[int, Claim] = {}
        self.cache = StateCache(cache_customers)

    async def assign(self, partition: int) -> Claim:
        """Claim a partition (fencing out its earlier owner); the caller resumes fetching at
        ``claim.offset + 1``."""
        claim = await self.store.claim(partition)
        self.claims[partition] = claim
        self.cache.clear(partition)
        return claim

    def revoke(self, partition: int) -> None:
        self.claims.pop(partition, None)
        self.cache.clear(partition)

    async def handle(self, records: Sequence[SourceRecord], now_ms: int) -> BatchResult:
        """Apply one partition's records (in offset order).

        Raises :class:`~streams.service.ports.Fenced` when the partition was claimed by another
        worker (nothing of the batch is committed), :class:`Rewind` when the store is behind.
        """
        for _ in range(3):
            try:
                return await self._handle(records, now_ms)
            except BaseException as exc:
                self.cache.clear(records[0].partition)
                if not isinstance(exc, Conflict):
                    raise

                # Committed since we read: our own commit whose reply was lost (then its records are
                # duplicates now), or a store that lost writes. Read the claim again and redo the batch.
                claim = self.claims[records[0].partition]
                before = claim.offset
                log.warning("%s; reading the partition again", exc)
                await self.store.refresh(claim)
                if claim.offset < before:
                    raise Rewind(claim.partition, claim.offset + 1) from None
        raise Conflict(f"partition {records[0].partition} keeps changing under this worker")

    async def reject(self, record: SourceRecord, reason: Reason, detail: str) -> None:
        """Dead-letter one record that could not be applied, and commit the offset past it."""
        claim = self.claims.get(record.partition) or await self.assign(record.partition)
        if record.offset <= claim.offset:
            return
        await self.dead_letters.send([DeadLetter(record, reason, detail)])
        await self.store.commit(claim, Effect(Clock(claim.clock.high_ms, claim.clock.watermark_ms)),
                                offset=record.offset)

    async def _handle(self, records: Sequence[SourceRecord], now_ms: int) -> BatchResult:
        result = BatchResult(records=len(records))
        if not records:
            return result
        p = records[0].partition
        result.partitions.add(p)
        claim = self.claims.get(p) or await self.assign(p)
        inputs: list[Input] = []
        sources: list[SourceRecord] = []
        for r in records:
            if r.offset <= claim.offset:
                result.duplicates += 1
                continue
            item = decode(r, self.rules, self.limits, now_ms)
            if isinstance(item, Invalid):
                result.dead.append(DeadLetter(r, item.reason, item.detail))
            else:
                inputs.append(item)
                sources.append(r)
        if records[0].offset > claim.offset + 1 and claim.offset >= 0:
            log.debug("partition %d: records start at %d after %d", p, records[0].offset, claim.offset)
        last = records[-1].offset
        if last <= claim.offset:
            return result
        pending = result.dead  # dead letters from decoding, sent before the offset passes them
        result.dead = []
        pos = 0
        while True:
            effect, loaded = await self._apply(claim, inputs[pos:])
            consumed = effect.consumed
            done = pos + consumed >= len(inputs) and effect.complete
            dead = self._account(effect, inputs[pos : pos + consumed], sources[pos : pos + consumed], result)
            # Without everything due loaded, the batch stops early: commit up to the first input not applied.
            offset = last if pos + consumed >= len(inputs) else sources[pos + consumed].offset - 1
            dead = sorted([d for d in pending if d.record.offset <= offset] + dead, key=lambda d: d.record.offset)
            pending = [d for d in pending if d.record.offset > offset]
            if dead:
                await self.dead_letters.send(dead)
                result.dead += dead
            await self.store.commit(claim, effect, offset=offset)
            self._remember(p, effect, loaded)
            result.messages += len(effect.outbox)
            result.predictions += effect.predictions
            result.examples += len(effect.examples)
            result.applied_event_ms += effect.applied_event_ms
            pos += consumed
            if done:
                return result

    def _account(self, effect: Effect, inputs: Sequence[Input], sources: Sequence[SourceRecord],
                 result: BatchResult) -> list[DeadLetter]:
        dead: list[DeadLetter] = []
        for outcome, item, record in zip(effect.outcomes, inputs, sources, strict=True):
            if outcome is None:
                if isinstance(item, Erase):
                    result.erasures += 1
                else:
                    result.identity += 1
            elif outcome is Outcome.FORWARDED:
                result.forwarded += 1
            elif outcome is Outcome.APPLIED:
                result.applied += 1
            elif outcome is Outcome.DUPLICATE:
                result.duplicates += 1
            elif outcome is Outcome.TOO_LATE:
                dead.append(DeadLetter(
                    record, Reason.TOO_LATE,
                    "event time is older than the customer's last event minus the dedupe window; it cannot be "
                    "proven new",
                ))
            else:  # erased: the event happened before the customer asked to be forgotten
                dead.append(DeadLetter(record, Reason.ERASED_CUSTOMER,
                                       "the customer was erased after this event happened", redact=True))
        return dead

    async def tick(self, partition: int, watermark_ms: int) -> BatchResult:
        """Move an idle partition's watermark (the idle rule) and fire what is due."""
        result = BatchResult(partitions={partition})
        claim = self.claims.get(partition)
        if claim is None or watermark_ms <= claim.clock.watermark_ms:
            return result
        while True:
            try:
                effect, loaded = await self._apply(claim, [Tick(watermark_ms)])
                await self.store.commit(claim, effect, offset=None)
            except BaseException:
                self.cache.clear(partition)
                raise
            self._remember(partition, effect, loaded)
            result.messages += len(effect.outbox)
            result.examples += len(effect.examples)
            if effect.consumed and effect.complete:
                return result

    async def _apply(self, claim: Claim, inputs: Sequence[Input]) -> tuple[Effect, Loaded]:
        """Load what the inputs need and compute their effect (as far as the loaded due set allows)."""
        lateness = self.rules.allowed_lateness_ms
        until = claim.clock.watermark_ms
        cids: dict[str, None] = {}
        for item in inputs:
            if isinstance(item, TouchpointEvent):
                cids[item.customer_id] = None
                until = max(until, item.ts_ms - lateness)
            elif isinstance(item, Erase | Merge):
                cids[item.customer_id] = None
            elif isinstance(item, Link):
                cids[anonymous_profile(item.anonymous_id)] = None
            else:
                until = max(until, item.watermark_ms)
        cache = self.cache.of(claim.partition)
        cached = {c: cache[c] for c in cids if c in cache}
        loaded = await self.store.load(claim, [c for c in cids if c not in cached], due_until=until,
                                       due_limit=self.due_limit)
        customers = loaded.customers
        erased = loaded.erased
        for c, (state, gone) in cached.items():
            customers[c] = state
            if gone is not None:
                erased[c] = gone
        for _, c in loaded.due:
            if c not in customers and c in cache:
                customers[c] = cache[c][0]
        missing = [c for _, c in loaded.due if c not in customers]
        if missing:
            customers.update(await self.store.load_customers(claim, missing))
        effect = process(inputs, rules=self.rules, clock=claim.clock, customers=customers, erased=erased,
                         due=loaded.due, due_complete_until=loaded.due_complete_until, scorer=self.scorer(),
                         clv=self.clv())
        return effect, loaded

    def _remember(self, partition: int, effect: Effect, loaded: Loaded) -> None:
        """After a commit: what was loaded and what the effect wrote is what the store holds now."""
        customers, erased = loaded.customers, loaded.erased
        entries = {c: (effect.customers.get(c, state), effect.erased.get(c, erased.get(c)))
                   for c, state in customers.items()}
        for c, state in effect.customers.items():
            entries[c] = (state, effect.erased.get(c, erased.get(c)))
        self.cache.keep(partition, entries)


__all__ = ["BatchHandler", "BatchResult", "Conflict", "Limits", "Rewind", "Stats", "decode", "erase_request"]
