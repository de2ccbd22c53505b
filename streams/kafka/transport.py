"""Batch delivery for Faust: the touchpoints topic reaches its agent one event per partition and
``getmany()`` chunk, through Faust's own transport extension point.

The app uses ``broker="kafka+batch://host:port"``: the scheme is registered under the
``faust.transports`` entry point (``pyproject.toml``), which Faust's transport registry reads.
A topic whose schema is :class:`BatchSchema` gets batches; every other topic keeps Faust's
per-message delivery. Everything else stays Faust's: agents, timers, the web server, leader
election, rebalancing and offset commits.

Acking the batch event (what ``async for`` does after the body) marks *every* offset in the batch
(and any hole before it: transaction markers, compaction) as acked, so Faust's committed offset
never passes an unprocessed record. On assignment, the positions of the batch topics come from
the application (``app.batch_positions``, the offsets kept in the state store), not from Kafka's
committed offsets: the store is the source of truth.

**Private Faust APIs relied upon** (faust-streaming 0.15.x, pinned in ``pyproject.toml``;
``tests/integration/test_transport.py`` fails loudly if they change):

* ``Consumer.scheduler`` (set in ``Consumer.__init__``), wrapped to group a batch partition's
  records into one pseudo-record;
* ``Consumer._to_message(tp, record)``, which builds the :class:`BatchMessage`;
* ``Consumer._read_offset`` / ``_acked`` / ``_acked_index`` / ``_committed_offset`` / ``_n_acked``,
  Faust's offset bookkeeping;
* every final-ack path (``Consumer.ack`` and the Cython ``StreamIterator.after``) sets
  ``message.acked = True`` under ``faust.types.tuples.ack_lock`` *before* it records
  ``message.offset``: the ``acked`` setter of :class:`BatchMessage` acks the rest of the range;
* ``Consumer.seek_to_committed()`` returns the positions :meth:`Consumer.perform_seek` adopts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import faust
from faust.exceptions import ImproperlyConfigured
from faust.transport.drivers import aiokafka as _aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage, Message

__all__ = ["BatchMessage", "BatchSchema", "Consumer", "Transport"]

#: The slot descriptor that stores ``Message.acked``; BatchMessage shadows
#: it with a property and keeps the value in the original slot.
_ACKED_SLOT = Message.__dict__["acked"]


class BatchRecords:
    """Pseudo-record: all records of one partition from one ``getmany()``."""

    __slots__ = ("records",)

    def __init__(self, records: list[Any]) -> None:
        self.records = records


class BatchMessage(ConsumerMessage):
    """One Faust message carrying a list of aiokafka ``ConsumerRecord``.

    ``offset`` is the offset of the *last* record (that is the offset Faust
    itself acks); ``ack_from`` is the first offset this batch is responsible
    for (first record, or the offset after the previously read one when there
    is a hole: transaction markers, compaction).
    """

    __slots__ = ("ack_from", "_consumer")

    def __init__(
        self,
        tp: TP,
        records: list[Any],
        last: Any,
        ack_from: int,
        generation_id: int,
        consumer: Consumer,
    ) -> None:
        self._consumer = None  # Message.__init__ sets acked=False: no hook
        ts = last.timestamp
        super().__init__(
            tp.topic,
            tp.partition,
            last.offset,
            ts / 1000.0 if ts is not None else None,  # type: ignore[arg-type]
            last.timestamp_type,
            [],
            None,
            records,  # type: ignore[arg-type]
            None,
            0,
            0,
            tp,
            generation_id=generation_id,
        )
        self.ack_from = ack_from
        self._consumer = consumer

    @property  # type: ignore[override]
    def acked(self) -> bool:
        return _ACKED_SLOT.__get__(self, type(self))

    @acked.setter
    def acked(self, value: bool) -> None:
        _ACKED_SLOT.__set__(self, value)
        if value and self._consumer is not None:
            # Called under ack_lock, just before Faust records self.offset.
            self._consumer._ack_batch_range(self)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}: {self.tp} "
            f"offsets={self.ack_from}..{self.offset} n={len(self.value)}>"
        )


class BatchSchema(faust.Schema):
    """Marks a topic as a batch topic; the event value is the record list."""

    def loads_key(self, app: Any, message: Any, *, loads: Any = None,
                  serializer: Any = None) -> Any:
        return None

    def loads_value(self, app: Any, message: Any, *, loads: Any = None,
                    serializer: Any = None) -> Any:
        if not isinstance(message, BatchMessage):
            raise TypeError(
                f"BatchSchema topic {message.topic!r} got a per-record message: "
                "use the kafka+batch:// transport"
            )
        return message.value


class _BatchingScheduler:
    """Wraps ``app.conf.ConsumerScheduler``; groups batch-topic partitions."""

    def __init__(self, inner: Any, consumer: Consumer) -> None:
        self.inner = inner
        self.consumer = consumer

    def iterate(self, records: Mapping[TP, list[Any]]) -> Iterator[tuple[TP, Any]]:
        batch_topics = self.consumer.batch_topics
        if batch_topics:
            records = {
                tp: ([BatchRecords(recs)] if tp.topic in batch_topics else recs)
                for tp, recs in records.items()
                if recs
            }
        return self.inner.iterate(records)


class Consumer(_aiokafka.Consumer):
    """aiokafka consumer delivering batch topics one chunk per event."""

    batch_topics: frozenset[str] = frozenset()
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scheduler = _BatchingScheduler(self.scheduler, self)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Kafka's committed offsets, overridden for the batch topics by the app's ``batch_positions``:
        given the assigned partitions, the next offset to read of each (kept in the state store)."""
        committed = dict(await super().seek_to_committed())
        hook: Callable[[list[TP]], Awaitable[Mapping[TP, int]]] | None = getattr(self.app, "batch_positions", None)
        tps = [tp for tp in self.assignment() if tp.topic in self.batch_topics]
        if hook is not None and tps:
            for tp, offset in (await hook(tps)).items():
                await self._seek(tp, offset)
                committed[tp] = offset
        return committed

    async def subscribe(self, topics: Iterable[str]) -> None:
        topics = list(topics)
        self.batch_topics = self._find_batch_topics()
        await super().subscribe(topics)

    def _find_batch_topics(self) -> frozenset[str]:
        batch, single = set(), set()
        for channel in self.app.topics:  # Conductor: all subscribed Topics
            names = getattr(channel, "topics", None) or ()
            is_batch = isinstance(getattr(channel, "schema", None), BatchSchema)
            (batch if is_batch else single).update(names)
        if batch & single:
            raise ImproperlyConfigured(
                f"topics {sorted(batch & single)} are subscribed both with and "
                "without BatchSchema"
            )
        return frozenset(batch)

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        if type(record) is not BatchRecords:
            return super()._to_message(tp, record)
        records = record.records
        read_offset = self._read_offset
        r = read_offset[tp]
        if r is not None and records[0].offset < r:
            # _drain_messages drops offsets < read offset; do it per record.
            kept = [rec for rec in records if rec.offset >= r]
            if not kept:  # offset(last) < r: _drain_messages drops the batch
                return self._new_batch(tp, [], records[-1], records[-1].offset)
            records = kept
        last = records[-1]
        ack_from = records[0].offset if r is None else min(records[0].offset, r + 1)
        if r is not None:
            # _drain_messages would register [r+1, last] as a *gap* (offsets
            # considered done without an ack) because it only sees the last
            # offset.  Pretend we read up to last-1 so it sees gap == 1; the
            # batch itself acks ack_from..last, holes included.
            read_offset[tp] = last.offset - 1
        return self._new_batch(tp, records, last, ack_from)

    def _new_batch(self, tp: TP, records: list[Any], last: Any,
                   ack_from: int) -> BatchMessage:
        return BatchMessage(tp, records, last, ack_from,
                            self.app.consumer_generation_id, self)

    def _ack_batch_range(self, message: BatchMessage) -> None:
        """Ack offsets ack_from..offset-1 (Faust acks ``offset`` itself)."""
        # A batch fetched before a rebalance is skipped (and acked) by the
        # stream without being processed: never ack its range.
        if message.generation_id != self.app.consumer_generation_id:
            return
        if not self.app.topics.acks_enabled_for(message.topic):
            return
        tp = message.tp
        lo, hi = message.ack_from, message.offset
        committed = self._committed_offset[tp]
        if committed is not None and committed > lo:
            lo = committed
        if lo >= hi:
            return
        acked_index = self._acked_index[tp]
        new = [o for o in range(lo, hi) if o not in acked_index]
        acked_index.update(new)
        self._acked[tp].extend(new)
        self._n_acked += len(new)


class Transport(_aiokafka.Transport):
    """``kafka+batch://``: the aiokafka transport with batch delivery."""

    Consumer = Consumer
    driver_version = _aiokafka.Transport.driver_version + " +batch"
