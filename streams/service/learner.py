"""The one propensity learner (on the Faust leader): settled examples in, model snapshots out.

Examples are settled in every partition's commit and appended to that partition's stream.
The learner learns them in ``(settled_ms, partition, order in the partition)`` order, and only
those settled below the lowest partition watermark: every partition has committed all its
examples below that mark, so the order, and the model it produces, depend on the records alone,
not on how fast each partition was processed. (The examples settled at the lowest watermark
itself wait until it moves on: at the latest, the idle timeout later.) It checkpoints the model with how far it got in
each stream; a restarted learner (a crash, another leader) resumes there, learning nothing twice.

A snapshot that fails its integrity check is never replaced: the learner stops learning (and
says so on ``/model`` and ``/healthz``) until the snapshot is readable again or is reset with
``journey model reset``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from models.propensity import ProgressiveValidator, make_model, test_then_train
from models.watermark import NO_WATERMARK
from streams.service.ports_model import ExampleSource, ModelStore, Snapshot, SnapshotRefused

log = logging.getLogger("journey.learner")

HISTORY_KEPT = 200


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Learner:
    """Reads settled examples in order, evaluates then learns each once, checkpoints."""

    def __init__(
        self,
        models: ModelStore,
        source: ExampleSource,
        *,
        kind: str,
        checkpoint_examples: int = 1000,
        checkpoint_interval_s: float = 10.0,
        window: int = 1000,
        read_count: int = 2000,
    ) -> None:
        self.models = models
        self.source = source
        self.kind = kind
        self.checkpoint_examples = checkpoint_examples
        self.checkpoint_interval_s = checkpoint_interval_s
        self.window = window
        self.read_count = read_count
        self.snapshot: Snapshot | None = None
        self.saved_version = -1  # version of the snapshot in the store we build on (-1: none)
        self.unsaved = 0
        self.unsaved_since = 0.0
        self.history: list[dict[str, Any]] = []
        self.refused = 0  # snapshots this learner refused to load
        self.stopped: str | None = None  # why learning is stopped (a refused snapshot), None while learning

    async def _resume(self) -> Snapshot | None:
        try:
            snapshot = await self.models.load()
        except SnapshotRefused as exc:
            if self.stopped is None:  # counted once per refusal, not once per look
                self.refused += 1
                log.error("refusing model snapshot: %s; learning is stopped until the snapshot is readable again "
                          "or reset with `journey model reset` (scoring goes on with the last good model)", exc)
            self.stopped = f"model snapshot refused: {exc}"
            return None
        self.stopped = None
        if snapshot is None:
            self.saved_version = -1
            return self._fresh(position={}, learned_until=NO_WATERMARK)
        self.saved_version = snapshot.version
        if snapshot.kind != self.kind:
            log.warning("the saved model is a %s model, JOURNEY_MODEL_KIND says %s: a fresh %s model learns from the "
                        "examples after it", snapshot.kind, self.kind, self.kind)
            return self._fresh(position=dict(snapshot.position), learned_until=snapshot.learned_until)
        self.history = list(snapshot.report.get("history", []))
        return snapshot

    def _fresh(self, *, position: dict[int, str], learned_until: int) -> Snapshot:
        self.history = []
        return Snapshot(0, self.kind, position, learned_until, make_model(self.kind),
                        ProgressiveValidator(window=self.window), {})

    async def step(self, *, now: float | None = None) -> int:
        """Learn what can be learned now (up to ``read_count`` examples per partition); checkpoint
        when due. Returns how many examples were learned."""
        now = time.monotonic() if now is None else now
        if self.snapshot is None:
            self.snapshot = await self._resume()
            if self.snapshot is None:
                return 0
        snap = self.snapshot
        n = await self.source.partitions()
        if n == 0:
            return 0
        clocks = await self.source.clocks()
        bound = min(clocks[p].watermark_ms if p in clocks else NO_WATERMARK for p in range(n))
        items = []
        last_read: list[tuple[int, int, int]] = []  # the key of the last example read, per partition read in part
        for p in range(n):
            entries = await self.source.examples(p, snap.position.get(p, "0-0"), self.read_count)
            items += [((e.settled_ms, p, k), i, e) for k, (i, e) in enumerate(entries)]
            if len(entries) == self.read_count:  # more may follow, all of them after this one
                last_read.append((entries[-1][1].settled_ms, p, len(entries) - 1))
        limit = min(last_read) if last_read else None
        learned = 0
        for key, entry_id, e in sorted(items, key=lambda t: t[0]):
            if key[0] >= bound or (limit is not None and key > limit):
                break
            test_then_train(snap.model, snap.validator, e.features, e.y, e.proba, e.predicted)
            snap.position[key[1]] = entry_id
            snap.version += 1
            learned += 1
        snap.learned_until = max(snap.learned_until, bound)
        if learned:
            if not self.unsaved:
                self.unsaved_since = now
            self.unsaved += learned
        if self.unsaved and (
            self.unsaved >= self.checkpoint_examples or now - self.unsaved_since >= self.checkpoint_interval_s
        ):
            await self.checkpoint()
        return learned

    def report(self) -> dict[str, Any]:
        """What ``GET /model`` shows (and what is saved with the snapshot)."""
        assert self.snapshot is not None
        snap = self.snapshot
        r = snap.validator.report()
        return {
            "version": snap.version,
            "model": snap.kind,
            "examples_learned": snap.version,
            "examples_evaluated": r["examples"],
            "roc_auc": r["roc_auc"],
            "log_loss": r["log_loss"],
            "accuracy": r["accuracy"],
            "recent": {"window": snap.validator.window, **r["recent"]},
            "calibration": r["calibration"],
            "checkpointed_at": _iso(time.time()),
            "history": self.history,
        }

    async def checkpoint(self) -> bool:
        """Save the model; if another learner saved meanwhile, drop ours and resume from theirs."""
        assert self.snapshot is not None
        report = self.report()
        point = {
            "at": report["checkpointed_at"],
            "examples_learned": report["examples_learned"],
            "roc_auc": report["roc_auc"],
            "recent_roc_auc": report["recent"]["roc_auc"],
        }
        self.history = [*self.history, point][-HISTORY_KEPT:]
        report["history"] = self.history
        self.snapshot.report = report
        if not await self.models.save(self.snapshot, expected_version=self.saved_version):
            log.warning("another learner saved the propensity model first; resuming from its snapshot")
            self.snapshot = None
            self.unsaved = 0
            return False
        self.saved_version = self.snapshot.version
        self.unsaved = 0
        for p, entry_id in self.snapshot.position.items():
            await self.source.trim_examples(p, entry_id)
        return True
