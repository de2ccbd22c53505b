"""One worker's service: the batch handler, its side inputs, the learner, the idle rule and the
counters. The Faust app (``streams/kafka/app.py``) drives it; the HTTP views and the metrics read
it through :class:`~streams.service.status.WorkerStatus`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from models import uplift
from models.events import Reason, anonymous_profile, customer_id_problem
from models.journey import StateLimits
from models.journey_map import JourneyMap
from models.partition import Rules
from models.privacy import pseudonym
from models.watermark import idle_watermark
from streams.journey_file import MapFileError, load_journey_map
from streams.service.clv import ClvModels, ClvStore
from streams.service.handler import CONTROL_HEADER, BatchHandler, BatchResult, Limits, Rewind, Stats, erase_request
from streams.service.learner import Learner
from streams.service.ports import DeadLetter, DeadLetterSink, Fenced, PartitionStore, SourceRecord, StateQueries
from streams.service.ports_model import ExampleSource, ModelStore
from streams.service.scoring import Scorer
from streams.settings import Settings

log = logging.getLogger("journey.worker")

MAX_BACKOFF_S = 5.0


class Store(PartitionStore, StateQueries, ExampleSource, Protocol):
    """The store a worker needs: both sides of the partitions and their example streams."""

    async def partition_of(self, customer_id: str) -> int | None: ...

    async def erased_at(self, customer_id: str) -> int | None: ...


class ControlSink(Protocol):
    """Sends a control record (an erasure request) to one partition of the touchpoints topic."""

    async def send_control(self, partition: int, key: str, value: bytes, headers: list[tuple[str, bytes]]) -> None: ...


class Publisher(Protocol):
    def request(self, partitions: set[int]) -> None: ...


def rules_of(settings: Settings, journey: JourneyMap) -> Rules:
    """The batch engine's rules from the settings and the journey map."""
    return Rules(
        journey,
        StateLimits(int(settings.dedupe_window * 1000), settings.path_length, max(settings.windows)),
        allowed_lateness_ms=int(settings.allowed_lateness * 1000),
        late_grace_ms=int(settings.late_alert_grace * 1000),
        attribution_lookback_ms=int(settings.attribution_lookback * 1000),
        attribution_half_life_ms=int(settings.attribution_half_life * 1000),
        channels=settings.channels,
        clv_windows=tuple(settings.windows),
        clv_horizon_days=settings.clv_horizon / 86400,
        clv_margin=settings.clv_margin,
        clv_discount_rate=settings.clv_discount_rate,
        early_positives=settings.model_learn_positives == "at_upsell",
        upsell_alert_min_examples=settings.model_alert_min_examples,
        anonymous_ttl_ms=int(settings.anonymous_ttl * 1000),
        max_anonymous_ids=settings.max_anonymous_ids,
        holdout_shares=settings.holdout_shares,
        holdout_key=uplift.holdout_key(settings.holdout_salt),
        uplift_window_ms=int(settings.uplift_window * 1000),
    )


def limits_of(settings: Settings) -> Limits:
    return Limits(settings.max_payload_bytes, int(settings.max_future_skew * 1000), settings.min_event_ms,
                  settings.currency, settings.rates, settings.max_value)


