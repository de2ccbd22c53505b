"""Kafka sinks: dead letters and the outbox publisher, straight to the producer (not through
Faust's ``Topic.send``, which costs several times more per message)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from models.alerts import stamp
from models.partition import IDENTITY
from streams.service.handler import CONTROL_HEADER
from streams.service.ports import DeadLetter, OutboxMessage, PartitionStore

log = logging.getLogger("journey.sinks")

#: Dead letters keep at most this much of the original value (a larger copy would be refused by
#: the broker or the producer); a cut value says so in ``journey.error.truncated``.
DLQ_MAX_VALUE = 512 * 1024


class KafkaDeadLetters:
    """Dead letters to the DLQ topic: original key and bytes, reason and source in headers."""

    def __init__(self, producer: Callable[[], Awaitable[Any]], topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        producer = await self.producer()
        pending = []
        for letter in letters:
            key, value, headers = letter.record.key, letter.record.value, letter.headers()
            if letter.redact:  # about an erased customer: the position and reason only
                key, value = None, b""
            elif value is not None and len(value) > DLQ_MAX_VALUE:
                headers.append(("journey.error.truncated", str(len(value)).encode()))
                value = value[:DLQ_MAX_VALUE]
            pending.append(await producer.send(self.topic, value=value, key=key, headers=headers))
        # Wait for the broker's acks: the source offset is committed only after this returns.
        await asyncio.gather(*pending)


class OutboxPublisher:
    """Publishes the partitions' committed outboxes to the alerts topic (identity messages to the
    touchpoints topic, where the other partition applies them), then acknowledges them.

    A crash between publishing and acknowledging publishes the same messages again: a
    downstream tool may see the same ``(alert_id, status)`` twice, never two different alerts
    for one stall. One drain per partition at a time, in commit order.
    """

    def __init__(
        self, store: PartitionStore, producer: Callable[[], Awaitable[Any]], topic: str, *,
        pseudonym: Callable[[str], str], touchpoints_topic: str | None = None,
    ) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.touchpoints_topic = touchpoints_topic
        self.pseudonym = pseudonym
        self.locks: dict[int, asyncio.Lock] = {}
        self.emitted: dict[str, int] = {}  # "type:status" -> alerts and tombstones published
        self.identity: dict[str, int] = {}  # link / merge / erase / forward -> identity messages published
        self.errors = 0
        self.requested: set[int] = set()
        self.wakeup = asyncio.Event()
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)  # for the dashboard, pseudonymised

    def request(self, partitions: set[int]) -> None:
        """Ask the publishing task to drain these partitions' outboxes soon."""
        self.requested |= partitions
        self.wakeup.set()

    async def run(self) -> None:
        """The publishing task: drain what was requested, forever. Errors are logged and retried."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            partitions, self.requested = self.requested, set()
            for p in sorted(partitions):
                try:
                    await self.drain(p)
                except Exception:  # the outbox keeps the messages: retry soon
                    self.errors += 1
                    log.exception("publishing the outbox of partition %d failed; will retry", p)
                    self.requested.add(p)
                    await asyncio.sleep(1.0)
                    self.wakeup.set()

    async def drain(self, partition: int) -> int:
        lock = self.locks.setdefault(partition, asyncio.Lock())
        sent = 0
        async with lock:
            while messages := await self.store.outbox(partition, limit=1000):
                now_ms = int(time.time() * 1000)
                producer = await self.producer()
                alerts = [(m.key.encode(), stamp(m.body, now_ms) if m.body else None)
                          for m in messages if m.type != IDENTITY]
                identity = [(m.key.encode(), m.body, control_headers(m.status))
                            for m in messages if m.type == IDENTITY]
                if identity:
                    assert self.touchpoints_topic is not None, "identity messages need the touchpoints topic"
                    await send_batched(producer, self.touchpoints_topic, identity)
                if alerts:
                    await send_batched(producer, self.topic, alerts)
                await self.store.ack_outbox(partition, len(messages))
                sent += len(messages)
                self._account(messages)
        return sent

    def _account(self, messages: Sequence[OutboxMessage]) -> None:
        import orjson

        for m in messages:
            if m.type == IDENTITY:
                self.identity[m.status] = self.identity.get(m.status, 0) + 1
                continue
            label = f"{m.type}:{m.status}"
            self.emitted[label] = self.emitted.get(label, 0) + 1
        for m in messages[-(self.recent.maxlen or 50):]:
            if m.body is None or m.type == IDENTITY:
                continue
            body = orjson.loads(m.body)
            alias = self.pseudonym(m.key)
            self.recent.appendleft(
                {k: v for k, v in body.items() if k not in ("customer_id", "clv", "reason")}
                | {"customer": alias, "reason": body["reason"].replace(m.key, alias)}
            )


def control_headers(status: str) -> list[tuple[str, bytes]]:
    """An identity message's headers: a forwarded anonymous event is a plain event; the rest are control records."""
    return [] if status == "forward" else [(CONTROL_HEADER, status.encode())]


async def send_batched(producer: Any, topic: str, messages: Sequence[tuple[bytes, bytes | None]]
                       | Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]) -> None:
    """Send messages as record batches, one per partition (the key decides the partition as Kafka's
    default partitioner does, murmur2), and wait for the broker's acks. A record batch costs the
    producer a fraction of per-message ``send`` calls."""
    from aiokafka.partitioner import murmur2

    partitions = sorted(await producer.partitions_for(topic))
    batches: dict[int, Any] = {}
    pending = []
    for key, value, *rest in messages:
        headers = rest[0] if rest else []
        p = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        batch = batches.get(p)
        if batch is None:
            batch = batches[p] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full: send, start another
            pending.append(await producer.send_batch(batch, topic, partition=p))
            batch = batches[p] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None, headers=headers)
    for p, batch in batches.items():
        if batch.record_count():
            pending.append(await producer.send_batch(batch, topic, partition=p))
    await asyncio.gather(*pending)
