"""Upsell propensity in the worker: scorers on every worker, one learner for the whole group.

Design (see README "Upsell propensity"):

1. The journey script returns a snapshot of the customer's state for every applied scoring
   event. :class:`Scorer` turns it into features, predicts with the newest verified model
   snapshot, and ``propensity.lua`` stores the prediction, the customer's score and, above
   the threshold, an ``upsell_opportunity`` alert — all in one atomic step per partition.
2. Labels are decided in Redis from the customer's upsell times and the partition's
   watermark (the one the alerts use); settling a prediction appends it, with its label,
   to the ``examples`` stream.
3. :class:`Learner` runs on the Faust leader only. It reads the stream in order, settles
   each example test-then-train (``models.propensity.test_then_train``), and checkpoints the
   model with the id of the last example learned. Restarting resumes from that id, so no
   example is lost or learned twice; a compare-and-set on the version stops two learners
   (during a leader change) from both saving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from models.journey_map import JourneyMap
from models.propensity import ProgressiveValidator, features, make_model, predict, test_then_train
from streams.journey_store import ScoringPoint, feature_touchpoints
from streams.propensity_store import Prediction, PropensityStore, Snapshot, SnapshotRefused

log = logging.getLogger("journey.propensity")

HISTORY_KEPT = 200


class Scorer:
    """Predicts at scoring points with the newest model snapshot that passes its checks."""

    def __init__(self, store: PropensityStore, journey: JourneyMap, *, kind: str, channels: Sequence[str]) -> None:
        self.store = store
        self.kind = kind
        self.channels = tuple(channels)
        self.model = make_model(kind)
        self.version = 0
        self.refused = 0  # snapshots refused since start
        self.scored = 0
        self._refused_version: int | None = None
        self.use_map(journey)

    def use_map(self, journey: JourneyMap) -> None:
        self.stages = journey.stages
        self.touchpoints = feature_touchpoints(journey)

    def use(self, model: Any, version: int) -> None:
        """Score with this model (the leader's live one)."""
        self.model, self.version = model, version

    async def refresh(self) -> bool:
        """Load the newest snapshot if it is newer than ours; keep ours if it is refused."""
        version = await self.store.version()
        if version is None or version <= self.version or version == self._refused_version:
            return False
        try:
            snapshot = await self.store.load()
        except SnapshotRefused as exc:
            self.refused += 1
            self._refused_version = version
            log.error("refusing model snapshot: %s; still scoring with model version %d", exc, self.version)
            return False
        if snapshot is None:
            return False
        self.model, self.version = snapshot.model, snapshot.version
        return True

    def predict(self, points: Sequence[ScoringPoint]) -> list[Prediction]:
        out = []
        for point in points:
            event = point.event
            x = features(
                point.state, event.ts_ms, stages=self.stages, touchpoints=self.touchpoints, channels=self.channels
            )
            proba, predicted = predict(self.model, x)
            out.append(
                Prediction(
                    event.customer_id,
                    event.ts_ms,
                    event.touchpoint,
                    point.state.stage,
                    proba,
                    predicted,
                    self.version,
                    x,
                )
            )
        self.scored += len(out)
        return out


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Learner:
    """The one learner: reads labelled examples in order, evaluates then learns, checkpoints.

    Parameters
    ----------
    checkpoint_examples, checkpoint_interval_s
        Checkpoint after this many examples, or this long after the first unsaved one.
    window
        Examples in the "recent" metrics.
    """

    def __init__(
        self,
        store: PropensityStore,
        *,
        kind: str,
        checkpoint_examples: int = 1000,
        checkpoint_interval_s: float = 10.0,
        window: int = 1000,
        read_count: int = 2000,
    ) -> None:
        self.store = store
        self.kind = kind
        self.checkpoint_examples = checkpoint_examples
        self.checkpoint_interval_s = checkpoint_interval_s
        self.window = window
        self.read_count = read_count
        self.snapshot: Snapshot | None = None
        self.saved_version = -1  # version of the snapshot in Redis we build on (-1: none)
        self.unsaved = 0
        self.unsaved_since = 0.0
        self.history: list[dict[str, Any]] = []

    async def _resume(self) -> Snapshot:
        try:
            snapshot = await self.store.load()
        except SnapshotRefused as exc:
            stored = await self.store.version()
            log.error(
                "refusing model snapshot: %s; the learner starts a fresh %s model from the examples still in the "
                "stream, and its next checkpoint replaces the refused snapshot",
                exc,
                self.kind,
            )
            self.saved_version = stored if stored is not None else -1
            return self._fresh(version=max(self.saved_version, 0))
        if snapshot is None:
            self.saved_version = -1
            return self._fresh(version=0)
        if snapshot.kind != self.kind:
            log.warning(
                "the saved model is a %s model, JOURNEY_MODEL_KIND says %s: starting a fresh one",
                snapshot.kind,
                self.kind,
            )
            self.saved_version = snapshot.version
            return self._fresh(version=snapshot.version)
        self.saved_version = snapshot.version
        self.history = list(snapshot.report.get("history", []))
        return snapshot

    def _fresh(self, *, version: int) -> Snapshot:
        self.history = []
        return Snapshot(version, self.kind, "0-0", make_model(self.kind), ProgressiveValidator(window=self.window), {})

    async def step(self, *, now: float | None = None) -> int:
        """Learn what is waiting (up to ``read_count`` examples); checkpoint when due. Returns how many."""
        now = time.monotonic() if now is None else now
        if self.snapshot is None:
            self.snapshot = await self._resume()
        snap = self.snapshot
        entries = await self.store.redis.xrange(self.store.examples_key, min=f"({snap.last_id}", count=self.read_count)
        for entry_id, fields in entries:
            pred = orjson.loads(fields[b"pred"])
            test_then_train(snap.model, snap.validator, pred["x"], fields[b"y"] == b"1", pred["p"], pred["c"])
            snap.last_id = entry_id.decode()
            snap.version += 1
        if entries:
            if not self.unsaved:
                self.unsaved_since = now
            self.unsaved += len(entries)
        if self.unsaved and (
            self.unsaved >= self.checkpoint_examples or now - self.unsaved_since >= self.checkpoint_interval_s
        ):
            await self.checkpoint()
        return len(entries)

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
        if not await self.store.save(self.snapshot, expected_version=self.saved_version):
            log.warning("another learner saved the propensity model first; resuming from its snapshot")
            self.snapshot = None
            self.unsaved = 0
            return False
        self.saved_version = self.snapshot.version
        self.unsaved = 0
        return True