class Pipeline:
    """Everything one worker process does with the records it is given, against ports."""

    def __init__(
        self,
        settings: Settings,
        journey: JourneyMap,
        *,
        store: Store,
        models: ModelStore,
        clv_store: ClvStore,
        dead_letters: DeadLetterSink,
        control: ControlSink,
        retryable: tuple[type[BaseException], ...],
    ) -> None:
        self.settings = settings
        self.journey = journey
        self.store = store
        self.models = models
        self.control = control
        self.retryable = retryable
        self.rules = rules_of(settings, journey)
        self.scorer = Scorer(models, kind=settings.model_kind)
        self.clv = ClvModels(clv_store, store)
        self.handler = BatchHandler(
            store, dead_letters, self.rules, limits_of(settings),
            scorer=lambda: self.scorer if self.scoring_enabled else None,
            clv=lambda: self.clv.current,
        )
        self.learner = Learner(
            models, store, kind=settings.model_kind, checkpoint_examples=settings.model_checkpoint_examples,
            checkpoint_interval_s=settings.model_checkpoint_interval, window=settings.model_window,
        )
        self.stats = Stats()
        self.publisher: Publisher | None = None
        self.observers: list[Callable[[Sequence[SourceRecord], BatchResult, int], None]] = []
        self.is_leader: Callable[[], bool] = lambda: False
        self.pseudonym_key = settings.pseudonym_secret()
        self.started_at = time.time()
        self.last_arrival: dict[int, int] = {}  # wall-clock ms of each owned partition's last record
        self.locks: dict[int, asyncio.Lock] = {}
        self.offsets: dict[int, int] = {}  # last offset read per owned partition (for the lag gauge)
        self.model_report: dict[str, Any] | None = None
        self.predictions_pending: int | None = None
        self.map_mtime = _mtime(settings.map)
        self._learning = asyncio.Lock()

    # ---- what the Faust app calls ----

    @property
    def scoring_enabled(self) -> bool:
        return bool(self.journey.propensity.score_after)

    @property
    def owned(self) -> list[int]:
        return sorted(self.handler.claims)

    async def assign(self, partitions: Sequence[int]) -> dict[int, int]:
        """Claim newly assigned partitions; return where to resume fetching each (its store offset + 1)."""
        positions = {}
        now_ms = _now_ms()
        for p in partitions:
            claim = await self._retry(f"claiming partition {p}", lambda p=p: self.handler.assign(p))
            positions[p] = claim.offset + 1
            self.last_arrival[p] = now_ms  # the idle timer starts at assignment
        await self.clv.load()
        return positions

    def revoke(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self.handler.revoke(p)
            self.last_arrival.pop(p, None)
            self.offsets.pop(p, None)

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult | None:
        """Apply one partition's batch, retrying while Redis or Kafka are unavailable (the batch is
        idempotent, and the partition waits). None when this worker no longer owns the partition."""
        if not records:
            return None
        p = records[0].partition
        if self.scoring_enabled and self.is_leader() and self.learner.snapshot is not None:
            snap = self.learner.snapshot
            self.scorer.use(snap.model, snap.version)  # the leader scores with its live model
        lock = self.locks.setdefault(p, asyncio.Lock())
        async with lock:
            try:
                result = await self._retry(f"the batch of partition {p}",
                                           lambda: self.handler.handle(records, _now_ms()))
            except Fenced as exc:
                log.warning("%s: dropping the batch, another worker owns the partition now", exc)
                self.handler.revoke(p)
                return None
            except (Rewind, asyncio.CancelledError):
                raise
            except Exception:
                # Something in one record breaks the batch: apply the records one by one, and
                # dead-letter each one that fails (internal_error), so nothing is lost or stuck.
                log.exception("a batch of partition %d failed; applying its %d records one by one", p, len(records))
                result = await self._one_by_one(records)
        now_ms = _now_ms()
        self.last_arrival[p] = now_ms
        self.offsets[p] = max(self.offsets.get(p, -1), records[-1].offset)
        self.stats.record(result)
        for observe in self.observers:
            observe(records, result, now_ms)
        if result.messages and self.publisher is not None:
            self.publisher.request({p})
        return result

    async def _one_by_one(self, records: Sequence[SourceRecord]) -> BatchResult:
        total = BatchResult(records=len(records), partitions={records[0].partition})
        for r in records:
            try:
                one = await self._retry("a record", lambda r=r: self.handler.handle([r], _now_ms()))
            except (Fenced, Rewind, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.exception("record %s/%d@%d failed; dead-lettering it", r.topic, r.partition, r.offset)
                detail = f"{type(exc).__name__}: {exc}"[:500]
                await self._retry("dead-lettering a record", lambda r=r, d=detail: self.handler.reject(
                    r, Reason.INTERNAL_ERROR, d))
                total.dead.append(DeadLetter(r, Reason.INTERNAL_ERROR, detail))
                continue
            total.applied += one.applied
            total.duplicates += one.duplicates
            total.dead += one.dead
            total.erasures += one.erasures
            total.identity += one.identity
            total.forwarded += one.forwarded
            total.predictions += one.predictions
            total.messages += one.messages
            total.applied_event_ms += one.applied_event_ms
        return total

    async def idle(self) -> int:
        """The idle rule: partitions that delivered nothing for ``JOURNEY_IDLE_TIMEOUT`` let their
        watermark follow the wall clock, and what becomes due fires. Returns how many moved."""
        s = self.settings
        moved = 0
        for p in self.owned:
            claim = self.handler.claims.get(p)
            if claim is None:
                continue
            mark = idle_watermark(claim.clock, now_ms=_now_ms(), last_arrival_ms=self.last_arrival.get(p, _now_ms()),
                                  allowed_lateness_ms=int(s.allowed_lateness * 1000),
                                  idle_timeout_ms=int(s.idle_timeout * 1000))
            if mark is None:
                continue
            async with self.locks.setdefault(p, asyncio.Lock()):
                try:
                    result = await self.handler.tick(p, mark)
                except Fenced:
                    self.handler.revoke(p)
                    continue
            moved += 1
            if result.messages and self.publisher is not None:
                self.publisher.request({p})
        return moved

    async def erase(self, customer_id: str, *, requested_by: str, wait_s: float = 10.0) -> str:
        """Ask the partition holding the customer to erase them (a control record, applied in order
        with their events); wait up to ``wait_s`` for it. Returns ``erased``, ``pending`` or ``unknown``."""
        p = await self.store.partition_of(customer_id)
        if p is None and not customer_id_problem(customer_id):  # an anonymous visitor's id
            profile = anonymous_profile(customer_id)
            if (p := await self.store.partition_of(profile)) is not None:
                customer_id = profile
        label = pseudonym(self.pseudonym_key, customer_id)
        if p is None:
            log.info("erasure of %s requested by %s: nothing stored", label, requested_by)
            return "unknown"
        requested_ms = _now_ms()
        await self.control.send_control(p, customer_id, erase_request(customer_id, requested_ms),
                                        [(CONTROL_HEADER, b"erase")])
        log.info("erasure of %s requested by %s at %d (partition %d)", label, requested_by, requested_ms, p)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            erased = await self.store.erased_at(customer_id)
            if erased is not None and erased >= requested_ms:
                return "erased"
            await asyncio.sleep(0.05)
        return "pending"

    async def learn(self) -> None:
        """Learn every settled example that can be learned (leader only; one step at a time)."""
        async with self._learning:
            while await self.learner.step() >= self.learner.read_count:
                await asyncio.sleep(0)  # catching up on a backlog: let the agents run in between
            snap = self.learner.snapshot
            if snap is not None:
                self.scorer.use(snap.model, snap.version)

    async def refresh_model(self) -> None:
        """Pick up a newer model snapshot for scoring, and the figures the metrics show."""
        if not self.is_leader():
            await self.scorer.refresh()
        self.model_report = await self.models.report()
        self.predictions_pending = (await self.store.aggregates()).get("predictions_pending", 0)

    def reload_map_if_changed(self) -> bool:
        """Use the map file's new contents if it changed and is valid; keep the old map otherwise."""
        mtime = _mtime(self.settings.map)
        if mtime is None or mtime == self.map_mtime:
            return False
        self.map_mtime = mtime
        try:
            journey = load_journey_map(self.settings.map)
        except MapFileError as exc:
            log.error("journey map changed but is invalid; keeping the previous one:\n%s", exc)
            return False
        self.journey = journey
        self.rules = rules_of(self.settings, journey)
        self.handler.rules = self.rules
        log.info("journey map reloaded from %s (critical path: %s)", self.settings.map,
                 " -> ".join(journey.critical_path))
        return True

    # ---- helpers ----

    async def _retry(self, what: str, attempt: Callable[[], Any]) -> Any:
        backoff = 0.1
        while True:
            try:
                return await attempt()
            except self.retryable as exc:
                self.stats.redis_errors += 1
                log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
