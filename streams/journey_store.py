"""Where journey state lives: the ``JourneyStore`` port, its Redis adapter and an in-memory twin."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from models.events import TouchpointEvent
from models.journey import JourneyState, Outcome, advance
from models.journey_map import JourneyMap

_SCRIPT = Path(__file__).with_name("journey_store.lua").read_text()


class JourneyStore(Protocol):
    """Applies events to per-customer journey state, exactly once per event id."""

    async def apply(self, events: Sequence[TouchpointEvent]) -> list[Outcome]:
        """Apply a batch; return one outcome per event, in order."""
        ...

    async def get(self, customer_id: str) -> JourneyState | None: ...

    async def funnel(self) -> dict[str, int]:
        """How many customers are currently in each stage."""
        ...


def group_by_customer(events: Sequence[TouchpointEvent]) -> dict[str, list[int]]:
    """Indexes of each customer's events, in arrival order (dicts keep first-seen order)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        groups[event.customer_id].append(i)
    return groups


class RedisJourneyStore:
    """Journey state in Redis: one hash and one dedupe sorted set per customer.

    A batch costs one round trip: one ``EVALSHA`` per customer in the batch, pipelined.
    The script does the dedupe check and the update together, so a redelivered event
    changes nothing even when the worker died after writing and before committing.
    """

    def __init__(
        self,
        redis: Redis,
        journey: JourneyMap,
        *,
        prefix: str = "jt:v1",
        dedupe_window_ms: int,
        path_length: int,
    ) -> None:
        self.redis = redis
        self.journey = journey
        self.prefix = prefix
        self.dedupe_window_ms = dedupe_window_ms
        self.path_length = path_length
        self._sha: str | None = None

    def journey_key(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{customer_id}}}:journey"

    def seen_key(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{customer_id}}}:seen"

    @property
    def funnel_key(self) -> str:
        return f"{self.prefix}:funnel"

    async def apply(self, events: Sequence[TouchpointEvent]) -> list[Outcome]:
        if not events:
            return []
        if self._sha is None:
            self._sha = await self.redis.script_load(_SCRIPT)
        groups = group_by_customer(events)
        try:
            replies = await self._run(events, groups)
        except NoScriptError:
            # Redis restarted or was flushed; the batch is idempotent, so run it again.
            self._sha = await self.redis.script_load(_SCRIPT)
            replies = await self._run(events, groups)
        outcomes: list[Outcome] = [Outcome.DUPLICATE] * len(events)
        for indexes, codes in zip(groups.values(), replies, strict=True):
            for i, code in zip(indexes, codes, strict=True):
                outcomes[i] = Outcome(code)
        return outcomes

    async def _run(self, events: Sequence[TouchpointEvent], groups: dict[str, list[int]]) -> list[list[int]]:
        stage_of, rank = self.journey.stage_of, self.journey.rank
        fixed = (str(self.dedupe_window_ms), str(self.path_length))
        async with self.redis.pipeline(transaction=False) as pipe:
            for customer_id, indexes in groups.items():
                args: list[str | int] = [customer_id, *fixed]
                for i in indexes:
                    e = events[i]
                    stage = stage_of(e.touchpoint)
                    args += (e.event_id, e.ts_ms, e.touchpoint, stage, rank(stage), e.channel or "")
                pipe.evalsha(
                    self._sha,  # type: ignore[arg-type]
                    3,
                    self.journey_key(customer_id),
                    self.seen_key(customer_id),
                    self.funnel_key,
                    *args,
                )
            return await pipe.execute()  # type: ignore[no-any-return]

    async def get(self, customer_id: str) -> JourneyState | None:
        raw = await self.redis.hgetall(self.journey_key(customer_id))
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        counts = {k[2:]: int(v) for k, v in h.items() if k.startswith("n:")}
        lasts = {k[2:]: int(v) for k, v in h.items() if k.startswith("t:")}
        path = tuple(
            (int(ts), tp) for ts, _, tp in (p.partition(":") for p in h.get("path", "").split(",") if p)
        )
        return JourneyState(
            customer_id=h.get("cid", customer_id),
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
        )

    async def funnel(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.funnel_key)
        counts = {k.decode(): int(v) for k, v in raw.items()}
        return {stage: counts.get(stage, 0) for stage in self.journey.stages}


class InMemoryJourneyStore:
    """The same contract held in a dict, for unit tests of handlers (no Redis)."""

    def __init__(self, journey: JourneyMap, *, dedupe_window_ms: int, path_length: int) -> None:
        self.journey = journey
        self.dedupe_window_ms = dedupe_window_ms
        self.path_length = path_length
        self.states: dict[str, JourneyState] = {}

    async def apply(self, events: Sequence[TouchpointEvent]) -> list[Outcome]:
        outcomes = []
        for event in events:
            state, outcome = advance(
                self.states.get(event.customer_id),
                event,
                self.journey,
                dedupe_window_ms=self.dedupe_window_ms,
                path_length=self.path_length,
            )
            self.states[event.customer_id] = state
            outcomes.append(outcome)
        return outcomes

    async def get(self, customer_id: str) -> JourneyState | None:
        return self.states.get(customer_id)

    async def funnel(self) -> dict[str, int]:
        counts = dict.fromkeys(self.journey.stages, 0)
        for state in self.states.values():
            counts[state.stage] += 1
        return counts
