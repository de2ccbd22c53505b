"""Predictive CLV in Redis: fit BG/NBD + Gamma-Gamma from the customers' summaries, version the
parameters, and turn a customer's state into the `clv` figures the API and alerts carry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from redis.asyncio import Redis

from models.clv import BGNBDParams, FitResult, GammaGammaParams, InsufficientData, fit, predict
from models.journey import JourneyState
from models.value import rolling_value

DAY_MS = 86_400_000


class ClvModels:
    """The versioned model parameters under ``<prefix>:clv:model`` (newest) and ``:history``."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}:clv:model"
        self.history_key = f"{prefix}:clv:history"
        self.version_key = f"{prefix}:clv:version"
        self.prefix = prefix
        self.current: FitResult | None = None
        self.current_meta: dict[str, Any] = {"model": "insufficient data", "version": None}
        self._loaded_at = -1e9

    async def summaries(self, now_ms: int) -> tuple[np.ndarray, ...]:
        """Recency / frequency / monetary of every customer with a purchase (a SCAN of Redis)."""
        rows = []
        async for keys in _batches(self.redis.scan_iter(match=f"{self.prefix}:{{*}}:journey", count=5000), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, "orders", "fo_ms", "lo_ms", "gross", "fo_c")
                for orders, fo_ms, lo_ms, gross, fo_c in await pipe.execute():
                    if orders and int(orders) > 0 and fo_ms:
                        rows.append((int(orders), int(fo_ms), int(lo_ms), int(gross), int(fo_c)))
        if not rows:
            return tuple(np.zeros(0) for _ in range(4))
        a = np.array(rows, dtype=np.float64)
        x = a[:, 0] - 1
        first, last = a[:, 1], a[:, 2]
        T = np.maximum((now_ms - first) / DAY_MS, (last - first) / DAY_MS)
        m = np.where(x > 0, (a[:, 3] - a[:, 4]) / 100 / np.maximum(x, 1), 0.0)
        return x, (last - first) / DAY_MS, T, np.maximum(m, 0.0)

    async def refit(self, now_ms: int | None = None) -> dict[str, Any]:
        """Fit on the current summaries and store the result as a new version (or say why not)."""
        now_ms = now_ms or int(time.time() * 1000)
        x, t_x, T, m = await self.summaries(now_ms)
        result: FitResult | InsufficientData = InsufficientData("no customer has purchased yet", 0, 0)
        if len(x):
            result = await asyncio.to_thread(fit, x, t_x, T, m)  # scipy: keep the event loop free
        if isinstance(result, InsufficientData):
            return {"model": "insufficient data", "reason": result.reason, "n_customers": result.n_customers,
                    "n_repeat_customers": result.n_repeat_customers}
        version = int(await self.redis.incr(self.version_key))
        record = {
            "version": version,
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000)),
            "n_customers": result.n_customers,
            "n_repeat_customers": result.n_repeat_customers,
            "log_likelihood_bgnbd": result.log_likelihood_bgnbd,
            "log_likelihood_gg": result.log_likelihood_gg,
            "converged": result.converged,
            "bgnbd": asdict(result.bgnbd),
            "gamma_gamma": asdict(result.gamma_gamma) if result.gamma_gamma else None,
        }
        raw = orjson.dumps(record)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key, raw)
            pipe.lpush(self.history_key, raw)
            pipe.ltrim(self.history_key, 0, 49)
            await pipe.execute()
        self._use(record)
        return {"model": "fitted", **record}

    async def load(self, max_age_s: float = 0.0) -> None:
        """Use the newest stored version (another worker or `journey clv fit` may have refitted),
        unless the one held was loaded less than ``max_age_s`` ago."""
        now = time.monotonic()
        if now - self._loaded_at < max_age_s:
            return
        self._loaded_at = now
        raw = await self.redis.get(self.key)
        if raw:
            self._use(orjson.loads(raw))

    def _use(self, record: dict[str, Any]) -> None:
        gg = record.get("gamma_gamma")
        self.current = FitResult(
            BGNBDParams(**record["bgnbd"]),
            GammaGammaParams(**gg) if gg else None,
            record["n_customers"],
            record["n_repeat_customers"],
            record["log_likelihood_bgnbd"],
            record["log_likelihood_gg"],
            record["converged"],
        )
        self.current_meta = {"model": "fitted", "version": record["version"], "fitted_at": record["fitted_at"]}


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _batches(it: Any, size: int) -> Any:
    batch: list[Any] = []
    async for item in it:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def customer_value(
    state: JourneyState,
    models: ClvModels,
    *,
    now_ms: int,
    windows: list[int],
    horizon_days: float,
    margin: float,
    annual_discount_rate: float,
) -> dict[str, Any]:
    """The `clv` object of a customer lookup or an alert (money in currency units)."""
    body: dict[str, Any] = {
        "orders": state.orders,
        "revenue": state.revenue_cents / 100,
        "refunded": state.refunded_cents / 100,
        "aov": round(state.gross_cents / state.orders / 100, 2) if state.orders else None,
        "first_purchase": _iso(state.first_order_ms),
        "last_purchase": _iso(state.last_order_ms),
        **{
            k: (v / 100 if k.startswith("revenue") else v)
            for k, v in rolling_value(state.value_days, state.order_days, now_ms, windows).items()
        },
        "horizon_days": horizon_days,
        "expected_purchases": None,
        "p_alive": None,
        "expected_order_value": None,
        "predicted_clv": None,
        "model_version": models.current_meta.get("version"),
        "model": models.current_meta["model"],
    }
    if models.current is None or not state.orders or state.first_order_ms is None:
        if models.current is not None:
            body["model"] = "no purchase yet"
        return body
    first, last = state.first_order_ms, state.last_order_ms or state.first_order_ms
    x = state.orders - 1
    repeat_mean = (state.gross_cents - (state.first_order_cents or 0)) / 100 / x if x else 0.0
    p = predict(
        models.current,
        x=x,
        t_x=(last - first) / DAY_MS,
        T=max(now_ms - first, last - first) / DAY_MS,
        m=max(repeat_mean, 0.0),
        horizon_days=horizon_days,
        margin=margin,
        annual_discount_rate=annual_discount_rate,
    )
    body.update(
        expected_purchases=round(p.expected_purchases, 4),
        p_alive=round(p.p_alive, 4),
        expected_order_value=round(p.expected_value, 2),
        predicted_clv=round(p.predicted_clv, 2),
    )
    return body
