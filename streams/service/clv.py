"""Predictive CLV in the running system: fit BG/NBD + Gamma-Gamma on the customers' order summaries
as of the stream's time, version the parameters, and hand the current version to the batch engine
(the alerts quote it) and to the lookups.

Which purchase-count model (BG/NBD or MBG/NBD) is fitted is BG/NBD unless ``journey clv fit
--validate`` compared them on a calibration / holdout split of the history and stored another
winner: the stored version then names its ``kind`` and carries the ``selection`` that chose it,
and later refits (the leader's periodic one, a plain ``journey clv fit``) keep that kind and
that selection until the next validation.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, Protocol

from models.clv import (
    HOLDOUT_FRACTION,
    BGNBDParams,
    Candidate,
    ClvKind,
    ClvModel,
    FitResult,
    GammaGammaParams,
    InsufficientData,
    best_candidate,
    calibration_holdout,
    compare_kinds,
    fit,
    rfm,
    split_at,
)
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

    async def refit(
        self, as_of_ms: int | None = None, *, kind: ClvKind | None = None, selection: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Fit on the order summaries as of ``as_of_ms`` (default: the stream's time) and store a new
        version; or say why not.

        ``kind`` None keeps the kind of the newest stored version (BG/NBD if none names one) and
        carries its ``selection`` over: a validated choice holds until the next validation."""
        if kind is None:
            stored = await self.store.current()
            kind = ClvKind(stored.get("kind", ClvKind.BGNBD)) if stored else ClvKind.BGNBD
            selection = stored.get("selection") if stored else None
        if as_of_ms is None:
            as_of_ms = await stream_time(self.queries)
        if as_of_ms is None:
            return {"model": "insufficient data", "reason": "no event has been applied yet", "n_customers": 0,
                    "n_repeat_customers": 0, "as_of": None}
        x, t_x, T, m = rfm(await self.queries.order_summaries(), as_of_ms)
        result: FitResult | InsufficientData = InsufficientData("no customer has purchased yet", 0, 0)
        if len(x):
            result = await asyncio.to_thread(fit, x, t_x, T, m, kind=kind)  # scipy: keep the event loop free
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
            "kind": str(result.kind),
            # the four count-model parameters (r, alpha, a, b), of BG/NBD or MBG/NBD as `kind` says
            "bgnbd": asdict(result.bgnbd),
            "gamma_gamma": asdict(result.gamma_gamma) if result.gamma_gamma else None,
            "selection": selection,
        }
        record["version"] = await self.store.add(record)
        self._use(record)
        return {"model": "fitted", **record}

    async def validate(self, as_of_ms: int | None = None, *, holdout_days: int | None = None) -> dict[str, Any]:
        """Choose the count model by its holdout error, then fit it on the whole history as a new version.

        The history is cut in event time at the start of a day (``holdout_days`` before ``as_of_ms``,
        or the last quarter of the time since the earliest first order); each kind is fitted on the
        orders before the cut and predicts each customer's purchases after it. The kind with the
        lowest per-customer mean absolute error is fitted on the history up to ``as_of_ms`` and
        stored with the ``selection`` that chose it. Returns ``{"model": "insufficient data",
        "reason": ...}`` when there is too little to compare or the holdout cannot be used."""
        if as_of_ms is None:
            as_of_ms = await stream_time(self.queries)
        if as_of_ms is None:
            return {"model": "insufficient data", "reason": "no event has been applied yet", "as_of": None}
        histories = [h for h in await self.queries.order_histories() if h.summary.first_ms <= as_of_ms]
        if not histories:
            return {"model": "insufficient data", "reason": "no customer has purchased yet", "as_of": iso(as_of_ms)}
        try:
            split_ms = split_at(min(h.summary.first_ms for h in histories), as_of_ms, holdout_days=holdout_days)
        except ValueError as exc:
            return {"model": "insufficient data", "reason": str(exc), "as_of": iso(as_of_ms)}
        split = calibration_holdout(histories, split_ms, as_of_ms)
        candidates = await asyncio.to_thread(compare_kinds, split)
        best = best_candidate(candidates)
        selection: dict[str, Any] = {
            "validated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "as_of": iso(as_of_ms),
            "split": iso(split_ms),
            "holdout_days": round(split.holdout_days, 3),
            "holdout_rule": (f"the last {holdout_days} days" if holdout_days is not None else
                             f"the last {HOLDOUT_FRACTION:.0%} of the time since the earliest first order"),
            "calibration_customers": int(split.x.size),
            "calibration_repeat_customers": int((split.x > 0).sum()),
            "holdout_purchases": int(split.actual.sum()),
            "recency_estimated": split.estimated,
            "candidates": [_candidate(c) for c in candidates],
            "criterion": "lowest per-customer mean absolute error of holdout purchases (RMSE breaks ties)",
            "chosen": str(best.kind) if best else None,
        }
        if best is None:
            reasons = "; ".join(f"{c.kind}: {c.reason}" for c in candidates)
            return {"model": "insufficient data", "reason": reasons, "as_of": iso(as_of_ms), "selection": selection}
        others = [c for c in candidates if c is not best and c.error is not None]
        selection["reason"] = f"{best.kind}: holdout MAE {best.error.mae:.4f}" + "".join(  # type: ignore[union-attr]
            f" vs {c.kind} {c.error.mae:.4f}" for c in others if c.error is not None)
        return await self.refit(as_of_ms, kind=best.kind, selection=selection)

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
        kind = ClvKind(record.get("kind", ClvKind.BGNBD))  # versions stored before kinds existed: BG/NBD
        fitted = FitResult(
            BGNBDParams(**record["bgnbd"]), GammaGammaParams(**gg) if gg else None, record["n_customers"],
            record["n_repeat_customers"], record["log_likelihood_bgnbd"], record["log_likelihood_gg"],
            record["converged"], kind,
        )
        self.current = ClvModel(fitted, int(record["version"]), int(record.get("as_of_ms", 0)))
        self.meta = {"model": "fitted", "version": record["version"], "fitted_at": record["fitted_at"],
                     "as_of": record.get("as_of"), "kind": str(kind), "selection": record.get("selection")}


