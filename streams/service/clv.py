"""Predictive CLV in the running system: fit BG/NBD + Gamma-Gamma on the customers' order summaries
as of the stream's time, version the parameters, and hand the current version to the batch engine
(the alerts quote it) and to the lookups."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, Protocol

from models.clv import BGNBDParams, ClvModel, FitResult, GammaGammaParams, InsufficientData, fit, rfm
from models.durations import iso
from models.watermark import NO_WATERMARK
from streams.service.ports import StateQueries


class ClvStore(Protocol):
    """Where fitted versions are kept."""

    async def current(self) -> dict[str, Any] | None: ...

    async def add(self, record: dict[str, Any]) -> int:
        """Store a new version (its number is assigned and returned)."""
        ...


async def stream_time(queries: StateQueries) -> int | None:
    """The stream's time: the latest event time applied, over the partitions (None: nothing yet).

    Every purchase the store holds happened at or before it, so a fit as of it is the batch fit
    of those purchases as of that date."""
    marks = [c.high_ms for c in (await queries.clocks()).values() if c.high_ms > NO_WATERMARK]
    return max(marks) if marks else None


class ClvModels:
    """The newest fitted model version, loaded from the store."""

    def __init__(self, store: ClvStore, queries: StateQueries) -> None:
        self.store = store
        self.queries = queries
        self.current: ClvModel | None = None
        self.meta: dict[str, Any] = {"model": "insufficient data", "version": None}
        self._loaded_at = -1e9

    async def refit(self, as_of_ms: int | None = None) -> dict[str, Any]:
        """Fit on the order summaries as of ``as_of_ms`` (default: the stream's time) and store a new
        version; or say why not."""
        if as_of_ms is None:
            as_of_ms = await stream_time(self.queries)
        if as_of_ms is None:
            return {"model": "insufficient data", "reason": "no event has been applied yet", "n_customers": 0,
                    "n_repeat_customers": 0, "as_of": None}
        x, t_x, T, m = rfm(await self.queries.order_summaries(), as_of_ms)
        result: FitResult | InsufficientData = InsufficientData("no customer has purchased yet", 0, 0)
        if len(x):
            result = await asyncio.to_thread(fit, x, t_x, T, m)  # scipy: keep the event loop free
        if isinstance(result, InsufficientData):
            return {"model": "insufficient data", "reason": result.reason, "n_customers": result.n_customers,
                    "n_repeat_customers": result.n_repeat_customers, "as_of": iso(as_of_ms)}
        record = {
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "as_of": iso(as_of_ms),
            "as_of_ms": as_of_ms,
            "n_customers": result.n_customers,
            "n_repeat_customers": result.n_repeat_customers,
            "log_likelihood_bgnbd": result.log_likelihood_bgnbd,
            "log_likelihood_gg": result.log_likelihood_gg,
            "converged": result.converged,
            "bgnbd": asdict(result.bgnbd),
            "gamma_gamma": asdict(result.gamma_gamma) if result.gamma_gamma else None,
        }
        record["version"] = await self.store.add(record)
        self._use(record)
        return {"model": "fitted", **record}

    async def load(self, max_age_s: float = 0.0) -> ClvModel | None:
        """Use the newest stored version, unless the one held was loaded less than ``max_age_s`` ago."""
        now = time.monotonic()
        if now - self._loaded_at >= max_age_s:
            self._loaded_at = now
            record = await self.store.current()
            if record is not None:
                self._use(record)
        return self.current

    def _use(self, record: dict[str, Any]) -> None:
        gg = record.get("gamma_gamma")
        fitted = FitResult(
            BGNBDParams(**record["bgnbd"]), GammaGammaParams(**gg) if gg else None, record["n_customers"],
            record["n_repeat_customers"], record["log_likelihood_bgnbd"], record["log_likelihood_gg"],
            record["converged"],
        )
        self.current = ClvModel(fitted, int(record["version"]), int(record.get("as_of_ms", 0)))
        self.meta = {"model": "fitted", "version": record["version"], "fitted_at": record["fitted_at"],
                     "as_of": record.get("as_of")}
