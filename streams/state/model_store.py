"""Propensity model snapshots in Redis (``<prefix>:model``), authenticated before unpickling.

A snapshot is a pickle of the model and its evaluation, so a worker only unpickles one after
checking its HMAC-SHA256 (keyed with ``JOURNEY_MODEL_KEY``) over every field, and its format
and river version. Saving is a compare-and-set on the version: two learners (during a leader
change) cannot both save.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections.abc import Sequence
from typing import Any

import orjson
import river

from models.propensity import Example
from streams.service.ports_model import Snapshot, SnapshotRefused
from streams.state import codec
from streams.state.keys import Keys

SNAPSHOT_FORMAT = "journey-propensity/2"

_SAVE = """
if (redis.call('HGET', KEYS[1], 'version') or '-1') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'format', ARGV[3], 'river', ARGV[4], 'kind', ARGV[5],
           'position', ARGV[6], 'report', ARGV[7], 'blob', ARGV[8], 'mac', ARGV[9])
return 1
"""
_FIELDS = ("version", "format", "river", "kind", "position", "report", "blob", "mac")


def snapshot_mac(key: bytes, fields: Sequence[bytes]) -> str:
    """HMAC-SHA256 over the snapshot's fields, length-prefixed so no two field lists collide."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for f in fields:
        mac.update(len(f).to_bytes(8, "big"))
        mac.update(f)
    return mac.hexdigest()


class RedisModelStore:
    """:class:`~streams.service.ports_model.ModelStore` on Redis."""

    def __init__(self, redis: Any, keys: Keys, *, model_key: bytes) -> None:
        self.redis = redis
        self.key = keys.model
        self.examples_key = keys.model_examples
        self.model_key = model_key
        self._save = redis.register_script(_SAVE)

    @staticmethod
    def _signed(fmt: bytes, river_version: bytes, kind: bytes, version: bytes, position: bytes, report: bytes,
                blob: bytes) -> list[bytes]:
        return [fmt, river_version, kind, version, position, report, blob]

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> bool:
        blob = pickle.dumps((snapshot.model, snapshot.validator), protocol=pickle.HIGHEST_PROTOCOL)
        report = orjson.dumps(snapshot.report)
        position = orjson.dumps({"partitions": {str(p): i for p, i in snapshot.position.items()},
                                 "learned_until": snapshot.learned_until})
        fields = self._signed(SNAPSHOT_FORMAT.encode(), river.__version__.encode(), snapshot.kind.encode(),
                              str(snapshot.version).encode(), position, report, blob)
        mac = snapshot_mac(self.model_key, fields)
        ok = await self._save(keys=[self.key], args=[
            str(expected_version), snapshot.version, SNAPSHOT_FORMAT, river.__version__, snapshot.kind, position,
            report, blob, mac,
        ])
        return bool(ok)

    async def version(self) -> int | None:
        raw = await self.redis.hget(self.key, "version")
        return int(raw) if raw is not None else None

    async def report(self) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.key, "report")
        return orjson.loads(raw) if raw else None

    async def load(self) -> Snapshot | None:
        raw = await self.redis.hgetall(self.key)
        if not raw:
            return None
        h = {k.decode(): v for k, v in raw.items()}
        missing = [f for f in _FIELDS if f not in h]
        if missing:
            raise SnapshotRefused(f"model snapshot in {self.key} is incomplete (missing {', '.join(missing)})")
        version = int(h["version"])
        fields = self._signed(h["format"], h["river"], h["kind"], h["version"], h["position"], h["report"], h["blob"])
        if not hmac.compare_digest(snapshot_mac(self.model_key, fields), h["mac"].decode()):
            raise SnapshotRefused(
                f"model snapshot v{version} in {self.key} failed its integrity check (HMAC): it was "
                "altered, or written with another JOURNEY_MODEL_KEY"
            )
        if h["format"].decode() != SNAPSHOT_FORMAT or h["river"].decode() != river.__version__:
            raise SnapshotRefused(
                f"model snapshot v{version} is foreign: format {h['format'].decode()!r} with river "
                f"{h['river'].decode()}, this worker reads {SNAPSHOT_FORMAT!r} with river {river.__version__}"
            )
        model, validator = pickle.loads(h["blob"])  # noqa: S301 - authenticated above
        position = orjson.loads(h["position"])
        return Snapshot(version, h["kind"].decode(), {int(p): i for p, i in position["partitions"].items()},
                        int(position["learned_until"]), model, validator, orjson.loads(h["report"]))

    async def delete(self) -> bool:
        """Remove the snapshot (``journey model reset``): the next learner starts from nothing."""
        return bool(await self.redis.delete(self.key))

    async def archive(self, examples: Sequence[Example], *, keep: int) -> None:
        if not examples:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for e in examples:
                pipe.xadd(self.examples_key, {"e": codec.encode_example(e)}, maxlen=keep, approximate=False)
            await pipe.execute()

    async def learned_examples(self) -> list[Example]:
        out: list[Example] = []
        after = "-"
        while True:
            entries = await self.redis.xrange(self.examples_key, min=after, count=5000)
            out += [codec.decode_example(fields[b"e"]) for _, fields in entries]
            if len(entries) < 5000:
                return out
            after = f"({entries[-1][0].decode()}"
