"""The journey KPIs: repeat purchase, churn, retention cohorts, NPS / CSAT and acquisition cost.

The store keeps integer counters that add up (per partition, per event-time day, and all-time),
and a KPI is a ratio of sums read back from them, so it is exact in any order of arrival and
equal to a batch recomputation over the same records. Three kinds of counters:

* **A customer's standing** (:func:`standing`): a function of their state only. Whenever a
  state changes, the store gets ``standing(after) - standing(before)``, so a late event that
  moves a first order, a merged anonymous history and an erasure all correct the counts:

  - ``k|b`` / ``k|b|<channel>`` on the day of the first order: a buying customer (acquired);
  - ``k|rp`` on the day of the second order: a repeat buyer;
  - ``k|rev|<channel>`` on the day of the first order: the buyer's net revenue to date (cents);
  - ``k|r|<week>|<k>`` (all-time only): a customer first seen in ``week`` was active in week ``k``
    after it (k in :data:`RETENTION_WEEKS`).

* **Churn** (:func:`churn_increments`): ``k|ch`` +1 on the day a drop-off alert opens in a stage
  after the purchase stage (the customer bought and has gone silent longer than the map allows),
  -1 on the day it is resolved. Churned as of a day: opened minus resolved up to that day.

* **Surveys** (:func:`survey_increments`): per day, NPS promoters / passives / detractors and the
  CSAT score sum and count, overall, per stage and per acquisition channel.

Anonymous visitors are not customers: they count in none of these (their history joins the
customer's at the merge). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import Any

from models.durations import DAY_MS, iso
from models.events import Invalid, Reason, TouchpointEvent, is_anonymous
from models.journey import JourneyState
from models.journey_map import SURVEY_KINDS, JourneyMap
from models.value import public_channel

#: Weeks after the acquisition week at which the retention cohorts are read.
RETENTION_WEEKS = (0, 1, 2, 4, 8, 12)
_MASK = (1 << (max(RETENTION_WEEKS) + 1)) - 1
WEEK_DAYS = 7

Increment = tuple[int | None, str, int]  # (event-time day, or None for all-time only; field; amount)


def week_of(ts_ms: int) -> int:
    """The week number (ISO weeks, Monday to Sunday, counted from the week of 1970-01-01).

    Examples
    --------
    >>> week_of(0), week_of(4 * DAY_MS), week_of(3 * DAY_MS + DAY_MS - 1)  # Thu 1 Jan 1970, Mon 5 Jan, Sun 4 Jan
    (0, 1, 0)
    """
    return (ts_ms // DAY_MS + 3) // WEEK_DAYS


def week_start_day(week: int) -> int:
    """The day number (epoch day) of the Monday that starts ``week``.

    Examples
    --------
    >>> iso(week_start_day(week_of(1_764_000_000_000)) * DAY_MS)
    '2025-11-24T00:00:00.000Z'
    """
    return week * WEEK_DAYS - 3


def week_label(week: int) -> str:
    """A week as ISO 8601 names it (``2026-W47``)."""
    from datetime import date

    year, number, _ = date.fromordinal(date(1970, 1, 1).toordinal() + week_start_day(week)).isocalendar()
    return f"{year}-W{number:02d}"


def parse_week(text: str) -> int | None:
    """``2026-W47`` (or a date in that week, ``2026-11-18``) as a week number; None if neither.

    Examples
    --------
    >>> parse_week("2026-W47") == parse_week("2026-11-18") == parse_week("2026-11-16"), parse_week("soon")
    (True, None)
    >>> week_label(parse_week("2026-W47"))
    '2026-W47'
    """
    from datetime import date

    try:
        if "-W" in text:
            year, number = text.split("-W")
            day = date.fromisocalendar(int(year), int(number), 1)
        else:
            day = date.fromisoformat(text)
    except ValueError:
        return None
    return week_of((day.toordinal() - date(1970, 1, 1).toordinal()) * DAY_MS)


def mark_active(state: JourneyState, ts_ms: int, first_seen_before_ms: int | None) -> None:
    """Note activity at ``ts_ms`` in the retention weeks (in place), after the event was applied.

    The bits are weeks since the first-seen week; when a late event moves first seen to an
    earlier week, every bit moves with it (all earlier activity was at or after the old first seen).

    Examples
    --------
    >>> st = JourneyState("c1", "s", 0, 10 * DAY_MS, 10 * DAY_MS)
    >>> mark_active(st, 10 * DAY_MS, None); mark_active(st, 17 * DAY_MS, 10 * DAY_MS); bin(st.active_weeks)
    '0b11'
    >>> st.first_seen_ms = 3 * DAY_MS   # a late event, in the week before
    >>> mark_active(st, 3 * DAY_MS, 10 * DAY_MS); bin(st.active_weeks)
    '0b111'
    """
    if first_seen_before_ms is not None and first_seen_before_ms != state.first_seen_ms:
        shift = week_of(first_seen_before_ms) - week_of(state.first_seen_ms)
        if shift > 0:
            state.active_weeks = (state.active_weeks << shift) & _MASK
    k = week_of(ts_ms) - week_of(state.first_seen_ms)
    if 0 <= k <= max(RETENTION_WEEKS):
        state.active_weeks |= 1 << k


def merge_activity(customer: JourneyState, visitor: JourneyState, customer_first_seen_ms: int) -> None:
    """The retention weeks of a customer once an anonymous visitor's history is folded in (in place;
    ``customer.first_seen_ms`` is already the earlier of the two)."""
    base = week_of(customer.first_seen_ms)
    mask = 0
    for first, weeks in ((customer_first_seen_ms, customer.active_weeks), (visitor.first_seen_ms,
                                                                           visitor.active_weeks)):
        mask |= (weeks << (week_of(first) - base)) & _MASK
    customer.active_weeks = mask


#: What a customer's standing depends on (None: no standing): customer id, channel, first and second
#: order, net revenue, first seen and active weeks. Comparing two is cheap; most events change none.
StandingInputs = tuple[str, str | None, int | None, int | None, int, int, int] | None


def standing_inputs(state: JourneyState | None) -> StandingInputs:
    """The inputs of :func:`standing` (None for an anonymous visitor, a merged marker, or no one)."""
    if state is None or state.merged_into is not None or is_anonymous(state.customer_id):
        return None
    return (state.customer_id, state.channel, state.first_order_ms, state.second_order_ms, state.revenue_cents,
            state.first_seen_ms, state.active_weeks)


def standing_of(inputs: StandingInputs, channels: Container[str]) -> list[Increment]:
    """:func:`standing` from its inputs."""
    if inputs is None:
        return []
    _, channel, first_order, second_order, revenue, first_seen, weeks = inputs
    out: list[Increment] = []
    if first_order is not None:
        day, ch = first_order // DAY_MS, public_channel(channel, channels)
        out += [(day, "k|b", 1), (day, f"k|b|{ch}", 1), (day, f"k|rev|{ch}", revenue)]
    if second_order is not None:
        out.append((second_order // DAY_MS, "k|rp", 1))
    week = week_of(first_seen)
    out += [(None, f"k|r|{week}|{k}", 1) for k in RETENTION_WEEKS if weeks >> k & 1]
    return out


def standing(state: JourneyState | None, channels: Container[str]) -> list[Increment]:
    """What a customer contributes to the KPI counters (see the module docstring); nothing for an
    anonymous visitor, a merged marker, or no one.

    Examples
    --------
    >>> st = JourneyState("c1", "purchase", 0, 0, 8 * DAY_MS, channel="search", orders=2, gross_cents=5000,
    ...                   first_order_ms=DAY_MS, second_order_ms=8 * DAY_MS, active_weeks=0b11)
    >>> standing(st, {"search"})
    [(1, 'k|b', 1), (1, 'k|b|search', 1), (1, 'k|rev|search', 5000), (8, 'k|rp', 1), (None, 'k|r|0|0', 1), \
(None, 'k|r|0|1', 1)]
    """
    return standing_of(standing_inputs(state), channels)


def difference(before: Sequence[Increment], after: Sequence[Increment]) -> dict[tuple[int | None, str], int]:
    """``after - before``, without the zeros.

    Examples
    --------
    >>> difference([(1, "k|b", 1), (1, "k|rev|x", 500)], [(1, "k|b", 1), (1, "k|rev|x", 800), (3, "k|rp", 1)])
    {(1, 'k|rev|x'): 300, (3, 'k|rp'): 1}
    """
    out: dict[tuple[int | None, str], int] = {}
    for sign, items in ((-1, before), (1, after)):
        for day, name, n in items:
            out[(day, name)] = out.get((day, name), 0) + sign * n
    return {k: v for k, v in out.items() if v}


def churn_increments(customer_id: str, stage: str, journey: JourneyMap, *, opened: bool, at_ms: int) -> list[Increment]:
    """A drop-off alert opened (+1) or resolved (-1) on the day ``at_ms``: churn if its stage comes
    after the purchase stage and the profile is a customer.

    Examples
    --------
    >>> jm = JourneyMap(("visit", "purchase", "retention"), {"v": "visit", "buy": "purchase", "use": "retention"},
    ...                 value_roles={"buy": "order"})
    >>> churn_increments("c1", "retention", jm, opened=True, at_ms=DAY_MS), churn_increments("c1", "purchase", jm,
    ...                                                                                     opened=True, at_ms=0)
    ([(1, 'k|ch', 1)], [])
    """
    if is_anonymous(customer_id) or journey.rank_of(stage) <= journey.order_rank:
        return []
    return [(at_ms // DAY_MS, "k|ch", 1 if opened else -1)]


def check_survey(event: TouchpointEvent, kind: str | None) -> TouchpointEvent | Invalid:
    """A survey answer needs ``properties.score``: a whole number in the kind's range (NPS 0-10, CSAT 1-5).

    Examples
    --------
    >>> e = TouchpointEvent("e1", "c1", "nps_survey", 0, properties={"score": 11})
    >>> check_survey(e, "nps").detail
    'nps score must be a whole number from 0 to 10, got 11'
    >>> check_survey(e, None) is e
    True
    """
    if kind is None:
        return event
    low, high = SURVEY_KINDS[kind]
    score = (event.properties or {}).get("score")
    if score is None:
        return Invalid(Reason.MISSING_FIELD, f"a {event.touchpoint} ({kind} survey) needs properties.score")
    if isinstance(score, bool) or not isinstance(score, int | float) or score != int(score) or not low <= score <= high:
        return Invalid(Reason.SCORE_OUT_OF_RANGE, f"{kind} score must be a whole number from {low} to {high}, "
                                                  f"got {score!r}"[:200])
    return event


def survey_increments(kind: str, score: int, stage: str, channel: str) -> list[tuple[str, int]]:
    """The day counters one survey answer adds: overall (``*``), for the customer's stage (``s:``) and
    acquisition channel (``c:``). NPS: ``nps|promoter|…`` (9-10), ``passive`` (7-8), ``detractor`` (0-6);
    CSAT: ``csat|n|…`` and ``csat|sum|…``.

    Examples
    --------
    >>> survey_increments("nps", 9, "retention", "email")
    [('nps|promoter|*', 1), ('nps|promoter|s:retention', 1), ('nps|promoter|c:email', 1)]
    >>> survey_increments("csat", 4, "retention", "email")[:2]
    [('csat|n|*', 1), ('csat|sum|*', 4)]
    """
    segments = ("*", f"s:{stage}", f"c:{channel}")
    if kind == "nps":
        group = "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
        return [(f"nps|{group}|{seg}", 1) for seg in segments]
    return [item for seg in segments for item in ((f"csat|n|{seg}", 1), (f"csat|sum|{seg}", score))]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def report(
    *,
    as_of_ms: int,
    days: int,
    totals: Mapping[str, int],
    window: Mapping[str, int],
    spend_cents: Mapping[str, int],
    margin: float,
    cohorts: int = 12,
) -> dict[str, Any]:
    """The KPIs as of ``as_of_ms`` (its event-time day included).

    Parameters
    ----------
    totals
        The counters summed over every day up to and including the as-of day (and the all-time ``k|r|…``).
    window
        The counters summed over the ``days`` days up to and including the as-of day.
    spend_cents
        Marketing spend per channel over the same ``days`` (cents, the configured currency).
    margin
        The gross margin applied to revenue for CLV (the CLV model's).

    Examples
    --------
    >>> r = report(as_of_ms=10 * DAY_MS, days=7, totals={"k|b": 4, "k|rp": 1, "k|ch": 1},
    ...            window={"k|b|search": 2, "k|rev|search": 10_000, "nps|promoter|*": 3, "nps|detractor|*": 1},
    ...            spend_cents={"search": 5_000}, margin=0.5)
    >>> r["repeat_purchase_rate"], r["churn_rate"], r["nps"]["overall"]["nps"]
    (0.25, 0.25, 50.0)
    >>> r["acquisition"][0]["cac"], r["acquisition"][0]["clv_to_cac"]
    (25.0, 1.0)
    """
    as_of_day = as_of_ms // DAY_MS
    buyers, repeat, churned = totals.get("k|b", 0), totals.get("k|rp", 0), totals.get("k|ch", 0)
    return {
        "as_of": iso(as_of_ms),
        "window_days": days,
        "customers_buying": buyers,
        "repeat_buyers": repeat,
        "repeat_purchase_rate": _ratio(repeat, buyers),
        "churned": churned,
        "churn_rate": _ratio(churned, buyers),
        "retention": retention_table(totals, as_of_day, cohorts),
        "nps": _surveys(window, "nps"),
        "csat": _surveys(window, "csat"),
        "acquisition": acquisition_table(window, spend_cents, margin),
    }


def retention_table(totals: Mapping[str, int], as_of_day: int, cohorts: int) -> list[dict[str, Any]]:
    """The ``cohorts`` latest complete weekly cohorts: their size and, for each k in
    :data:`RETENTION_WEEKS` whose week has ended by the as-of day, the share active in week k."""
    last_complete = (as_of_day + 1 + 3) // WEEK_DAYS - 1  # the latest week ending on or before the as-of day
    rows = []
    for week in range(last_complete - cohorts + 1, last_complete + 1):
        size = totals.get(f"k|r|{week}|0", 0)
        if not size:
            continue
        shares: dict[str, float | None] = {}
        for k in RETENTION_WEEKS[1:]:
            shares[f"week_{k}"] = totals.get(f"k|r|{week}|{k}", 0) / size if week + k <= last_complete else None
        rows.append({"cohort": week_label(week), "customers": size, **shares})
    return rows


def acquisition_table(window: Mapping[str, int], spend_cents: Mapping[str, int], margin: float) -> list[dict[str, Any]]:
    """Per acquisition channel over the window: new buying customers, spend, CAC, revenue and CLV to
    date per customer (net revenue × margin) and CLV / CAC."""
    channels = sorted({k.split("|", 2)[2] for k in window if k.startswith("k|b|")} | set(spend_cents))
    rows = []
    for ch in channels:
        acquired, spend = window.get(f"k|b|{ch}", 0), spend_cents.get(ch, 0)
        revenue = window.get(f"k|rev|{ch}", 0)
        cac = spend / 100 / acquired if acquired and ch in spend_cents else None  # no spend recorded: unknown
        clv = margin * revenue / 100 / acquired if acquired else None
        rows.append({
            "channel": ch, "customers_acquired": acquired, "spend": spend / 100, "cac": cac,
            "revenue_per_customer": revenue / 100 / acquired if acquired else None, "clv_per_customer": clv,
            "clv_to_cac": clv / cac if clv is not None and cac else None,
        })
    return rows


def _surveys(window: Mapping[str, int], kind: str) -> dict[str, Any]:
    segs = sorted({k.split("|", 2)[2] for k in window if k.startswith(f"{kind}|")})

    def one(seg: str) -> dict[str, Any]:
        if kind == "nps":
            p, m, d = (window.get(f"nps|{g}|{seg}", 0) for g in ("promoter", "passive", "detractor"))
            n = p + m + d
            return {"responses": n, "promoters": p, "passives": m, "detractors": d,
                    "nps": 100 * (p - d) / n if n else None}
        n, total = window.get(f"csat|n|{seg}", 0), window.get(f"csat|sum|{seg}", 0)
        return {"responses": n, "csat": total / n if n else None}

    return {
        "overall": one("*"),
        "by_stage": {s[2:]: one(s) for s in segs if s.startswith("s:")},
        "by_channel": {s[2:]: one(s) for s in segs if s.startswith("c:")},
    }
