"""Right to be forgotten: remove every trace of a customer from Redis, and say so downstream."""

from __future__ import annotations

import hashlib
import logging
import time

import orjson
from redis.asyncio import Redis

from streams.journey_store import RedisJourneyStore

log = logging.getLogger("journey.erasure")


def pseudonym(customer_id: str) -> str:
    """What the logs say instead of the customer id (personal data stays out of logs)."""
    return "cust-" + hashlib.sha256(customer_id.encode()).hexdigest()[:16]


async def erase_customer(store: RedisJourneyStore, customer_id: str, *, requested_by: str) -> bool:
    """Delete the customer's journey, value, dedupe entries, deadlines and unpublished alerts.

    Returns whether there was anything to erase. Aggregates (funnel counts, gap statistics,
    attributed value) hold no personal data; the funnel count of their stage is decremented.
    """
    redis: Redis = store.redis
    journey_key = store.journey_key(customer_id)
    stage = await redis.hget(journey_key, "stage")
    deadline_keys = [k async for k in redis.scan_iter(match=f"{store.prefix}:deadlines:*", count=1000)]
    outbox_keys = [k async for k in redis.scan_iter(match=f"{store.prefix}:outbox:*", count=1000)]
    outbox_entries: dict[bytes, list[bytes]] = {}
    for key in outbox_keys:
        entries = [e for e in await redis.lrange(key, 0, -1) if orjson.loads(e).get("customer_id") == customer_id]
        if entries:
            outbox_entries[key] = entries
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(journey_key, store.seen_key(customer_id))
        for key in deadline_keys:
            pipe.zrem(key, customer_id)
        for key, entries in outbox_entries.items():
            for entry in entries:
                pipe.lrem(key, 0, entry)
        if stage is not None:
            pipe.hincrby(store.funnel_key, stage.decode(), -1)
        replies = await pipe.execute()
    erased = bool(replies[0])
    log.info(
        "erasure of %s requested by %s at %s: %s",
        pseudonym(customer_id),
        requested_by,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "removed" if erased else "nothing stored",
    )
    return erased
