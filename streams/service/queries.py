"""The answers analysts ask for — a customer, the funnel, the gap analysis, the value report — built
once, for the HTTP API and the CLI alike.

Every answer is as of a moment of *event time*: the stream's time (the latest event time
applied; for a customer, the latest in their partition) unless the caller names one, and
says which in ``as_of``. Nothing here reads the wall clock, so a backfilled history answers
as living through it would have.
"""

from __future__ import annotations

from typing import Any

from models import gaps, kpis, uplift
from models.alerts import AlertFacts, AlertStatus, AlertType, alert_id
from models.durations import DAY_MS, iso
from models.events import anonymous_profile, customer_id_problem, external_id, is_anonymous
from models.gaps import gap_report
from models.journey import JourneyState, OpenAlert
from models.journey_map import JourneyMap
from models.partition import Rules
from models.value import customer_value, public_channel, value_report
from models.watermark import NO_WATERMARK
from streams.service.clv import ClvModels, stream_time
from streams.service.ports import StateQueries


def journey_body(state: JourneyState) -> dict[str, Any]:
    """The journey part of a customer lookup."""
    anonymous = is_anonymous(state.customer_id)
    return {
        "customer_id": None if anonymous else state.customer_id,
        **({"anonymous_id": external_id(state.customer_id)} if anonymous else
           {"anonymous_ids": sorted(state.anonymous_ids)}),
        "stage": state.stage,
        "stage_since": iso(state.stage_since_ms),
        "events": state.events,
        "first_seen": iso(state.first_seen_ms),
        "last_seen": iso(state.last_seen_ms),
        "touchpoints": dict(sorted(state.touchpoints.items())),
        "touchpoint_last_seen": {tp: iso(ms) for tp, ms in sorted(state.touchpoint_last_ms.items())},
        "path": [{"touchpoint": tp, "at": iso(ms), "channel": ch or None} for ms, tp, ch in state.path],
        "channel": state.channel,
    }


def open_alerts(state: JourneyState) -> list[dict[str, Any]]:
    """The customer's open stall and drop-off alerts."""
    out = []
    pairs: list[tuple[AlertType, OpenAlert | None]] = [
        (AlertType.STALLED_CRITICAL_PATH, state.stall_open), (AlertType.DROP_OFF, state.drop_open)]
    for kind, alert in pairs:
        if alert is None:
            continue
        facts = AlertFacts(kind, AlertStatus.OPEN, state.customer_id, alert.stage, alert.touchpoint, alert.anchor_ms,
                           alert.expected_ms, alert.anchor_ms + alert.expected_ms, alert.next_touchpoint,
                           alert.severity)
        out.append({
            "alert_id": alert_id(facts),
            "type": kind.value,
            "stage": alert.stage,
            "touchpoint": alert.touchpoint,
            "next_touchpoint": alert.next_touchpoint,
            "since": iso(alert.anchor_ms + alert.expected_ms),
            "severity": alert.severity,
        })
    return out


async def customer_as_of(queries: StateQueries, customer_id: str) -> int | None:
    """The latest event time applied in the customer's partition (the stream's time where they live)."""
    p = await queries.partition_of(customer_id)
    if p is None:
        return None
    clock = (await queries.clocks()).get(p)
    return clock.high_ms if clock and clock.high_ms > NO_WATERMARK else None


