"""Customer value in the stream: money checks, rolling revenue windows, and value attribution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from models.events import Invalid, Reason, TouchpointEvent
from models.journey_map import JourneyMap
from models.rolling import window_sum

ATTRIBUTION_MODELS = ("first_touch", "last_touch", "linear", "time_decay")


def check_money(
    event: TouchpointEvent, role: str | None, *, currency: str, rates: Mapping[str, float]
) -> TouchpointEvent | Invalid:
    """Make an event's value comparable: in the configured currency, present where it matters.

    ``role`` is the touchpoint's value role in the journey map (``order``, ``refund`` or None).
    A value in another currency is converted with ``rates`` (units of ``currency`` per unit of
    the event's currency); without a rate the event is refused rather than mixing currencies.

    Examples
    --------
    >>> e = TouchpointEvent("e1", "c1", "purchase", 0, value=10.0, currency="USD")
    >>> check_money(e, "order", currency="EUR", rates={"USD": 0.9}).value
    9.0
    >>> check_money(e, "order", currency="EUR", rates={}).reason
    <Reason.CURRENCY_MISMATCH: 'currency_mismatch'>
    """
    if role is not None and event.value is None:
        return Invalid(Reason.MISSING_FIELD, f"a {event.touchpoint} ({role}) needs a value")
    if event.value is None or event.currency is None or event.currency == currency:
        return event
    rate = rates.get(event.currency)
    if rate is None:
        return Invalid(
            Reason.CURRENCY_MISMATCH,
            f"value in {event.currency}, the configured currency is {currency} and no rate is set for {event.currency}",
        )
    return replace(event, value=round(event.value * rate, 6), currency=currency)


def attribute(
    touches: Sequence[tuple[int, str, str]],
    purchase_ms: int,
    value: float,
    *,
    lookback_ms: int,
    half_life_ms: int,
) -> dict[str, list[float]]:
    """Split a purchase's value over the touches that preceded it within the lookback window.

    Parameters
    ----------
    touches
        ``(event time, touchpoint, channel)`` in event-time order (the customer's recent path,
        without revenue touchpoints).
    purchase_ms
        When the purchase happened.
    value
        What to split.

    Returns
    -------
    dict
        For each model (``first_touch``, ``last_touch``, ``linear``, ``time_decay``) the share
        of each touch, in the order given; touches outside the window get 0. Shares sum to
        ``value`` in every model, or all are 0 when no touch qualifies.

    Examples
    --------
    >>> t = [(0, "ad_click", "social"), (3_600_000, "site_visit", "")]
    >>> shares = attribute(t, 7_200_000, 100.0, lookback_ms=86_400_000, half_life_ms=3_600_000)
    >>> shares["first_touch"], shares["last_touch"], shares["linear"]
    ([100.0, 0.0], [0.0, 100.0], [50.0, 50.0])
    >>> [round(s, 2) for s in shares["time_decay"]]   # the later touch weighs twice as much
    [33.33, 66.67]
    """
    eligible = [i for i, (ts, _, _) in enumerate(touches) if purchase_ms - lookback_ms <= ts < purchase_ms]
    out = {model: [0.0] * len(touches) for model in ATTRIBUTION_MODELS}
    if not eligible:
        return out
    out["first_touch"][eligible[0]] = value
    out["last_touch"][eligible[-1]] = value
    for i in eligible:
        out["linear"][i] = value / len(eligible)
    weights = {i: 2.0 ** (-(purchase_ms - touches[i][0]) / half_life_ms) for i in eligible}
    total = sum(weights[i] for i in eligible)
    for i in eligible:
        out["time_decay"][i] = value * weights[i] / total
    return out


def rolling_value(
    value_days: Mapping[int, float], order_days: Mapping[int, int], now_ms: int, windows: Sequence[int]
) -> dict[str, float | int]:
    """Revenue and orders over each rolling window (days), read at ``now_ms``.

    Examples
    --------
    >>> rolling_value({100: 30.0, 10: 5.0}, {100: 1, 10: 1}, now_ms=100 * 86_400_000, windows=[30, 365])
    {'revenue_30d': 30.0, 'orders_30d': 1, 'revenue_365d': 35.0, 'orders_365d': 2}
    """
    out: dict[str, float | int] = {}
    for days in windows:
        out[f"revenue_{days}d"] = round(window_sum(value_days, now_ms, days), 2)
        out[f"orders_{days}d"] = int(window_sum({d: float(n) for d, n in order_days.items()}, now_ms, days))
    return out


def value_report(journey: JourneyMap, totals: Mapping[str, float]) -> dict[str, Any]:
    """Where value is created and lost, from the running totals (cents) the store keeps.

    Examples
    --------
    >>> jm = JourneyMap(("a", "b"), {"x": "a", "buy": "b"}, value_roles={"buy": "order"})
    >>> r = value_report(jm, {"tp|linear|x": 1000.0, "ch|linear|email": 1000.0, "stage|created|a": 1000.0,
    ...                       "stage|lost_customers|b": 2, "stage|lost_revenue|b": 500})
    >>> r["touchpoints"][0]["linear"], r["channels"][0]["channel"], r["stages"][1]["lost_revenue"]
    (10.0, 'email', 5.0)
    """

    def table(kind: str, label: str) -> list[dict[str, Any]]:
        names = sorted({k.split("|", 2)[2] for k in totals if k.startswith(f"{kind}|")})
        rows = [
            {label: n, **{m: round(totals.get(f"{kind}|{m}|{n}", 0.0) / 100, 2) for m in ATTRIBUTION_MODELS}}
            for n in names
        ]
        return sorted(rows, key=lambda r: -r["linear"])

    stages = [
        {
            "stage": s,
            "value_created": round(totals.get(f"stage|created|{s}", 0.0) / 100, 2),
            "customers_lost": int(totals.get(f"stage|lost_customers|{s}", 0)),
            "lost_revenue": round(totals.get(f"stage|lost_revenue|{s}", 0.0) / 100, 2),
        }
        for s in journey.stages
    ]
    return {
        "models": list(ATTRIBUTION_MODELS),
        "touchpoints": table("tp", "touchpoint"),
        "channels": table("ch", "channel"),
        "stages": stages,
        "unattributed": round(totals.get("unattributed", 0.0) / 100, 2),
    }
