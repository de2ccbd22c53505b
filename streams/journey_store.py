"""Where journey state lives: the ``JourneyStore`` port, its Redis adapter and an in-memory twin.

Besides the state, the store keeps each customer's deadlines (per source partition, in a
sorted set scored by due time) and an outbox of alert facts per partition. Alerts are
decided inside the same atomic step as the state change that causes them; publishing the
outbox to Kafka is a separate, repeatable step (the transactional-outbox pattern).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from models.alerts import AlertFacts, AlertStatus, AlertType
from models.deadlines import Deadlines, OpenAlert, after_event, fire_due
from models.events import TouchpointEvent
from models.journey import JourneyState, Outcome, advance, to_cents
from models.journey_map import JourneyMap
from models.value import attribute

_SCRIPT = Path(__file__).with_name("journey_store.lua").read_text()


@dataclass(frozen=True, slots=True)
class Arrival:
    """A valid event, the partition it came from and the watermark of that partition when it arrived."""

    event: TouchpointEvent
    partition: int
    watermark_ms: int


@dataclass(frozen=True, slots=True)
class ScoringPoint:
    """An applied event that is a propensity scoring point, with the customer's state right after it.

    ``state`` holds what the propensity features need (stage, timing, counts of the feature
    touchpoints, channel, orders and revenue); its path, dedupe and value-by-day fields are empty.
    """

    partition: int
    event: TouchpointEvent
    state: JourneyState


def feature_touchpoints(journey: JourneyMap) -> tuple[str, ...]:
    """The touchpoints counted in the propensity features: all but the upsell itself (its count
    would tell the model the label)."""
    return tuple(tp for tp in journey.touchpoints if tp not in journey.propensity.upsell)


class JourneyStore(Protocol):
    """Applies events to per-customer journey state exactly once per event id, and keeps deadlines."""

    async def apply(self, arrivals: Sequence[Arrival], watermarks: dict[int, int]) -> list[Outcome]:
        """Apply a batch; ``watermarks`` is each partition's watermark after it. One outcome per event."""
        ...

    async def apply_scored(
        self, arrivals: Sequence[Arrival], watermarks: dict[int, int]
    ) -> tuple[list[Outcome], list[ScoringPoint]]:
        """:meth:`apply`, also returning the applied scoring points (in arrival order) with their state."""
        ...

    async def check_deadlines(self, partition: int, watermark_ms: int, limit: int = 1000) -> int:
        """Fire the partition's deadlines the watermark has passed; return how many customers were due."""
        ...

    async def outbox(self, partition: int, limit: int = 1000) -> list[AlertFacts]:
        """The oldest alert facts waiting to be published (not removed)."""
        ...

    async def ack_outbox(self, partition: int, count: int) -> None:
        """Remove the first ``count`` facts, once they are safely published."""
        ...

    async def get(self, customer_id: str) -> JourneyState | None: ...

    async def funnel(self) -> dict[str, int]:
        """How many customers are currently in each stage."""
        ...


def facts_from_json(raw: bytes | str) -> AlertFacts:
    d: dict[str, Any] = orjson.loads(raw)
    return AlertFacts(
        type=AlertType(d["type"]),
        status=AlertStatus(d["status"]),
        customer_id=d["customer_id"],
        stage=d["stage"],
        touchpoint=d["touchpoint"],
        anchor_ms=int(d["anchor_ms"]),
        expected_ms=int(d["expected_ms"]),
        at_ms=int(d["at_ms"]),
        next_touchpoint=d.get("next_touchpoint") or None,
        severity=d.get("severity") or "medium",
        score=float(d["score"]) if d.get("score") is not None else None,
        model_version=int(d["model_version"]) if d.get("model_version") is not None else None,
    )


