"""The ports the service works against. Adapters (``streams/state``, ``streams/kafka``) implement
them; the service never imports an adapter.

The write side is :class:`PartitionStore`: a worker *claims* a partition when it is assigned
(fencing out any earlier owner), *loads* what a batch needs, and *commits* the batch's
:class:`~models.partition.Effect` in one atomic step together with the offset it reached. The
read side is :class:`StateQueries`, used by the HTTP API, the CLI and the fits.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.clv import OrderHistory, OrderSummary
from models.events import Reason
from models.journey import JourneyState
from models.partition import Effect
from models.spend import Spend
from models.watermark import Clock


class Fenced(Exception):
    """Another worker has claimed the partition since this one did: this worker must stop
    processing it (it lost the partition in a rebalance and is a zombie for it)."""


class Conflict(Exception):
    """The partition was committed since this worker read it. With one owner per partition
    this cannot happen; the batch is read and applied again."""


@dataclass(slots=True)
class Claim:
    """This worker's hold on a partition: the epoch that fences others out, the commit
    sequence it last saw, the last offset applied and the partition's clock."""

    partition: int
    epoch: int
    seq: int
    offset: int  # last offset applied, -1 for none
    clock: Clock


@dataclass(slots=True)
class Loaded:
    """What a batch needs from the store."""

    customers: dict[str, JourneyState | None]
    erased: dict[str, int]
    due: list[tuple[int, str]]
    due_complete_until: int


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message committed with a batch, waiting to be published (``body`` None: a tombstone)."""

    key: str
    body: bytes | None
    type: str
    status: str


class PartitionStore(Protocol):
    """Where a partition's state lives, written only by the worker that claimed it."""

    async def claim(self, partition: int) -> Claim:
        """Take the partition over: a new epoch (earlier claims are fenced), its offset and clock."""
        ...

    async def refresh(self, claim: Claim) -> None:
        """Read the partition's commit sequence, offset and clock again into ``claim``.

        Raises :class:`Fenced` if another worker has claimed it since."""
        ...

    async def load(self, claim: Claim, customer_ids: Collection[str], *, due_until: int, due_limit: int) -> Loaded:
        """The named customers, their erasure records, and the customers due up to ``due_until``
        (at most ``due_limit`` of them: ``Loaded.due_complete_until`` says how far the list is complete)."""
        ...

    async def load_customers(self, claim: Claim, customer_ids: Collection[str]) -> dict[str, JourneyState | None]:
        """More customers of the partition (those due, when the batch did not name them)."""
        ...

    async def commit(self, claim: Claim, effect: Effect, *, offset: int | None) -> None:
        """Write the effect and the offset reached, atomically; update ``claim``.

        Raises :class:`Fenced` or :class:`Conflict` (nothing written)."""
        ...

    async def outbox(self, partition: int, limit: int) -> list[OutboxMessage]:
        """The oldest messages waiting to be published (not removed)."""
        ...

    async def ack_outbox(self, partition: int, count: int) -> None:
        """Remove the first ``count`` messages, once they are safely published."""
        ...


class StateQueries(Protocol):
    """The read side: customers, aggregates and summaries, merged over the partitions."""

    async def partitions(self) -> int:
        """How many partitions the store knows (the touchpoints topic's partition count)."""
        ...

    async def customer(self, customer_id: str) -> JourneyState | None: ...

    async def partition_of(self, customer_id: str) -> int | None:
        """The partition holding the customer (from the directory), None if unknown."""
        ...

    async def aggregates(self) -> dict[str, int]:
        """The partitions' aggregate counters, summed."""
        ...

    async def gap_counts(self, first_day: int, last_day: int) -> dict[str, int]:
        """Gap counters summed over event-time days ``first_day..last_day`` and the partitions."""
        ...

    async def order_summaries(self) -> list[OrderSummary]:
        """Every buying customer's order summary (for the CLV fit)."""
        ...

    async def order_histories(self) -> list[OrderHistory]:
        """Every buying customer's order summary with their orders per event-time day (for the
        calibration / holdout validation of the CLV models)."""
        ...

    async def clocks(self) -> dict[int, Clock]:
        """Each partition's committed clock."""
        ...

    async def offsets(self) -> dict[int, int]:
        """Each partition's last applied offset (-1: none)."""
        ...

    async def pending_due(self, partitions: Sequence[int]) -> int:
        """Customers with something due in these partitions."""
        ...

    async def spend_by_channel(self, first_day: int, last_day: int) -> dict[str, int]:
        """Marketing spend in cents per channel over event-time days ``first_day..last_day`` (inclusive)."""
        ...


class SpendStore(Protocol):
    """The marketing-spend table: one amount per channel and day, set by the spend topic's messages.

    An amount is written only if its message is later in the topic than the one that set it:
    a zombie worker replaying old offsets after a rebalance cannot undo a correction.
    """

    async def apply_spend(self, partition: int, offset: int, spend: Spend | None) -> bool:
        """Record that the spend topic's record at ``partition``/``offset`` was handled and, with
        ``spend``, set its channel's amount on its day unless a later record already did.
        True when the amount was written."""
        ...

    async def spend_offsets(self) -> dict[int, int]:
        """The last offset handled per partition of the spend topic."""
        ...


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One message as it came off a topic."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    headers: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be applied, and why."""

    record: SourceRecord
    reason: Reason
    detail: str
    redact: bool = False  # the record names an erased customer: send its position, never its bytes

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers carrying the reason and the source position (Kafka Connect's DLQ convention).

        ``journey.source.topic`` / ``.partition`` / ``.offset`` identify the record: the same
        record dead-lettered twice (after a crash) carries the same three, so consumers
        deduplicate on them.
        """
        r = self.record
        return [
            ("journey.error.reason", self.reason.value.encode()),
            ("journey.error.detail", self.detail.encode()[:1000]),
            ("journey.source.topic", r.topic.encode()),
            ("journey.source.partition", str(r.partition).encode()),
            ("journey.source.offset", str(r.offset).encode()),
            ("journey.source.timestamp", str(r.timestamp_ms or "").encode()),
        ]


class DeadLetterSink(Protocol):
    """Where dead letters go; must not return before they are durably written."""

    async def send(self, letters: Sequence[DeadLetter]) -> None: ...


class MessageSink(Protocol):
    """Where committed outbox messages are published; must not return before they are durable."""

    async def publish(self, messages: Sequence[OutboxMessage], emitted_at_ms: int) -> None: ...
