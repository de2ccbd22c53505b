"""The partition store and its queries on Redis, standalone or Cluster.

Per batch and partition: one ``load.lua`` call (customers, their erasure records, who is due),
sometimes one ``MGET`` (due customers the batch does not name), and one ``commit.lua`` call
that checks the claim and writes everything. Every key of those calls has the partition's hash
tag, so each is a single-slot operation on Redis Cluster too (``streams/state/keys.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from models.clv import OrderHistory, OrderSummary
from models.journey import JourneyState
from models.partition import Effect, OutboxEntry
from models.privacy import pseudonym_digest
from models.propensity import Example
from models.spend import Spend
from models.watermark import NO_WATERMARK, Clock
from streams.service.ports import Claim, Conflict, Fenced, Loaded, OutboxMessage
from streams.state import codec
from streams.state.keys import Keys

_HERE = Path(__file__).parent
_CLAIM = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local v = redis.call('HMGET', KEYS[1], 'seq', 'offset', 'high', 'wm')
return {epoch, v[1] or '0', v[2] or '-1', v[3] or '', v[4] or ''}
"""
GAPS_TTL_S = 400 * 86400
SPEND_MARK = b"{offset}:"  # spend-table fields of the offsets handled (no channel holds a brace)
_SEP = b"\x00"


def encode_message(entry: OutboxEntry) -> bytes:
    """An outbox entry as stored: ``type:status NUL key NUL body`` (JSON and ids never hold NUL)."""
    return b"%s:%s\x00%s\x00%s" % (entry.type.encode(), entry.status.encode(), entry.key.encode(), entry.body or b"")


def decode_message(raw: bytes) -> OutboxMessage:
    kind, key, body = raw.split(_SEP, 2)
    type_, _, status = kind.decode().partition(":")
    return OutboxMessage(key.decode(), body or None, type_, status)


