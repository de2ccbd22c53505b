"""The partition store held in dicts: the same contract as :class:`~streams.state.redis_store.RedisStore`
(claims, fencing, atomic commits, the same encoded values), for unit tests of the service."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from models.clv import OrderHistory, OrderSummary
from models.journey import JourneyState
from models.partition import Effect
from models.propensity import Example
from models.spend import Spend
from models.watermark import Clock
from streams.service.ports import Claim, Conflict, Fenced, Loaded, OutboxMessage
from streams.state import codec


@dataclass
class _Partition:
    epoch: int = 0
    seq: int = 0
    offset: int = -1
    clock: Clock = field(default_factory=Clock)
    customers: dict[str, bytes] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    outbox: list[OutboxMessage] = field(default_factory=list)
    agg: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gaps: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    orders: dict[str, bytes] = field(default_factory=dict)
    examples: list[bytes] = field(default_factory=list)
    erased: dict[str, int] = field(default_factory=dict)


class MemoryStore:
    """:class:`~streams.service.ports.PartitionStore` and :class:`~streams.service.ports.StateQueries` in memory."""

    def __init__(self, partitions: int = 1) -> None:
        self.parts: dict[int, _Partition] = defaultdict(_Partition)
        self.directory: dict[str, int] = {}
        self._partitions = partitions
        self.spend: dict[tuple[str, int], tuple[int, int, int]] = {}  # (channel, day) -> cents, partition, offset
        self.spend_marks: dict[int, int] = {}  # spend-topic partition -> last offset handled

    async def partitions(self) -> int:
        return self._partitions

    async def claim(self, partition: int) -> Claim:
        part = self.parts[partition]
        part.epoch += 1
        return Claim(partition, part.epoch, part.seq, part.offset, Clock(part.clock.high_ms, part.clock.watermark_ms))

    async def refresh(self, claim: Claim) -> None:
        part = self.parts[claim.partition]
        if part.epoch != claim.epoch:
            raise Fenced(f"partition {claim.partition} was claimed by another worker")
        claim.seq, claim.offset = part.seq, part.offset
        claim.clock = Clock(part.clock.high_ms, part.clock.watermark_ms)

    async def load(self, claim: Claim, customer_ids: Collection[str], *, due_until: int, due_limit: int) -> Loaded:
        part = self.parts[claim.partition]
        due = sorted((d, c) for c, d in part.due.items() if d <= due_until)[:due_limit]
        complete = due_until if len(due) < due_limit else due[-1][0] - 1
        customers = {c: codec.decode(part.customers[c]) if c in part.customers else None for c in customer_ids}
        erased = {c: part.erased[c] for c in customer_ids if c in part.erased}
        return Loaded(customers, erased, due, complete)

    async def load_customers(self, claim: Claim, customer_ids: Collection[str]) -> dict[str, JourneyState | None]:
        part = self.parts[claim.partition]
        return {c: codec.decode(part.customers[c]) if c in part.customers else None for c in customer_ids}

    async def commit(self, claim: Claim, effect: Effect, *, offset: int | None) -> None:
        part = self.parts[claim.partition]
        if part.epoch != claim.epoch:
            raise Fenced(f"partition {claim.partition} was claimed by another worker")
        if part.seq != claim.seq:
            raise Conflict(f"partition {claim.partition} was committed since it was read")
        part.seq += 1
        if offset is not None:
            part.offset = offset
        part.clock = Clock(effect.clock.high_ms, effect.clock.watermark_ms)
        for cid in effect.created:
            self.directory[cid] = claim.partition
        for cid, state in effect.customers.items():
            if state is None:
                part.customers.pop(cid, None)
            else:
                part.customers[cid] = codec.encode(state)
        for cid, d in effect.due.items():
            if d is None:
                part.due.pop(cid, None)
            else:
                part.due[cid] = d
        part.outbox += [OutboxMessage(m.key, m.body, m.type, m.status) for m in effect.outbox]
        for name, n in effect.counters.items():
            part.agg[name] += n
        for day, counts in effect.gaps.items():
            for name, n in counts.items():
                part.gaps[day][name] += n
        for cid, summary in effect.orders.items():
            if summary is None:
                part.orders.pop(cid, None)
            else:
                part.orders[cid] = codec.encode_orders(summary)
        part.examples += [codec.encode_example(e) for e in effect.examples]
        part.erased.update(effect.erased)
        claim.seq = part.seq
        claim.clock = Clock(effect.clock.high_ms, effect.clock.watermark_ms)
        if offset is not None:
            claim.offset = offset

    async def outbox(self, partition: int, limit: int) -> list[OutboxMessage]:
        return self.parts[partition].outbox[:limit]

    async def ack_outbox(self, partition: int, count: int) -> None:
        del self.parts[partition].outbox[:count]

    async def partition_of(self, customer_id: str) -> int | None:
        return self.directory.get(customer_id)

    async def customer(self, customer_id: str) -> JourneyState | None:
        p = self.directory.get(customer_id)
        raw = self.parts[p].customers.get(customer_id) if p is not None else None
        return codec.decode(raw) if raw else None

    async def aggregates(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for part in self.parts.values():
            for name, n in part.agg.items():
                total[name] += n
        return dict(total)

    async def gap_counts(self, first_day: int, last_day: int) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for part in self.parts.values():
            for day, counts in part.gaps.items():
                if first_day <= day <= last_day:
                    for name, n in counts.items():
                        total[name] += n
        return dict(total)

    async def order_summaries(self) -> list[OrderSummary]:
        return [codec.decode_orders(raw) for part in self.parts.values() for raw in part.orders.values()]

    async def order_histories(self) -> list[OrderHistory]:
        return [OrderHistory(codec.decode_orders(raw), dict(codec.decode(part.customers[cid]).order_days)
                             if cid in part.customers else {})
                for part in self.parts.values() for cid, raw in part.orders.items()]

    async def clocks(self) -> dict[int, Clock]:
        return {p: part.clock for p, part in self.parts.items()}

    async def offsets(self) -> dict[int, int]:
        return {p: part.offset for p, part in self.parts.items()}

    async def pending_due(self, partitions: Sequence[int]) -> int:
        return sum(len(self.parts[p].due) for p in partitions)

    def examples(self, partition: int) -> list[Example]:
        return [codec.decode_example(raw) for raw in self.parts[partition].examples]

    async def apply_spend(self, partition: int, offset: int, spend: Spend | None) -> bool:
        self.spend_marks[partition] = max(self.spend_marks.get(partition, -1), offset)
        if spend is None:
            return False
        current = self.spend.get((spend.channel, spend.day))
        if current is not None and current[1] == partition and current[2] >= offset:
            return False  # a later record of the partition set it (as spend.lua decides)
        self.spend[spend.channel, spend.day] = (spend.cents, partition, offset)
        return True

    async def spend_offsets(self) -> dict[int, int]:
        return dict(self.spend_marks)

    async def spend_by_channel(self, first_day: int, last_day: int) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for (channel, day), (cents, _, _) in self.spend.items():
            if first_day <= day <= last_day:
                total[channel] += cents
        return dict(total)
