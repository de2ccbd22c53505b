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

With each checkpoint the examples learned since the last one are appended, in learning order,
to an archive of the newest :data:`EXAMPLES_KEPT`; ``journey model validate``
(:func:`validate_kinds`) replays it through a fresh model of every kind to compare them,
without touching the running model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from models.propensity import MODEL_KINDS, Example, ProgressiveValidator, make_model, predict, test_then_train
from models.watermark import NO_WATERMARK
from streams.service.ports_model import ExampleSource, ModelStore, Snapshot, SnapshotRefused

log = logging.getLogger("journey.learner")

HISTORY_KEPT = 200
#: Learned examples kept for ``journey model validate`` (about 0.6 kB each in Redis).
EXAMPLES_KEPT = 20_000


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
        examples_kept: int = EXAMPLES_KEPT,
    ) -> None:
        self.models = models
        self.source = source
        self.kind = kind
        self.checkpoint_examples = checkpoint_examples
        self.checkpoint_interval_s = checkpoint_interval_s
        self.window = window
        self.read_count = read_count
        self.examples_kept = examples_kept
        self.learned: list[Example] = []  # learned since the last checkpoint, for the archive
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
            self.learned.append(e)
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
            self.learned = []  # the other learner learns (and archives) them
            return False
        self.saved_version = self.snapshot.version
        self.unsaved = 0
        # After the save: an example is archived once it is learned for good. A crash between the two
        # leaves these out of the archive (it is for comparing models, not a record of everything).
        await self.models.archive(self.learned, keep=self.examples_kept)
        self.learned = []
        for p, entry_id in self.snapshot.position.items():
            await self.source.trim_examples(p, entry_id)
        return True


# ---- comparing the model kinds offline (journey model validate) ----------------------------------


def replay(examples: Sequence[Example], kind: str, *, window: int = 1000) -> dict[str, Any]:
    """Progressive validation of a fresh ``kind`` model over recorded examples, in event order.

    Each example is predicted at its scoring time with what the model has learned so far, and
    learned at its settlement time (the delayed labels of the live learner): all predictions and
    learning are ordered by event time, predictions first on a tie, so no example is scored by a
    model that has learned its label."""
    model = make_model(kind)
    validator = ProgressiveValidator(window=window)
    steps = sorted([(e.scored_ms, 0, i) for i, e in enumerate(examples)]
                   + [(e.settled_ms, 1, i) for i, e in enumerate(examples)])
    said: dict[int, tuple[float | None, bool | None]] = {}
    for _, learn, i in steps:
        e = examples[i]
        if not learn:
            said[i] = predict(model, e.features)
        else:
            proba, predicted = said.pop(i)
            test_then_train(model, validator, e.features, e.y, proba, predicted)
    return _metrics(validator)


def recorded(examples: Sequence[Example], *, window: int = 1000) -> dict[str, Any]:
    """The same metrics of the scores the running model(s) gave when the customers were scored."""
    validator = ProgressiveValidator(window=window)
    for e in sorted(examples, key=lambda e: e.settled_ms):
        if e.proba is not None:
            validator.update(e.y, e.proba, e.predicted)
    return _metrics(validator)


def _metrics(validator: ProgressiveValidator) -> dict[str, Any]:
    r = validator.report()
    clean = {k: (v if v is None or math.isfinite(v) else None) for k, v in r["recent"].items()}
    return {"examples_evaluated": r["examples"], "roc_auc": _finite(r["roc_auc"]), "log_loss": _finite(r["log_loss"]),
            "accuracy": _finite(r["accuracy"]), "recent": {"window": validator.window, **clean}}


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def validate_kinds(
    examples: Sequence[Example], *, kinds: Sequence[str] = MODEL_KINDS, running: str, window: int = 1000
) -> dict[str, Any]:
    """Replay the examples through every kind; name the best by ROC AUC (log loss breaks ties).

    ``running`` is the kind the workers are configured with (``JOURNEY_MODEL_KIND``): nothing
    here changes it, the answer says how to."""
    labels = [e.y for e in examples]
    results = [{"kind": k, **replay(examples, k, window=window)} for k in kinds]
    ranked = [r for r in results if r["roc_auc"] is not None]
    best = max(ranked, key=lambda r: (r["roc_auc"], -(r["log_loss"] if r["log_loss"] is not None else math.inf)),
               default=None)
    body: dict[str, Any] = {
        "examples": len(examples),
        "positives": sum(labels),
        "first_scored": _iso(min(e.scored_ms for e in examples) / 1000) if examples else None,
        "last_settled": _iso(max(e.settled_ms for e in examples) / 1000) if examples else None,
        "method": "progressive validation: each kind starts fresh, predicts each example at its scoring time "
                  "and learns it at its settlement time, in event order",
        "candidates": results,
        "recorded_scores": recorded(examples, window=window),
        "criterion": "highest ROC AUC over all examples (log loss breaks ties)",
        "best": best["kind"] if best else None,
        "running": running,
    }
    if best is None:
        body["advice"] = "no kind could be ranked: the examples need both labels (upsells and not)"
    elif best["kind"] == running:
        body["advice"] = f"the running kind ({running}) is the best: nothing to change"
    else:
        body["advice"] = (f"to switch, set JOURNEY_MODEL_KIND={best['kind']} on every worker and restart them; the "
                          f"learner then starts a fresh {best['kind']} model from the examples not yet learned")
    return body


def validation_text(body: dict[str, Any]) -> str:
    """``journey model validate`` for people."""
    def f(v: float | None, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [f"{body['examples']:,} labelled examples ({body['positives']:,} upsells), scored from "
             f"{body['first_scored']} to {body['last_settled']}; each kind replayed from scratch, test-then-train "
             "in event order", "",
             f"  {'kind':<10} {'ROC AUC':>8} {'log loss':>9} {'accuracy':>9}   recent {'ROC AUC':>8} {'log loss':>9}"]
    rows = [*body["candidates"], {"kind": "(recorded)", **body["recorded_scores"]}]
    for r in rows:
        rec = r["recent"]
        lines.append(f"  {r['kind']:<10} {f(r['roc_auc']):>8} {f(r['log_loss']):>9} {f(r['accuracy']):>9}   "
                     f"{'':6} {f(rec['roc_auc']):>8} {f(rec['log_loss']):>9}")
    lines += ["", "(recorded): the scores the running model gave at the time, for comparison",
              f"best: {body['best'] or 'none'} ({body['criterion']}); running: {body['running']} (JOURNEY_MODEL_KIND)",
              body["advice"]]
    return "\n".join(lines)