class RedisStore:
    """:class:`~streams.service.ports.PartitionStore` and :class:`~streams.service.ports.StateQueries`
    on Redis (``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``)."""

    def __init__(self, redis: Any, keys: Keys, *, pseudonym_key: bytes, gaps_ttl_s: int = GAPS_TTL_S) -> None:
        self.redis = redis
        self.keys = keys
        self.pseudonym_key = pseudonym_key
        self.gaps_ttl_s = gaps_ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._load = redis.register_script((_HERE / "load.lua").read_text())
        self._commit = redis.register_script((_HERE / "commit.lua").read_text())
        self._spend = redis.register_script((_HERE / "spend.lua").read_text())
        self._partitions: int | None = None

    def digest(self, customer_id: str) -> bytes:
        return pseudonym_digest(self.pseudonym_key, customer_id)

    # ---- topology ----

    async def set_partitions(self, count: int) -> None:
        """Record the touchpoints topic's partition count (the aggregates are summed over them)."""
        await self.redis.hset(self.keys.topology, "partitions", count)
        self._partitions = count

    async def partitions(self) -> int:
        if self._partitions is None:
            raw = await self.redis.hget(self.keys.topology, "partitions")
            if raw is None:
                return 0
            self._partitions = int(raw)
        return self._partitions

    # ---- the write side ----

    async def claim(self, partition: int) -> Claim:
        epoch, seq, offset, high, wm = await self._claim(keys=[self.keys.meta(partition)])
        clock = Clock(int(high) if high else NO_WATERMARK, int(wm) if wm else NO_WATERMARK)
        return Claim(partition, int(epoch), int(seq), int(offset), clock)

    async def refresh(self, claim: Claim) -> None:
        epoch, seq, offset, high, wm = await self.redis.hmget(self.keys.meta(claim.partition),
                                                             "epoch", "seq", "offset", "high", "wm")
        if int(epoch or 0) != claim.epoch:
            raise Fenced(f"partition {claim.partition} was claimed by another worker")
        claim.seq, claim.offset = int(seq or 0), int(offset if offset is not None else -1)
        claim.clock = Clock(int(high) if high else NO_WATERMARK, int(wm) if wm else NO_WATERMARK)

    async def load(self, claim: Claim, customer_ids: Collection[str], *, due_until: int, due_limit: int) -> Loaded:
        p = claim.partition
        cids = list(customer_ids)
        keys = [self.keys.due(p), self.keys.erased(p), *(self.keys.customer(p, c) for c in cids)]
        args = [due_until, due_limit, *(self.digest(c) for c in cids)]
        due_raw, values, erased_raw = await self._load(keys=keys, args=args)
        customers = {c: codec.decode(v) if v else None for c, v in zip(cids, values, strict=True)}
        erased = {c: int(t) for c, t in zip(cids, erased_raw, strict=True) if t}
        due = [(int(float(due_raw[i + 1])), due_raw[i].decode()) for i in range(0, len(due_raw), 2)]
        complete = due_until if len(due) < due_limit else due[-1][0] - 1
        return Loaded(customers, erased, due, complete)

    async def load_customers(self, claim: Claim, customer_ids: Collection[str]) -> dict[str, JourneyState | None]:
        cids = list(customer_ids)
        if not cids:
            return {}
        values = await self.redis.mget([self.keys.customer(claim.partition, c) for c in cids])
        return {c: codec.decode(v) if v else None for c, v in zip(cids, values, strict=True)}

    async def commit(self, claim: Claim, effect: Effect, *, offset: int | None) -> None:
        p = claim.partition
        k = self.keys
        gap_days = sorted(effect.gaps)
        customers = list(effect.customers.items())
        keys = [k.meta(p), k.due(p), k.outbox(p), k.agg(p), k.orders(p), k.examples(p), k.erased(p),
                *(k.gaps(p, d) for d in gap_days), *(k.customer(p, c) for c, _ in customers)]
        clock = effect.clock
        args: list[Any] = [claim.epoch, claim.seq, "" if offset is None else offset, clock.high_ms,
                           clock.watermark_ms, len(gap_days), len(customers), self.gaps_ttl_s]
        args += [codec.encode(st) if st is not None else b"" for _, st in customers]
        due_set = [(d, c) for c, d in effect.due.items() if d is not None]
        due_rem = [c for c, d in effect.due.items() if d is None]
        args.append(len(due_set))
        for d, c in due_set:
            args += (d, c)
        args += (len(due_rem), *due_rem)
        args += (len(effect.outbox), *(encode_message(m) for m in effect.outbox))
        counters = [(f, n) for f, n in effect.counters.items() if n]
        args.append(len(counters))
        for f, n in counters:
            args += (f, n)
        for d in gap_days:
            pairs = effect.gaps[d]
            args.append(len(pairs))
            for f, n in pairs.items():
                args += (f, n)
        order_set = [(c, s) for c, s in effect.orders.items() if s is not None]
        order_rem = [c for c, s in effect.orders.items() if s is None]
        args.append(len(order_set))
        for c, s in order_set:
            args += (c, codec.encode_orders(s))
        args += (len(order_rem), *order_rem)
        args += (len(effect.examples), *(codec.encode_example(e) for e in effect.examples))
        args.append(len(effect.erased))
        for c, t in effect.erased.items():
            args += (self.digest(c), t)
        if effect.created:
            await self._register(p, effect.created)
        status, value = await self._commit(keys=keys, args=args)
        if status == -1:
            raise Fenced(f"partition {p} was claimed by another worker (epoch {value!r}, ours {claim.epoch})")
        if status == -2:
            raise Conflict(f"partition {p} was committed since it was read (seq {value}, ours {claim.seq})")
        claim.seq = int(value)
        claim.clock = Clock(clock.high_ms, clock.watermark_ms)
        if offset is not None:
            claim.offset = offset

    async def _register(self, partition: int, customer_ids: Collection[str]) -> None:
        """Write new customers into the directory (before their state: a crash between the two
        leaves an entry pointing at a partition that does not hold them, which reads as unknown)."""
        by_bucket: dict[str, dict[bytes, int]] = defaultdict(dict)
        for c in customer_ids:
            digest = self.digest(c)
            by_bucket[self.keys.directory(digest)][digest] = partition
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, fields in by_bucket.items():
                pipe.hset(key, mapping=fields)
            await pipe.execute()

    async def outbox(self, partition: int, limit: int) -> list[OutboxMessage]:
        return [decode_message(m) for m in await self.redis.lrange(self.keys.outbox(partition), 0, limit - 1)]

    async def ack_outbox(self, partition: int, count: int) -> None:
        if count:
            await self.redis.ltrim(self.keys.outbox(partition), count, -1)

    # ---- the read side ----

    async def partition_of(self, customer_id: str) -> int | None:
        digest = self.digest(customer_id)
        raw = await self.redis.hget(self.keys.directory(digest), digest)
        return int(raw) if raw is not None else None

    async def customer(self, customer_id: str) -> JourneyState | None:
        p = await self.partition_of(customer_id)
        if p is None:
            return None
        raw = await self.redis.get(self.keys.customer(p, customer_id))
        return codec.decode(raw) if raw else None

    async def erased_at(self, customer_id: str) -> int | None:
        """When the customer was erased (None: never, or not known to the directory)."""
        p = await self.partition_of(customer_id)
        if p is None:
            return None
        raw = await self.redis.hget(self.keys.erased(p), self.digest(customer_id))
        return int(raw) if raw is not None else None

    async def _hgetall_summed(self, keys: list[str]) -> dict[str, int]:
        """HGETALL of many hashes (pipelined; on a cluster, per node), their fields summed."""
        total: dict[str, int] = defaultdict(int)
        for i in range(0, len(keys), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys[i : i + 1000]:
                    pipe.hgetall(key)
                replies = await pipe.execute()
            for reply in replies:
                for f, v in reply.items():
                    total[f.decode()] += int(v)
        return dict(total)

    async def aggregates(self) -> dict[str, int]:
        return await self._hgetall_summed([self.keys.agg(p) for p in range(await self.partitions())])

    async def gap_counts(self, first_day: int, last_day: int) -> dict[str, int]:
        n = await self.partitions()
        return await self._hgetall_summed(
            [self.keys.gaps(p, d) for p in range(n) for d in range(first_day, last_day + 1)])

    async def order_summaries(self) -> list[OrderSummary]:
        out: list[OrderSummary] = []
        for p in range(await self.partitions()):
            async for _, raw in self.redis.hscan_iter(self.keys.orders(p), count=5000):
                out.append(codec.decode_orders(raw))
        return out

    async def order_histories(self) -> list[OrderHistory]:
        out: list[OrderHistory] = []
        for p in range(await self.partitions()):
            summaries = {f.decode(): codec.decode_orders(raw)
                         async for f, raw in self.redis.hscan_iter(self.keys.orders(p), count=5000)}
            cids = list(summaries)
            for i in range(0, len(cids), 500):  # one slot per partition: an MGET works on a cluster too
                chunk = cids[i : i + 500]
                values = await self.redis.mget([self.keys.customer(p, c) for c in chunk])
                out += [OrderHistory(summaries[c], dict(codec.decode(v).order_days) if v else {})
                        for c, v in zip(chunk, values, strict=True)]
        return out

    async def clocks(self) -> dict[int, Clock]:
        n = await self.partitions()
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(n):
                pipe.hmget(self.keys.meta(p), "high", "wm")
            replies = await pipe.execute()
        return {
            p: Clock(int(high) if high else NO_WATERMARK, int(wm) if wm else NO_WATERMARK)
            for p, (high, wm) in enumerate(replies)
        }

    async def offsets(self) -> dict[int, int]:
        n = await self.partitions()
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(n):
                pipe.hget(self.keys.meta(p), "offset")
            replies = await pipe.execute()
        return {p: int(v) if v is not None else -1 for p, v in enumerate(replies)}

    async def pending_due(self, partitions: Sequence[int]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.zcard(self.keys.due(p))
            return sum(await pipe.execute())

    # ---- marketing spend (one hash, see keys.py; written by spend.lua) ----

    async def apply_spend(self, partition: int, offset: int, spend: Spend | None) -> bool:
        field, cents = (f"{spend.channel}|{spend.day}", spend.cents) if spend is not None else ("", 0)
        return bool(await self._spend(keys=[self.keys.spend], args=[partition, offset, field, cents]))

    async def spend_offsets(self) -> dict[int, int]:
        table = await self.redis.hgetall(self.keys.spend)
        return {int(f[len(SPEND_MARK):]): int(v) for f, v in table.items() if f.startswith(SPEND_MARK)}

    async def spend_by_channel(self, first_day: int, last_day: int) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for f, v in (await self.redis.hgetall(self.keys.spend)).items():
            if f.startswith(SPEND_MARK):
                continue
            channel, _, day = f.decode().rpartition("|")
            if first_day <= int(day) <= last_day:
                total[channel] += int(v.split(b" ", 1)[0])
        return dict(total)

    async def examples(self, partition: int, after: str, count: int) -> list[tuple[str, Example]]:
        """Settled examples of a partition after stream id ``after`` (oldest first)."""
        entries = await self.redis.xrange(self.keys.examples(partition), min=f"({after}", count=count)
        return [(i.decode(), codec.decode_example(fields[b"e"])) for i, fields in entries]

    async def trim_examples(self, partition: int, upto: str) -> None:
        """Forget the examples up to and including ``upto`` (learned and checkpointed)."""
        await self.redis.xtrim(self.keys.examples(partition), minid=upto, approximate=False)
        await self.redis.xdel(self.keys.examples(partition), upto)
