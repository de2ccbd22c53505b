"""KPI and uplift counters through the real batch handler and the in-memory store: late events,
merges, erasure, redelivery and batch boundaries keep them exact. Every expected figure is
counted by hand from the events of the scenario."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from models.events import Reason
from models.kpis import week_of
from models.partition import Rules
from models.uplift import held_out, holdout_key
from streams.journey_file import load_journey_map
from streams.service.handler import CONTROL_HEADER, erase_request
from streams.service.queries import kpis_view, uplift_view
from streams.settings import DEFAULT_MAP
from tests.unit.support import Harness

JOURNEY = load_journey_map(DEFAULT_MAP)
DAY = 86_400_000
T0 = 1_790_000_000_000  # 2026-09-21, a Monday
RULES = Rules(JOURNEY, channels=("search", "email"))


def ev(eid: str, cid: str, tp: str, ts: int, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": cid, "touchpoint": tp, "timestamp": ts, **extra})


def k_counts(h: Harness) -> Any:
    async def read() -> dict[str, int]:
        return {k: v for k, v in (await h.store.aggregates()).items() if k.startswith("k|") and v}
    return read()


async def test_a_late_first_purchase_moves_the_buyer_and_makes_the_repeat():
    h = Harness(JOURNEY, rules=RULES)
    await h.batch(ev("1", "ann", "site_visit", T0, channel="email"),
                  ev("2", "ann", "purchase", T0 + 10 * DAY, value=30))
    w = week_of(T0)
    assert await k_counts(h) == {"k|b": 1, "k|b|email": 1, "k|rev|email": 3000, f"k|r|{w}|0": 1, f"k|r|{w}|1": 1}
    # an earlier purchase arrives late: the first order moves to day T0+2, the later one is now the second
    await h.batch(ev("3", "ann", "purchase", T0 + 2 * DAY, value=20))
    body = await kpis_view(h.store, RULES, days=30)
    assert (body["customers_buying"], body["repeat_buyers"], body["repeat_purchase_rate"]) == (1, 1, 1.0)
    as_of_day5 = await kpis_view(h.store, RULES, days=30, as_of_ms=T0 + 5 * DAY)
    assert (as_of_day5["customers_buying"], as_of_day5["repeat_buyers"]) == (1, 0)  # the repeat came on day 10
    acq = {r["channel"]: r for r in body["acquisition"]}
    assert (acq["email"]["customers_acquired"], acq["email"]["revenue_per_customer"]) == (1, 50.0)
    # a duplicate and a redelivered batch change nothing
    await h.batch(ev("3", "ann", "purchase", T0 + 2 * DAY, value=20), ev("2", "ann", "purchase", T0 + 10 * DAY,
                                                                          value=30))
    assert (await kpis_view(h.store, RULES, days=30))["repeat_buyers"] == 1


async def test_an_erased_customer_leaves_every_kpi():
    h = Harness(JOURNEY, rules=RULES)
    await h.batch(ev("1", "bo", "purchase", T0, value=10, channel="search"), ev("2", "bo", "upgrade", T0 + DAY,
                                                                                 value=5))
    assert await k_counts(h)
    await h.records([h.record(erase_request("bo", T0 + 2 * DAY), headers={CONTROL_HEADER: b"erase"})])
    assert await k_counts(h) == {}


async def test_surveys_count_once_per_answer_never_move_the_stage_and_bad_scores_are_dead_lettered():
    h = Harness(JOURNEY, rules=RULES)
    await h.batch(
        ev("1", "cy", "purchase", T0, value=10, channel="search"),
        ev("2", "cy", "nps_survey", T0 + DAY, properties={"score": 9}),
        ev("2", "cy", "nps_survey", T0 + DAY, properties={"score": 9}),  # a duplicate
        ev("3", "dee", "nps_survey", T0 + DAY, properties={"score": 3}),
        ev("4", "cy", "csat_survey", T0 + 2 * DAY, properties={"score": 4}),
        ev("5", "cy", "nps_survey", T0 + DAY, properties={"score": 11}),
        ev("6", "cy", "csat_survey", T0 + DAY, properties={"score": 0}),
        ev("7", "cy", "csat_survey", T0 + DAY, properties={"score": 4.5}),
        ev("8", "cy", "nps_survey", T0 + DAY),
    )
    assert [d.reason for d in h.dlq.sent] == [Reason.SCORE_OUT_OF_RANGE] * 3 + [Reason.MISSING_FIELD]
    assert (await h.store.customer("cy")).stage == "purchase"
    assert (await h.store.customer("dee")).stage == "awareness"  # a first event that is a survey: the first stage
    body = await kpis_view(h.store, RULES, days=30)
    # one promoter (cy, 9), one detractor (dee, 3): NPS = 100 * (1 - 1) / 2
    assert body["nps"]["overall"] == {"responses": 2, "promoters": 1, "passives": 0, "detractors": 1, "nps": 0.0}
    assert body["nps"]["by_stage"]["purchase"]["nps"] == 100.0
    assert body["nps"]["by_channel"]["search"]["promoters"] == 1
    assert body["csat"]["overall"] == {"responses": 1, "csat": 4.0}


async def test_churn_is_an_open_drop_off_after_the_purchase_stage():
    h = Harness(JOURNEY, rules=RULES)
    # buys, onboards (retention, max silence 45 d), goes silent; a heartbeat customer moves the watermark
    await h.batch(ev("1", "eve", "purchase", T0, value=10), ev("2", "eve", "onboarding_complete", T0 + DAY),
                  ev("3", "zed", "site_visit", T0 + 50 * DAY))
    body = await kpis_view(h.store, RULES, days=30)
    assert (body["churned"], body["customers_buying"], body["churn_rate"]) == (1, 1, 1.0)
    assert (await kpis_view(h.store, RULES, days=30, as_of_ms=T0 + 40 * DAY))["churned"] == 0  # not yet silent 45 d
    await h.batch(ev("4", "eve", "review", T0 + 51 * DAY))  # back: resolved on day 51
    assert (await kpis_view(h.store, RULES, days=30))["churned"] == 0
    assert (await kpis_view(h.store, RULES, days=30, as_of_ms=T0 + 47 * DAY))["churned"] == 1  # churned then


async def test_retention_cells_follow_a_late_event_into_an_earlier_cohort():
    h = Harness(JOURNEY, rules=RULES)
    w = week_of(T0)
    await h.batch(ev("1", "fay", "site_visit", T0 + 7 * DAY), ev("2", "fay", "site_visit", T0 + 14 * DAY))
    assert {k for k in await k_counts(h)} == {f"k|r|{w + 1}|0", f"k|r|{w + 1}|1"}
    await h.batch(ev("3", "fay", "site_visit", T0))  # late: first seen a week earlier, active in weeks 0, 1 and 2
    assert await k_counts(h) == {f"k|r|{w}|0": 1, f"k|r|{w}|1": 1, f"k|r|{w}|2": 1}


@pytest.mark.parametrize("cuts", [[], [1, 2, 3, 4, 5, 6]])
async def test_an_alert_is_measured_over_its_window_in_event_time(cuts):
    rules = Rules(JOURNEY, holdout_shares={"drop_off": 1.0}, uplift_window_ms=3 * DAY)
    h = Harness(JOURNEY, rules=rules)
    events = [
        ev("1", "gus", "signup", T0),  # consideration: a drop-off is due 7 days later
        ev("2", "hal", "site_visit", T0 + 7 * DAY + DAY),  # moves the watermark past it: the alert opens
        ev("3", "gus", "add_to_cart", T0 + 7 * DAY + 2 * DAY),  # within 3 days: converted
        ev("4", "gus", "purchase", T0 + 7 * DAY + 2 * DAY + 1, value=12.5),  # revenue in the window
        ev("5", "gus", "upgrade", T0 + 7 * DAY + 4 * DAY, value=100),  # after the window: not counted
        ev("6", "hal", "site_visit", T0 + 30 * DAY),  # the window ends: settled
    ]
    bounds = [0, *cuts, len(events)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if lo < hi:
            await h.batch(*events[lo:hi])
    opened = [a for a in h.alerts() if a["customer_id"] == "gus" and a["type"] == "drop_off"]
    assert opened[0]["holdout"] is True  # a share of 1.0: everyone held out
    row = next(r for r in (await uplift_view(h.store, rules))["alert_types"] if r["type"] == "drop_off")
    assert (row["held_out"], row["conversion_held_out"], row["revenue_held_out"]) == (2, 0.5, 6.25)  # gus and hal
    assert row["treated"] == 0 and row["uplift"] is None


def test_holdout_membership_is_a_pure_function_of_type_customer_and_salt():
    key = holdout_key("v1")
    a = [held_out("drop_off", f"c{i}", 0.3, key) for i in range(2000)]
    assert a == [held_out("drop_off", f"c{i}", 0.3, holdout_key("v1")) for i in range(2000)]
    assert a != [held_out("drop_off", f"c{i}", 0.3, holdout_key("v2")) for i in range(2000)]  # a new salt: new groups
    assert a != [held_out("stalled_critical_path", f"c{i}", 0.3, key) for i in range(2000)]  # independent per type
    assert 0.3 * 2000 - 3 * (2000 * 0.21) ** 0.5 < sum(a) < 0.3 * 2000 + 3 * (2000 * 0.21) ** 0.5
