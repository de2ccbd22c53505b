"""Where the propensity lives in Redis: pending predictions, labelled examples and model snapshots.

- Predictions wait, per customer, in ``<prefix>:{<customer>}:pred`` and, per source partition,
  in the sorted set ``<prefix>:predictions:<partition>`` scored by the end of their horizon.
  ``propensity.lua`` stores a batch's predictions and settles those whose label is known in
  one atomic step; settling moves the prediction to the ``<prefix>:examples`` stream.
- The single learner reads that stream in order and checkpoints the model, with the id of
  the last example it learned, to the hash ``<prefix>:model``. Learning resumes after that id,
  so a crash neither loses the model nor teaches it an example twice.
- A snapshot is a pickle, so it is only unpickled after its HMAC-SHA256 (keyed with
  ``JOURNEY_MODEL_KEY``) and its format and river version check out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import river
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from models.journey_map import PropensitySpec

log = logging.getLogger("journey.propensity")

_SCRIPT = Path(__file__).with_name("propensity.lua").read_text()
SNAPSHOT_FORMAT = "journey-propensity/1"
EXPIRE_LIMIT = 5000

# Save only if nobody else saved since we loaded (two learners during a leader change cannot both win).
_SAVE = """
if (redis.call('HGET', KEYS[1], 'version') or '-1') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'format', ARGV[3], 'river', ARGV[4], 'kind', ARGV[5],
           'last_id', ARGV[6], 'report', ARGV[7], 'blob', ARGV[8], 'mac', ARGV[9])