class RedisJourneyStore:
    """Journey state in Redis: per customer one hash and one dedupe sorted set.

    A batch costs one round trip: one ``EVALSHA`` per customer in the batch, pipelined.
    The script does the dedupe check, the update, the deadlines and the alert decisions
    together, so a redelivered event changes nothing even when the worker died after
    writing and before committing its offsets.
    """

    def __init__(
        self,
        redis: Redis,
        journey: JourneyMap,
        *,
        prefix: str = "jt:v1",
        dedupe_window_ms: int,
        path_length: int,
        gaps_ttl_s: int = 400 * 86400,
        value_days_kept: int = 365,
        attribution_lookback_ms: int = 30 * 86_400_000,
        attribution_half_life_ms: int = 7 * 86_400_000,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.gaps_ttl_s = gaps_ttl_s
        self.value_days_kept = value_days_kept
        self.attribution_lookback_ms = attribution_lookback_ms
        self.attribution_half_life_ms = attribution_half_life_ms
        self.dedupe_window_ms = dedupe_window_ms
        self.path_length = path_length
        self._sha: str | None = None
        self.use_map(journey)

    def use_map(self, journey: JourneyMap) -> None:
        """Switch to a (reloaded) journey map; deadlines already set keep their due times."""
        self.journey = journey
        self._map_args = (
            ",".join(f"{tp}={journey.stage_of(tp)}" for tp in journey.critical_path),
            ",".join(str(ms) for ms in journey.stall_after_ms),
            ",".join(journey.stages),
            ",".join(str(journey.max_silence_ms.get(s) or 0) for s in journey.stages),
            ",".join(journey.severity.get(s, "medium") for s in journey.stages),
            ",".join(f"{a.source}>{a.target}" for a in journey.flow.activities) if journey.flow else "",
            str(self.gaps_ttl_s),
            ",".join(f"{tp}={st}={journey.value_roles.get(tp, '')}" for tp, st in journey.touchpoints.items()),
            str(self.attribution_lookback_ms),
            str(self.attribution_half_life_ms),
            str(self.value_days_kept),
            ",".join(journey.propensity.score_after),
            ",".join(journey.propensity.upsell),
            ",".join(feature_touchpoints(journey)),
        )
        self._feature_tps = feature_touchpoints(journey)

    def journey_key(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{customer_id}}}:journey"

    def seen_key(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{customer_id}}}:seen"

    def deadlines_key(self, partition: int) -> str:
        return f"{self.prefix}:deadlines:{partition}"

    def outbox_key(self, partition: int) -> str:
        return f"{self.prefix}:outbox:{partition}"

    @property
    def funnel_key(self) -> str:
        return f"{self.prefix}:funnel"

    @property
    def gaps_key(self) -> str:
        return f"{self.prefix}:gaps"

    @property
    def value_key(self) -> str:
        return f"{self.prefix}:value"

    async def value_totals(self) -> dict[str, float]:
        """Attributed value and value lost with drop-offs (cents), as kept by the script."""
        return {k.decode(): float(v) for k, v in (await self.redis.hgetall(self.value_key)).items()}

    async def gap_counts(self, first_day: int, last_day: int) -> dict[str, int]:
        """Gap statistics summed over event-time days ``first_day..last_day`` (days since the epoch)."""
        days = range(first_day, last_day + 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(f"{self.gaps_key}:{day}")
            replies = await pipe.execute()
        total: dict[str, int] = defaultdict(int)
        for reply in replies:
            for field, value in reply.items():
                total[field.decode()] += int(value)
        return dict(total)

    async def _execute(self, calls: dict[int, tuple[int, list[tuple[str, int, list[str | int]]]]]) -> dict[int, Any]:
        """Run one script call per partition — ``{partition: (watermark, [(customer, n events, args)])}`` —
        as one pipeline; reload the script if Redis lost it. Returns each partition's per-customer codes."""
        if self._sha is None:
            self._sha = await self.redis.script_load(_SCRIPT)
        try:
            return await self._pipeline(calls)
        except NoScriptError:
            # Redis restarted or was flushed; every call is idempotent, so run them again.
            self._sha = await self.redis.script_load(_SCRIPT)
            return await self._pipeline(calls)

    async def _pipeline(self, calls: dict[int, tuple[int, list[tuple[str, int, list[str | int]]]]]) -> dict[int, Any]:
        fixed = (self.dedupe_window_ms, self.path_length)
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, (watermark, customers) in calls.items():
                keys = [
                    self.funnel_key,
                    self.deadlines_key(partition),
                    self.outbox_key(partition),
                    self.gaps_key,
                    self.value_key,
                ]
                args: list[str | int] = [*fixed, watermark, *self._map_args]
                for customer_id, n_events, event_args in customers:
                    keys += (self.journey_key(customer_id), self.seen_key(customer_id))
                    args += (customer_id, n_events, *event_args)
                pipe.evalsha(self._sha, len(keys), *keys, *args)  # type: ignore[arg-type]
            replies = await pipe.execute()
        return dict(zip(calls, replies, strict=True))

    async def apply(self, arrivals: Sequence[Arrival], watermarks: dict[int, int]) -> list[Outcome]:
        return (await self.apply_scored(arrivals, watermarks))[0]

    def _snapshot(self, arrival: Arrival, snap: list[Any]) -> ScoringPoint:
        stage, since, first, last, events, channel, orders, gross, refunded, lo_ms = snap[1:11]
        state = JourneyState(
            customer_id=arrival.event.customer_id,
            stage=stage.decode(),
            stage_since_ms=since,
            first_seen_ms=first,
            last_seen_ms=last,
            events=events,
            touchpoints={tp: n for tp, n in zip(self._feature_tps, snap[11:], strict=True) if n},
            channel=channel.decode() or None,
            orders=orders,
            gross_cents=gross,
            refunded_cents=refunded,
            last_order_ms=lo_ms if lo_ms >= 0 else None,
        )
        return ScoringPoint(arrival.partition, arrival.event, state)

    async def apply_scored(
        self, arrivals: Sequence[Arrival], watermarks: dict[int, int]
    ) -> tuple[list[Outcome], list[ScoringPoint]]:
        if not arrivals:
            return [], []
        groups: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, a in enumerate(arrivals):
            groups[a.partition][a.event.customer_id].append(i)
        stage_of, rank = self.journey.stage_of, self.journey.rank
        calls: dict[int, tuple[int, list[tuple[str, int, list[str | int]]]]] = {}
        for partition, customers in groups.items():
            batch = []
            for customer_id, indexes in customers.items():
                args: list[str | int] = []
                for i in indexes:
                    a = arrivals[i]
                    e = a.event
                    stage = stage_of(e.touchpoint)
                    cents = to_cents(e.value) if e.value is not None else 0
                    args += (
                        e.event_id,
                        e.ts_ms,
                        e.touchpoint,
                        stage,
                        rank(stage),
                        e.channel or "",
                        a.watermark_ms,
                        cents,
                    )
                batch.append((customer_id, len(indexes), args))
            calls[partition] = (watermarks[partition], batch)
        replies = await self._execute(calls)
        outcomes: list[Outcome] = [Outcome.DUPLICATE] * len(arrivals)
        points: list[tuple[int, ScoringPoint]] = []
        for partition, customers in groups.items():
            for indexes, codes in zip(customers.values(), replies[partition], strict=True):
                for i, code in zip(indexes, codes, strict=True):
                    if isinstance(code, list):  # an applied scoring point and its snapshot
                        outcomes[i] = Outcome.APPLIED
                        points.append((i, self._snapshot(arrivals[i], code)))
                    else:
                        outcomes[i] = Outcome(code)
        points.sort(key=lambda ip: ip[0])
        return outcomes, [p for _, p in points]

    async def check_deadlines(self, partition: int, watermark_ms: int, limit: int = 1000) -> int:
        due = await self.redis.zrangebyscore(self.deadlines_key(partition), "-inf", watermark_ms, start=0, num=limit)
        if not due:
            return 0
        customers = [m.decode() for m in due]
        await self._execute({partition: (watermark_ms, [(cid, 0, []) for cid in customers])})
        return len(customers)

    async def outbox(self, partition: int, limit: int = 1000) -> list[AlertFacts]:
        return [facts_from_json(raw) for raw in await self.redis.lrange(self.outbox_key(partition), 0, limit - 1)]

    async def ack_outbox(self, partition: int, count: int) -> None:
        if count:
            await self.redis.ltrim(self.outbox_key(partition), count, -1)

    async def pending_deadlines(self, partition: int) -> int:
        return int(await self.redis.zcard(self.deadlines_key(partition)))

    async def get(self, customer_id: str) -> JourneyState | None:
        return self._state(customer_id, await self.redis.hgetall(self.journey_key(customer_id)))

    async def get_many(self, customer_ids: list[str]) -> dict[str, JourneyState]:
        """Several customers in one round trip (unknown ones are left out)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in customer_ids:
                pipe.hgetall(self.journey_key(cid))
            replies = await pipe.execute()
        states = {cid: self._state(cid, raw) for cid, raw in zip(customer_ids, replies, strict=True)}
        return {cid: st for cid, st in states.items() if st is not None}

    @staticmethod
    def _state(customer_id: str, raw: dict[bytes, bytes]) -> JourneyState | None:
        if not raw or b"stage" not in raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        counts = {k[2:]: int(v) for k, v in h.items() if k.startswith("n:")}
        lasts = {k[2:]: int(v) for k, v in h.items() if k.startswith("t:")}
        # event times in base 36, as the script writes them
        entries = (p.split(":", 2) for p in h.get("path", "").split(",") if p)
        path = tuple((int(ts, 36), tp, ch) for ts, tp, ch in entries)
        days = [int(d) for d in h.get("vdays", "").split(",") if d]
        return JourneyState(
            customer_id=customer_id,
            stage=h["stage"],
            stage_since_ms=int(h["since"]),
            first_seen_ms=int(h["first"]),
            last_seen_ms=int(h["last"]),
            events=int(h["events"]),
            touchpoints=counts,
            touchpoint_last_ms=lasts,
            path=path,
            channel=h.get("channel"),
            channel_ms=int(h["channel_ms"]) if "channel_ms" in h else None,
            orders=int(h.get("orders", 0)),
            gross_cents=int(h.get("gross", 0)),
            refunded_cents=int(h.get("refunded", 0)),
            first_order_ms=int(h["fo_ms"]) if "fo_ms" in h else None,
            first_order_cents=int(h["fo_c"]) if "fo_c" in h else None,
            last_order_ms=int(h["lo_ms"]) if "lo_ms" in h else None,
            value_days={d: int(h[f"v:{d}"]) for d in days if f"v:{d}" in h},
            order_days={d: int(h[f"o:{d}"]) for d in days if f"o:{d}" in h},
        )

    async def get_deadlines(self, customer_id: str, partition: int) -> Deadlines:  # noqa: ARG002
        """A customer's deadlines and open alerts, in the reference model's terms."""
        h = {
            k.decode(): v.decode()
            for k, v in (await self.redis.hgetall(self.journey_key(customer_id))).items()
            if k in (b"crit", b"crit_ms", b"stall_open", b"drop_open", b"sdue", b"ddue")
        }
        stall_due = int(h["sdue"]) if h.get("sdue") else None
        drop_due = int(h["ddue"]) if h.get("ddue") else None

        def open_alert(text: str | None) -> OpenAlert | None:
            if not text:
                return None
            tp, anchor_ms, expected_ms, stage, severity, next_tp = orjson.loads(text)  # as the script keeps it
            return OpenAlert(tp, int(anchor_ms), int(expected_ms), stage, severity, next_tp or None)

        return Deadlines(
            crit=int(h["crit"]) - 1 if "crit" in h else None,  # Lua counts from 1
            crit_ms=int(h.get("crit_ms", 0)),
            stall_due=int(stall_due) if stall_due is not None else None,
            stall_open=open_alert(h.get("stall_open")),
            drop_due=int(drop_due) if drop_due is not None else None,
            drop_open=open_alert(h.get("drop_open")),
        )

    async def funnel(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.funnel_key)
        counts = {k.decode(): int(v) for k, v in raw.items()}
        return {stage: counts.get(stage, 0) for stage in self.journey.stages}


class InMemoryJourneyStore:
    """The same contract held in dicts, built on the reference model (for unit tests)."""

    def __init__(
        self,
        journey: JourneyMap,
        *,
        dedupe_window_ms: int,
        path_length: int,
        value_days_kept: int = 365,
        attribution_lookback_ms: int = 30 * 86_400_000,
        attribution_half_life_ms: int = 7 * 86_400_000,
    ) -> None:
        self.journey = journey
        self.dedupe_window_ms = dedupe_window_ms
        self.path_length = path_length
        self.value_days_kept = value_days_kept
        self.attribution_lookback_ms = attribution_lookback_ms
        self.attribution_half_life_ms = attribution_half_life_ms
        self.totals: dict[str, float] = defaultdict(float)
        self.states: dict[str, JourneyState] = {}
        self.deadlines: dict[str, Deadlines] = {}
        self.partition_of: dict[str, int] = {}
        self.outboxes: dict[int, list[AlertFacts]] = defaultdict(list)

    def _fire(self, customer_id: str, partition: int, watermark_ms: int) -> None:
        state = self.states.get(customer_id)
        if state is None:
            return
        dl, facts = fire_due(self.deadlines.get(customer_id, Deadlines()), state, self.journey, watermark_ms)
        self.deadlines[customer_id] = dl
        self.outboxes[partition] += facts
        for f in facts:
            if f.type is AlertType.DROP_OFF:
                self.totals[f"stage|lost_customers|{f.stage}"] += 1
                self.totals[f"stage|lost_revenue|{f.stage}"] += state.revenue_cents

    def _attribute(self, state: JourneyState, event: TouchpointEvent) -> None:
        roles = self.journey.value_roles
        if roles.get(event.touchpoint) != "order":
            return
        cents = to_cents(event.value or 0.0)
        touches = [t for t in state.path if t[1] not in roles]
        shares = attribute(
            touches,
            event.ts_ms,
            cents,
            lookback_ms=self.attribution_lookback_ms,
            half_life_ms=self.attribution_half_life_ms,
        )
        if not any(shares["linear"]):
            self.totals["unattributed"] += cents
            return
        for model, split in shares.items():
            for (_, tp, ch), share in zip(touches, split, strict=True):
                if share:
                    self.totals[f"tp|{model}|{tp}"] += share
                    self.totals[f"ch|{model}|{ch or '(none)'}"] += share
        for (_, tp, _), share in zip(touches, shares["linear"], strict=True):
            if share:
                self.totals[f"stage|created|{self.journey.stage_of(tp)}"] += share

    async def value_totals(self) -> dict[str, float]:
        return dict(self.totals)

    async def apply(self, arrivals: Sequence[Arrival], watermarks: dict[int, int]) -> list[Outcome]:
        return (await self.apply_scored(arrivals, watermarks))[0]

    async def apply_scored(
        self, arrivals: Sequence[Arrival], watermarks: dict[int, int]
    ) -> tuple[list[Outcome], list[ScoringPoint]]:
        scoring = set(self.journey.propensity.score_after)
        feature_tps = feature_touchpoints(self.journey)
        points: list[tuple[int, ScoringPoint]] = []
        groups: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, a in enumerate(arrivals):
            groups[(a.partition, a.event.customer_id)].append(i)
        outcomes: list[Outcome] = [Outcome.DUPLICATE] * len(arrivals)
        for (partition, cid), indexes in groups.items():
            self.partition_of[cid] = partition
            for i in indexes:
                event = arrivals[i].event
                before = self.states.get(cid)
                state, outcome = advance(
                    before,
                    event,
                    self.journey,
                    dedupe_window_ms=self.dedupe_window_ms,
                    path_length=self.path_length,
                    value_days_kept=self.value_days_kept,
                )
                outcomes[i] = outcome
                if outcome is not Outcome.APPLIED:
                    continue
                if before is not None:
                    self._fire(cid, partition, arrivals[i].watermark_ms)
                self.states[cid] = state
                self._attribute(state, event)
                dl, facts = after_event(
                    self.deadlines.get(cid, Deadlines()), state, event.touchpoint, event.ts_ms, self.journey
                )
                self.deadlines[cid] = dl
                self.outboxes[partition] += facts
                if event.touchpoint in scoring:
                    snap = replace(
                        state,
                        touchpoints={tp: n for tp, n in state.touchpoints.items() if tp in feature_tps},
                        touchpoint_last_ms={},
                        path=(),
                        channel_ms=None,
                        first_order_ms=None,
                        first_order_cents=None,
                        value_days={},
                        order_days={},
                        seen={},
                    )
                    points.append((i, ScoringPoint(partition, event, snap)))
            self._fire(cid, partition, watermarks[partition])
        points.sort(key=lambda ip: ip[0])
        return outcomes, [p for _, p in points]

    async def check_deadlines(self, partition: int, watermark_ms: int, limit: int = 1000) -> int:
        due = [
            cid
            for cid, dl in self.deadlines.items()
            if self.partition_of.get(cid) == partition
            and any(d is not None and d <= watermark_ms for d in (dl.stall_due, dl.drop_due))
        ][:limit]
        for cid in due:
            self._fire(cid, partition, watermark_ms)
        return len(due)

    async def outbox(self, partition: int, limit: int = 1000) -> list[AlertFacts]:
        return self.outboxes[partition][:limit]

    async def ack_outbox(self, partition: int, count: int) -> None:
        del self.outboxes[partition][:count]

    async def get(self, customer_id: str) -> JourneyState | None:
        return self.states.get(customer_id)

    async def get_deadlines(self, customer_id: str, partition: int) -> Deadlines:  # noqa: ARG002
        return self.deadlines.get(customer_id, Deadlines())

    async def funnel(self) -> dict[str, int]:
        counts = dict.fromkeys(self.journey.stages, 0)
        for state in self.states.values():
            counts[state.stage] += 1
        return counts