async def customer_view(
    queries: StateQueries, clv: ClvModels, rules: Rules, customer_id: str, *, as_of_ms: int | None = None
) -> dict[str, Any] | None:
    """A customer lookup: journey, value (``clv``), propensity and open alerts; None if unknown.

    An id that is no customer's is looked up as an anonymous id: an anonymous visitor answers
    with their journey (``customer_id`` null), one merged into a customer with ``merged_into``.
    """
    state = await queries.customer(customer_id)
    if state is None and not customer_id_problem(customer_id):
        customer_id = anonymous_profile(customer_id)
        state = await queries.customer(customer_id)
    if state is None:
        return None
    if state.merged_into is not None:
        assert state.merged_ms is not None
        return {"customer_id": None, "anonymous_id": external_id(customer_id),
                "merged_into": state.merged_into, "merged_at": iso(state.merged_ms)}
    if as_of_ms is None:
        as_of_ms = await customer_as_of(queries, customer_id) or state.last_seen_ms
    model = await clv.load(max_age_s=5.0)
    spec = rules.journey.propensity
    propensity = None
    if state.score is not None:
        score, scored_ms, version = state.score
        propensity = {
            "score": score,
            "scored_at": iso(scored_ms),
            "model_version": version,
            "horizon_seconds": spec.horizon_s,
            "pending_labels": len(state.predictions),
        }
    return {
        **journey_body(state),
        "clv": customer_value(state, model, as_of_ms=as_of_ms, windows=rules.clv_windows,
                              horizon_days=rules.clv_horizon_days, margin=rules.clv_margin,
                              annual_discount_rate=rules.clv_discount_rate),
        "propensity": propensity,
        "open_alerts": open_alerts(state),
        "as_of": iso(as_of_ms),
    }


async def resolve_as_of(queries: StateQueries, as_of_ms: int | None) -> int | None:
    return as_of_ms if as_of_ms is not None else await stream_time(queries)


class SegmentError(ValueError):
    """A segment a user asked for that cannot be read (the message says why)."""


def segment_prefix(channel: str | None, cohort: str | None) -> tuple[str, dict[str, str]]:
    """The counter prefix of a segment (``channel=`` or ``cohort=``, one of them) and how the answer names it."""
    if channel is not None and cohort is not None:
        raise SegmentError("give channel or cohort, not both (the counters are kept per channel and per cohort)")
    if channel is not None:
        return f"{gaps.CHANNEL_SEGMENT}{channel}", {"channel": channel}
    if cohort is not None:
        week = kpis.parse_week(cohort)
        if week is None:
            raise SegmentError(f"cohort must be an ISO week (2026-W47) or a date in it (2026-11-18), got {cohort!r}")
        return f"{gaps.COHORT_SEGMENT}{week}", {"cohort": kpis.week_label(week)}
    return "", {}


def _segment(counts: dict[str, int], prefix: str) -> dict[str, int]:
    """Value totals of a segment (they are also kept whole)."""
    return gaps.segment(counts, prefix) if prefix else counts


async def gaps_view(
    queries: StateQueries, journey: JourneyMap, days: int, as_of_ms: int | None = None, *,
    channel: str | None = None, cohort: str | None = None,
) -> dict[str, Any]:
    """Gap analysis over the ``days`` event-time days up to ``as_of`` (default: the stream's time), for
    everyone or for one acquisition channel or weekly cohort (week first seen)."""
    prefix, segment = segment_prefix(channel, cohort)
    as_of_ms = await resolve_as_of(queries, as_of_ms)
    if as_of_ms is None:
        return {"window_days": days, "as_of": None, **segment, **gap_report(journey, {})}
    last = as_of_ms // DAY_MS
    counts = await queries.gap_counts(last - days + 1, last)
    counts = gaps.segment(counts, prefix) if prefix else gaps.whole(counts)  # gap counters are kept per segment
    return {"window_days": days, "as_of": iso(as_of_ms), **segment, **gap_report(journey, counts)}


async def funnel_view(queries: StateQueries, journey: JourneyMap, as_of_ms: int | None = None) -> dict[str, Any]:
    """Customers in each stage now, with the 30-day conversion and drop-off rates. Anonymous visitors
    (not yet linked to a customer) are counted apart, in ``anonymous_visitors``: a person is in one
    of the two columns, never both, once their link has been applied."""
    totals = await queries.aggregates()
    gaps = await gaps_view(queries, journey, 30, as_of_ms)
    by_stage = {s["stage"]: s for s in gaps["stages"]}
    return {
        "as_of": gaps["as_of"],
        # anonymous visitors' histories joined to a customer so far (identity stitching)
        "anonymous_histories_merged": totals.get("identity_merged", 0),
        "stages": [
            {
                "stage": s,
                "customers": totals.get(f"f|{s}", 0),
                "anonymous_visitors": totals.get(f"a|{s}", 0),
                "reached_30d": by_stage[s]["reached"],
                "conversion_rate_30d": by_stage[s]["converted_to_next"],
                "drop_off_rate_30d": by_stage[s]["drop_off_rate"],
            }
            for s in journey.stages
        ],
    }