if ARGV[6] ~= '0-0' then redis.call('XTRIM', KEYS[2], 'MINID', ARGV[6]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One scored scoring point, as handed to the store."""

    customer_id: str
    scored_ms: int
    touchpoint: str
    stage: str
    proba: float | None
    predicted: bool | None
    model_version: int
    features: dict[str, float]


@dataclass(frozen=True, slots=True)
class Settled:
    """What one ``propensity.lua`` call did."""

    stored: int = 0
    positive: int = 0
    negative: int = 0
    alerts: int = 0


@dataclass(slots=True)
class Snapshot:
    """A model checkpoint: the model, its evaluation, and where in the examples stream it is."""

    version: int  # examples learned in total
    kind: str
    last_id: str  # id of the last example learned ("0-0": none)
    model: Any
    validator: Any
    report: dict[str, Any]


class SnapshotRefused(Exception):
    """A snapshot failed its integrity or version check; the message says which."""


def snapshot_mac(key: bytes, fields: Sequence[bytes]) -> str:
    """HMAC-SHA256 over the snapshot's fields, length-prefixed so no two field lists collide."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for f in fields:
        mac.update(len(f).to_bytes(8, "big"))
        mac.update(f)
    return mac.hexdigest()


class PropensityStore:
    """The Redis side of the propensity: predictions, labels, examples and model snapshots."""

    def __init__(
        self,
        redis: Redis,
        spec: PropensitySpec,
        *,
        prefix: str,
        model_key: bytes,
        early_positives: bool = False,
        alert_min_examples: int = 0,
    ) -> None:
        self.redis = redis
        self.alert_min_examples = alert_min_examples
        self.early_positives = early_positives
        self.spec = spec
        self.prefix = prefix
        self.model_key = model_key
        self._sha: str | None = None
        self._save = redis.register_script(_SAVE)

    def predictions_key(self, partition: int) -> str:
        return f"{self.prefix}:predictions:{partition}"

    def pred_key(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{customer_id}}}:pred"

    @property
    def examples_key(self) -> str:
        return f"{self.prefix}:examples"

    @property
    def snapshot_key(self) -> str:
        return f"{self.prefix}:model"

    # ---- predictions and labels ----

    async def record(
        self, partition: int, predictions: Sequence[Prediction], upsold: Sequence[str], watermark_ms: int
    ) -> Settled:
        """Store predictions, settle positives of ``upsold`` customers and expired horizons, in one step."""
        args: list[str | int] = [
            self.prefix,
            watermark_ms,
            self.spec.horizon_ms,
            repr(self.spec.alert_threshold),
            EXPIRE_LIMIT,
            self.spec.upsell[0] if self.spec.upsell else "",
            "1" if self.early_positives else "0",
            self.alert_min_examples,
            len(predictions),
        ]
        for p in predictions:
            args += (
                p.customer_id,
                p.scored_ms,
                p.touchpoint,
                p.stage,
                "" if p.proba is None else repr(p.proba),
                "" if p.predicted is None else int(p.predicted),
                p.model_version,
                orjson.dumps(p.features).decode(),
            )
        args += upsold
        keys = [self.predictions_key(partition), self.examples_key, f"{self.prefix}:outbox:{partition}"]
        if self._sha is None:
            self._sha = await self.redis.script_load(_SCRIPT)
        try:
            reply = await self.redis.evalsha(self._sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            self._sha = await self.redis.script_load(_SCRIPT)
            reply = await self.redis.evalsha(self._sha, len(keys), *keys, *args)  # type: ignore[misc]
        return Settled(*(int(x) for x in reply))

    async def pending(self, partitions: Sequence[int]) -> int:
        """Predictions waiting for their label in these partitions."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.zcard(self.predictions_key(p))
            return sum(await pipe.execute())

    async def customer(self, journey_key: str) -> dict[str, Any] | None:
        """The customer's latest score: ``{score, scored_at_ms, model_version}``, None if never scored."""
        score, at, version = await self.redis.hmget(journey_key, "p_score", "p_at", "p_ver")
        if at is None:
            return None
        return {
            "score": float(score) if score else None,
            "scored_at_ms": int(at),
            "model_version": int(version) if version is not None else None,
        }

    async def pending_of(self, customer_id: str) -> list[int]:
        """Scoring points of this customer still waiting for a label (scored ms)."""
        return sorted(int(f) for f in await self.redis.hkeys(self.pred_key(customer_id)))

    # ---- model snapshots ----

    def _fields(self, version: int, kind: str, last_id: str, report: bytes, blob: bytes) -> list[bytes]:
        return [
            SNAPSHOT_FORMAT.encode(),
            river.__version__.encode(),
            kind.encode(),
            str(version).encode(),
            last_id.encode(),
            report,
            blob,
        ]

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> bool:
        """Write a checkpoint unless another learner wrote one since ``expected_version`` (-1: none)."""
        blob = pickle.dumps((snapshot.model, snapshot.validator), protocol=pickle.HIGHEST_PROTOCOL)
        report = orjson.dumps(snapshot.report)
        mac = snapshot_mac(
            self.model_key, self._fields(snapshot.version, snapshot.kind, snapshot.last_id, report, blob)
        )
        ok = await self._save(
            keys=[self.snapshot_key, self.examples_key],
            args=[
                str(expected_version),
                str(snapshot.version),
                SNAPSHOT_FORMAT,
                river.__version__,
                snapshot.kind,
                snapshot.last_id,
                report,
                blob,
                mac,
            ],
        )
        return bool(ok)

    async def version(self) -> int | None:
        """The newest snapshot's version, None if there is none (cheap: one field)."""
        raw = await self.redis.hget(self.snapshot_key, "version")
        return int(raw) if raw is not None else None

    async def report(self) -> dict[str, Any] | None:
        """The newest snapshot's evaluation report (JSON, no unpickling), None if there is none."""
        raw = await self.redis.hget(self.snapshot_key, "report")
        return orjson.loads(raw) if raw else None

    async def load(self) -> Snapshot | None:
        """The newest snapshot, verified; None if there is none. Raises :class:`SnapshotRefused`."""
        raw = await self.redis.hgetall(self.snapshot_key)
        if not raw:
            return None
        h = {k.decode(): v for k, v in raw.items()}
        missing = [f for f in ("version", "format", "river", "kind", "last_id", "report", "blob", "mac") if f not in h]
        if missing:
            raise SnapshotRefused(f"model snapshot in {self.snapshot_key} is incomplete (missing {', '.join(missing)})")
        version = int(h["version"])
        kind, last_id = h["kind"].decode(), h["last_id"].decode()
        fields = [h["format"], h["river"], h["kind"], h["version"], h["last_id"], h["report"], h["blob"]]
        if not hmac.compare_digest(snapshot_mac(self.model_key, fields), h["mac"].decode()):
            raise SnapshotRefused(
                f"model snapshot v{version} in {self.snapshot_key} failed its integrity check (HMAC): it was "
                "altered, or written with another JOURNEY_MODEL_KEY"
            )
        if h["format"].decode() != SNAPSHOT_FORMAT or h["river"].decode() != river.__version__:
            raise SnapshotRefused(
                f"model snapshot v{version} is foreign: format {h['format'].decode()!r} with river "
                f"{h['river'].decode()}, this worker reads {SNAPSHOT_FORMAT!r} with river {river.__version__}"
            )
        model, validator = pickle.loads(h["blob"])  # noqa: S301 - authenticated above
        return Snapshot(version, kind, last_id, model, validator, orjson.loads(h["report"]))

    async def erase(self, customer_id: str) -> None:
        """Forget the customer's pending predictions. Their labelled examples carry no customer id."""
        scored = await self.pending_of(customer_id)
        sets = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:predictions:*", count=1000)]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.pred_key(customer_id))
            if scored:
                for key in sets:
                    pipe.zrem(key, *(f"{customer_id}|{s}" for s in scored))
            await pipe.execute()
