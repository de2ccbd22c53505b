"""The scorer every worker has: the propensity model it predicts with at scoring points."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from models.propensity import make_model, predict
from streams.service.ports_model import ModelStore, SnapshotRefused

log = logging.getLogger("journey.propensity")


class Scorer:
    """Predicts with the newest model snapshot that passes its checks (or the leader's live model).

    Called as ``scorer(features) -> (probability, predicted class, model version)``: the
    side input the batch engine scores with.
    """

    def __init__(self, models: ModelStore, *, kind: str) -> None:
        self.models = models
        self.model: Any = make_model(kind)
        self.version = 0
        self.refused = 0  # snapshots refused since start
        self._refused_version: int | None = None

    def __call__(self, x: Mapping[str, float]) -> tuple[float | None, bool | None, int]:
        proba, predicted = predict(self.model, x)
        return proba, predicted, self.version

    def use(self, model: Any, version: int) -> None:
        """Score with this model (the leader's live one)."""
        self.model, self.version = model, version

    async def refresh(self) -> bool:
        """Load the newest snapshot if it is newer than ours; keep ours if it is refused."""
        version = await self.models.version()
        if version is None or version == self.version or version == self._refused_version:
            return False
        try:
            snapshot = await self.models.load()
        except SnapshotRefused as exc:
            self.refused += 1
            self._refused_version = version
            log.error("refusing model snapshot: %s; still scoring with model version %d", exc, self.version)
            return False
        if snapshot is None:
            return False
        self.model, self.version = snapshot.model, snapshot.version
        return True
