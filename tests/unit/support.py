"""A batch handler on the in-memory store, driven record by record like the worker drives it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from models.journey_map import JourneyMap
from models.partition import Rules
from streams.service.handler import BatchHandler, BatchResult, Limits
from streams.service.ports import DeadLetter, SourceRecord
from streams.state.memory_store import MemoryStore


class ListDeadLetters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        self.sent.extend(letters)


class Harness:
    """One partition's records through the real handler and the in-memory store."""

    def __init__(self, journey: JourneyMap, *, rules: Rules | None = None, limits: Limits | None = None,
                 due_limit: int = 1000, scorer: Any = None, partition: int = 0) -> None:
        self.store = MemoryStore()
        self.dlq = ListDeadLetters()
        self.rules = rules or Rules(journey)
        self.handler = BatchHandler(self.store, self.dlq, self.rules, limits or Limits(max_future_ms=1 << 50),
                                    due_limit=due_limit, scorer=lambda: scorer)
        self.partition = partition
        self.offset = 0
        self.messages: list[dict[str, Any] | None] = []  # alert bodies as published (None: tombstone)
        self.results: list[BatchResult] = []

    def record(self, value: bytes | None, *, headers: dict[str, bytes] | None = None) -> SourceRecord:
        r = SourceRecord(b"k", value, "touchpoints", self.partition, self.offset, headers=headers or {})
        self.offset += 1
        return r

    async def batch(self, *values: bytes | None, now_ms: int = 1 << 50) -> BatchResult:
        return await self.records([self.record(v) for v in values], now_ms=now_ms)

    async def records(self, records: Sequence[SourceRecord], now_ms: int = 1 << 50) -> BatchResult:
        result = await self.handler.handle(records, now_ms)
        self.results.append(result)
        await self.drain()
        return result

    async def tick(self, watermark_ms: int) -> None:
        await self.handler.tick(self.partition, watermark_ms)
        await self.drain()

    async def drain(self) -> None:
        out = await self.store.outbox(self.partition, 1 << 20)
        await self.store.ack_outbox(self.partition, len(out))
        self.messages += [orjson.loads(m.body) if m.body else None for m in out]

    def alerts(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m is not None]

    def of(self, cid: str) -> list[tuple[str, str, str]]:
        return [(a["type"], a["status"], a["touchpoint"]) for a in self.alerts() if a["customer_id"] == cid]
