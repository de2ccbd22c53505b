"""Customer value in the stream: money checks, rolling revenue windows, and value attribution."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import replace
from typing import Any

from models.clv import ClvModel, OrderSummary, customer_figures
from models.durations import DAY_MS, iso
from models.events import Invalid, Reason, TouchpointEvent
from models.journey import JourneyState
from models.journey_map import JourneyMap

ATTRIBUTION_MODELS = ("first_touch", "last_touch", "linear", "time_decay")


DEFAULT_MAX_VALUE = 10_000_000.0
MILLI = 1000  # attributed value is kept in thousandths of a cent: integer sums, exact in any order


def check_money(
    event: TouchpointEvent,
    role: str | None,
    *,
    currency: str,
    rates: Mapping[str, float],
    max_value: float = DEFAULT_MAX_VALUE,
) -> TouchpointEvent | Invalid:
    """Make an event's value comparable: in the configured currency, present where it matters,
    and small enough that no total can overflow.

    ``role`` is the touchpoint's value role in the journey map (``order``, ``refund`` or None).
    A value in another currency is converted with ``rates`` (units of ``currency`` per unit of
    the event's currency); without a rate the event is refused rather than mixing currencies.
    A value above ``max_value`` (in either currency) is refused as ``value_out_of_range``: it is
    almost surely a bug upstream, and every sum stays exact in 64-bit integers.

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
    if event.value is None:
        return event
    if not event.value <= max_value:
        return Invalid(Reason.VALUE_OUT_OF_RANGE, f"value {event.value!r} is above the maximum {max_value:g}")
    if event.currency is None or event.currency == currency:
        return event
    rate = rates.get(event.currency)
    if rate is None:
        return Invalid(
            Reason.CURRENCY_MISMATCH,
            f"value in {event.currency}, the configured currency is {currency} and no rate is set for {event.currency}",
        )
    converted = round(event.value * rate, 6)
    if not converted <= max_value:
        return Invalid(
            Reason.VALUE_OUT_OF_RANGE, f"value {converted!r} {currency} (converted) is above the maximum {max_value:g}"
        )
    return replace(event, value=converted, currency=currency)


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
    today = now_ms // DAY_MS
    revenue = [0.0] * len(windows)
    orders = [0] * len(windows)
    # one pass over the days (the same windows as models.rolling.window_sum: (today - w, today])
    for day, amount in value_days.items():
        age = today - day
        if age >= 0:
            for i, w in enumerate(windows):
                if age < w:
                    revenue[i] += amount
    for day, n in order_days.items():
        age = today - day
        if age >= 0:
            for i, w in enumerate(windows):
                if age < w:
                    orders[i] += n
    out: dict[str, float | int] = {}
    for i, w in enumerate(windows):
        out[f"revenue_{w}d"] = round(max(revenue[i], 0.0), 2)
        out[f"orders_{w}d"] = int(orders[i])
    return out


def public_channel(channel: str | None, known: Container[str]) -> str:
    """The channel as aggregates show it: a known channel by name, anything else as ``other``.

    Channels are free text from the producer; a customer's email sent as a channel must never
    reach an aggregate that is served without a token.

    Examples
    --------
    >>> public_channel("email", {"email", "search"}), public_channel("ann@example.com", {"email"})
    ('email', 'other')
    >>> public_channel(None, {"email"})
    '(none)'
    """
    if not channel:
        return "(none)"
    return channel if channel in known else "other"


def attribution_increments(
    touches: Sequence[tuple[int, str, str]],
    purchase_ms: int,
    cents: int,
    *,
    lookback_ms: int,
    half_life_ms: int,
    stage_of: Mapping[str, str],
    channels: Container[str],
) -> dict[str, int]:
    """The running value totals one order adds, in thousandths of a cent (integers).

    Each model's shares are rounded to whole thousandths so that they add up to exactly
    ``cents * 1000`` (largest remainder first), so every total is exact and does not depend on
    the order in which orders are applied. Fields: ``tp|<model>|<touchpoint>``,
    ``ch|<model>|<channel>`` (channels outside ``channels`` count as ``other``),
    ``stage|created|<stage>`` (linear), or ``unattributed`` when no touch qualifies.

    Examples
    --------
    >>> t = [(0, "ad_click", "social"), (3_600_000, "site_visit", "")]
    >>> inc = attribution_increments(t, 7_200_000, 100, lookback_ms=86_400_000, half_life_ms=3_600_000,
    ...                              stage_of={"ad_click": "awareness", "site_visit": "awareness"},
    ...                              channels={"social"})
    >>> inc["tp|linear|ad_click"], inc["tp|time_decay|site_visit"], inc["stage|created|awareness"]
    (50000, 66667, 100000)
    """
    total = cents * MILLI
    shares = attribute(touches, purchase_ms, float(total), lookback_ms=lookback_ms, half_life_ms=half_life_ms)
    out: dict[str, int] = {}
    if not any(shares["linear"]):
        if total:
            out["unattributed"] = total
        return out

    def add(field: str, amount: int) -> None:
        if amount:
            out[field] = out.get(field, 0) + amount

    for model, split in shares.items():
        whole = _round_to_total(split, total)
        for (_, tp, ch), share in zip(touches, whole, strict=True):
            add(f"tp|{model}|{tp}", share)
            add(f"ch|{model}|{public_channel(ch, channels)}", share)
            if model == "linear":
                add(f"stage|created|{stage_of.get(tp, 'other')}", share)
    return out


def _round_to_total(shares: Sequence[float], total: int) -> list[int]:
    """Whole numbers, each within 1 of its share, adding up to ``total`` (largest remainder)."""
    floors = [int(s) for s in shares]
    missing = total - sum(floors)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in by_remainder[: max(0, missing)]:
        floors[i] += 1
    return floors


def value_report(journey: JourneyMap, totals: Mapping[str, int]) -> dict[str, Any]:
    """Where value is created and lost, from the running totals the store keeps (thousandths of a
    cent; ``stage|lost_customers|*`` are counts).

    Examples
    --------
    >>> jm = JourneyMap(("a", "b"), {"x": "a", "buy": "b"}, value_roles={"buy": "order"})
    >>> r = value_report(jm, {"tp|linear|x": 1_000_000, "ch|linear|email": 1_000_000, "stage|created|a": 1_000_000,
    ...                       "stage|lost_customers|b": 2, "stage|lost_revenue|b": 500_000})
    >>> r["touchpoints"][0]["linear"], r["channels"][0]["channel"], r["stages"][1]["lost_revenue"]
    (10.0, 'email', 5.0)
    """

    def table(kind: str, label: str) -> list[dict[str, Any]]:
        names = sorted({k.split("|", 2)[2] for k in totals if k.startswith(f"{kind}|")})
        rows = [
            {label: n, **{m: _money(totals.get(f"{kind}|{m}|{n}", 0)) for m in ATTRIBUTION_MODELS}}
            for n in names
        ]
        return sorted(rows, key=lambda r: -r["linear"])

    stages = [
        {
            "stage": s,
            "value_created": _money(totals.get(f"stage|created|{s}", 0)),
            "customers_lost": int(totals.get(f"stage|lost_customers|{s}", 0)),
            "lost_revenue": _money(totals.get(f"stage|lost_revenue|{s}", 0)),
        }
        for s in journey.stages
    ]
    return {
        "models": list(ATTRIBUTION_MODELS),
        "touchpoints": table("tp", "touchpoint"),
        "channels": table("ch", "channel"),
        "stages": stages,
        "unattributed": _money(totals.get("unattributed", 0)),
    }


def _money(millicents: float) -> float:
    return round(millicents / (100 * MILLI), 2)


def drop_off_increments(stage: str, revenue_cents: int) -> dict[str, int]:
    """The value lost with a customer who dropped off in ``stage``: one customer and their revenue."""
    return {f"stage|lost_customers|{stage}": 1, f"stage|lost_revenue|{stage}": revenue_cents * MILLI}


_NO_PREDICTION = {"expected_purchases": None, "p_alive": None, "expected_order_value": None, "predicted_clv": None}


def customer_value(
    state: JourneyState,
    clv: ClvModel | None,
    *,
    as_of_ms: int,
    windows: Sequence[int],
    horizon_days: float,
    margin: float,
    annual_discount_rate: float,
) -> dict[str, Any]:
    """The ``clv`` object of a customer lookup or an alert, as of ``as_of_ms`` (money in currency units).

    Everything is a function of the customer's state, the model and ``as_of_ms`` (event time),
    so a replay gives the same figures.

    Examples
    --------
    >>> st = JourneyState("c1", "purchase", 0, 0, 86_400_000, 2, orders=1, gross_cents=2_500,
    ...                   first_order_ms=0, first_order_cents=2_500, last_order_ms=0,
    ...                   value_days={0: 2_500}, order_days={0: 1})
    >>> v = customer_value(st, None, as_of_ms=86_400_000, windows=[30], horizon_days=365, margin=0.3,
    ...                    annual_discount_rate=0.1)
    >>> v["orders"], v["revenue"], v["aov"], v["revenue_30d"], v["model"], v["predicted_clv"]
    (1, 25.0, 25.0, 25.0, 'insufficient data', None)
    """
    today = as_of_ms // DAY_MS
    body: dict[str, Any] = {
        "orders": state.orders,
        "revenue": state.revenue_cents / 100,
        "refunded": state.refunded_cents / 100,
        "aov": round(state.gross_cents / state.orders / 100, 2) if state.orders else None,
        "first_purchase": iso(state.first_order_ms) if state.first_order_ms is not None else None,
        "last_purchase": iso(state.last_order_ms) if state.last_order_ms is not None else None,
    }
    # the rolling windows (those of models.rolling.window_sum: the days (as_of - w, as_of]), in cents
    value_days, order_days = state.value_days, state.order_days
    for w in windows:
        cents = 0
        n = 0
        for day, amount in value_days.items():
            if 0 <= today - day < w:
                cents += amount
                n += order_days.get(day, 0)
        body[f"revenue_{w}d"] = max(cents, 0) / 100
        body[f"orders_{w}d"] = n
    body["horizon_days"] = horizon_days
    if clv is None:
        body.update(_NO_PREDICTION)
        body["model_version"] = None
        body["model"] = "insufficient data"
    else:
        summary = None
        if state.orders and state.first_order_ms is not None:
            summary = OrderSummary(state.orders, state.first_order_ms, state.last_order_ms or state.first_order_ms,
                                   state.gross_cents, state.first_order_cents or 0)
        body.update(customer_figures(summary, clv.fit, as_of_ms=as_of_ms, horizon_days=horizon_days, margin=margin,
                                     annual_discount_rate=annual_discount_rate))
        body["model_version"] = clv.version
        body["model"] = "fitted" if summary else "no purchase yet"
    body["as_of"] = iso(as_of_ms)
    return body
