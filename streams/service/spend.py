"""The marketing-spend feed: every record of the spend topic is applied to the spend table or dead-lettered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

from models.durations import DAY_MS
from models.events import Invalid, Reason
from models.spend import Spend, decode_spend
from streams.service.handler import Limits
from streams.service.ports import DeadLetter, DeadLetterSink, SourceRecord, SpendStore

log = logging.getLogger("journey.spend")

MAX_BACKOFF_S = 5.0
T = TypeVar("T")


def check_spend(value: bytes | None, limits: Limits, now_ms: int, *, key: bytes | None) -> Spend | Invalid:
    """A spend message judged by the settings' rules, as the worker judges it (``key`` None: not
    checked, for a key still to be made from the message; ``journey spend import`` does that)."""
    return decode_spend(
        value, key=key, currency=limits.currency, rates=limits.rates, max_value=limits.max_value, now_ms=now_ms,
        max_future_ms=limits.max_future_ms, min_day=limits.min_event_ms // DAY_MS,
        max_payload_bytes=limits.max_payload_bytes,
    )


class SpendFeed:
    """Applies the spend topic's records one at a time.

    A record is done once it is applied (the table holds its amount, or a later record's) or its
    dead letter is acknowledged by the broker, and its offset is recorded as handled: only then
    does :meth:`handle` return, so the consumer never commits past a record that is neither.
    While Redis or Kafka are unavailable it retries (applying is idempotent; a record may be
    dead-lettered twice, with the same ``journey.source.*`` headers).
    """

    def __init__(self, store: SpendStore, dead_letters: DeadLetterSink, limits: Limits, *,
                 retryable: tuple[type[BaseException], ...]) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.limits = limits
        self.retryable = retryable
        self.counts: Counter[str] = Counter()  # applied, unchanged, dead-lettered:<reason>, retries

    async def handle(self, record: SourceRecord, now_ms: int | None = None) -> str:
        """Apply or dead-letter one record (``now_ms``: the clock, for days in the future). Returns
        ``applied``, ``unchanged`` (a later record had set the amount: a redelivery or a zombie's
        replay) or the reason it was dead-lettered."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            # its key must be <channel>|<day>: no key at all is wrong too
            item = check_spend(record.value, self.limits, now_ms, key=record.key or b"")
            if isinstance(item, Spend):
                found = item
                written = await self._retry(lambda: self.store.apply_spend(record.partition, record.offset, found))
                outcome = "applied" if written else "unchanged"
                self.counts[outcome] += 1
                return outcome
        except Exception as exc:  # a bug must not stop the feed: the record is dead-lettered with what broke
            log.exception("spend record %s/%d@%d failed; dead-lettering it", record.topic, record.partition,
                          record.offset)
            item = Invalid(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:500])
        letter = DeadLetter(record, item.reason, item.detail)
        await self._retry(lambda: self.dead_letters.send([letter]))
        await self._retry(lambda: self.store.apply_spend(record.partition, record.offset, None))
        self.counts[f"dead-lettered:{item.reason.value}"] += 1
        log.info("spend record at %d@%d dead-lettered: %s: %s", record.partition, record.offset, item.reason.value,
                 item.detail)
        return item.reason.value

    async def _retry(self, attempt: Callable[[], Awaitable[T]]) -> T:
        backoff = 0.1
        while True:
            try:
                return await attempt()
            except self.retryable as exc:
                self.counts["retries"] += 1
                log.warning("marketing spend: %s: %s; retrying in %.1fs", type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