async def value_view(queries: StateQueries, journey: JourneyMap, *, channel: str | None = None,
                     cohort: str | None = None) -> dict[str, Any]:
    """Where value is created and lost, summed over the partitions, as of the stream's time; for everyone
    or for one acquisition channel or weekly cohort."""
    prefix, segment = segment_prefix(channel, cohort)
    as_of_ms = await stream_time(queries)
    return {"as_of": iso(as_of_ms) if as_of_ms is not None else None, **segment,
            **value_report(journey, _segment(await queries.aggregates(), prefix))}


async def kpis_view(queries: StateQueries, rules: Rules, days: int = 30, as_of_ms: int | None = None
                    ) -> dict[str, Any]:
    """The journey KPIs as of ``as_of`` (default: the stream's time), flows over the ``days`` days up to it.

    Standings and churn are kept all-time and per day: as of an earlier day, the days after it are
    taken back out (only those days are read)."""
    now_ms = await stream_time(queries)
    as_of_ms = as_of_ms if as_of_ms is not None else now_ms
    if as_of_ms is None:  # nothing applied yet
        return {**kpis.report(as_of_ms=0, days=days, totals={}, window={}, spend_cents={}, margin=rules.clv_margin),
                "as_of": None}
    last = as_of_ms // DAY_MS
    totals = {k: v for k, v in (await queries.aggregates()).items() if k.startswith("k|")}
    if now_ms is not None and now_ms // DAY_MS > last:
        for k, v in (await queries.gap_counts(last + 1, now_ms // DAY_MS)).items():
            if k in totals:
                totals[k] -= v
    window = await queries.gap_counts(last - days + 1, last)
    spend = await queries.spend_by_channel(last - days + 1, last)
    spend = _public_spend(spend, rules.channels)
    return kpis.report(as_of_ms=as_of_ms, days=days, totals=totals, window=window, spend_cents=spend,
                       margin=rules.clv_margin)


def _public_spend(spend: dict[str, int], channels: tuple[str, ...]) -> dict[str, int]:
    """Spend per channel as the KPIs name channels (unknown ones as ``other``)."""
    out: dict[str, int] = {}
    for ch, cents in spend.items():
        name = public_channel(ch, channels)
        out[name] = out.get(name, 0) + cents
    return out


async def uplift_view(queries: StateQueries, rules: Rules, days: int | None = None, as_of_ms: int | None = None
                      ) -> dict[str, Any]:
    """Per alert type, what treated and held-out customers did after their alerts (settled exposures):
    all of them, or those alerted in the ``days`` days up to ``as_of``."""
    if days is None:
        counts = await queries.aggregates()
        as_of = await stream_time(queries)
    else:
        as_of = await resolve_as_of(queries, as_of_ms)
        last = (as_of or 0) // DAY_MS
        counts = await queries.gap_counts(last - days + 1, last) if as_of is not None else {}
    types = [t.value for t in AlertType]
    return {
        "as_of": iso(as_of) if as_of is not None else None,
        "window_days": days,
        "measured_for_seconds": rules.uplift_window_ms / 1000,
        "alert_types": uplift.report(counts, types, rules.holdout_shares, rules.uplift_window_ms / 1000),
    }


def clv_model_view(clv: ClvModels) -> dict[str, Any]:
    model = clv.current
    fitted = model.fit if model else None
    return {
        **clv.meta,
        "bgnbd": _asdict(fitted.bgnbd) if fitted else None,
        "gamma_gamma": _asdict(fitted.gamma_gamma) if fitted and fitted.gamma_gamma else None,
        "n_customers": fitted.n_customers if fitted else None,
        "log_likelihood_bgnbd": fitted.log_likelihood_bgnbd if fitted else None,
    }


def _asdict(value: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(value)