def _candidate(c: Candidate) -> dict[str, Any]:
    """A candidate as reported: its holdout errors and calibration fit, or why it was not fitted."""
    out: dict[str, Any] = {"kind": str(c.kind)}
    if c.error is None or c.fit is None:
        return {**out, "mae": None, "rmse": None, "reason": c.reason}
    return {**out, **asdict(c.error), "params": asdict(c.fit.bgnbd), "converged": c.fit.converged,
            "log_likelihood": c.fit.log_likelihood_bgnbd}


def selection_text(result: dict[str, Any]) -> str:
    """``journey clv fit --validate`` for people: the split, each candidate's holdout errors, the choice."""
    sel = result.get("selection") or {}
    lines = [f"history as of {sel.get('as_of')}: calibration before {sel.get('split')}, holdout after it "
             f"({sel.get('holdout_days')} days, {sel.get('holdout_rule')})",
             f"{sel.get('calibration_customers', 0):,} customers bought before the split "
             f"({sel.get('calibration_repeat_customers', 0):,} of them again); {sel.get('holdout_purchases', 0):,} "
             "purchases in the holdout", "",
             f"  {'model':<8} {'MAE':>7} {'RMSE':>7} {'predicted':>10} {'actual':>7} {'total error':>12}"]
    for c in sel.get("candidates", []):
        if c.get("mae") is None:
            lines.append(f"  {c['kind']:<8} not fitted: {c.get('reason')}")
        else:
            lines.append(f"  {c['kind']:<8} {c['mae']:>7.4f} {c['rmse']:>7.4f} {c['predicted_total']:>10.1f} "
                         f"{c['actual_total']:>7,} {c['total_error']:>+12.1f}")
    lines.append("")
    if result.get("model") == "fitted":
        lines.append(f"chosen: {sel.get('chosen')} ({sel.get('criterion')}); fitted on the whole history as version "
                     f"{result['version']} (as of {result['as_of']}), used by the workers within a minute")
    else:
        lines.append(f"no model chosen: {result.get('reason')}")
    return "\n".join(lines)
