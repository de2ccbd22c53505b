"""CLV model versions in Redis: the newest in ``<prefix>:clv:model``, the last 50 in ``:clv:history``."""

from __future__ import annotations

from typing import Any

import orjson

from streams.state.keys import Keys

HISTORY_KEPT = 50


class RedisClvStore:
    """:class:`~streams.service.clv.ClvStore` on Redis (the three keys need not share a slot:
    the version counter is incremented first, so a crash leaves at most a gap in the numbers)."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def current(self) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.clv_model)
        return orjson.loads(raw) if raw else None

    async def add(self, record: dict[str, Any]) -> int:
        version = int(await self.redis.incr(self.keys.clv_version))
        raw = orjson.dumps({**record, "version": version})
        await self.redis.set(self.keys.clv_model, raw)
        await self.redis.lpush(self.keys.clv_history, raw)
        await self.redis.ltrim(self.keys.clv_history, 0, HISTORY_KEPT - 1)
        return version

    async def history(self) -> list[dict[str, Any]]:
        return [orjson.loads(r) for r in await self.redis.lrange(self.keys.clv_history, 0, -1)]
