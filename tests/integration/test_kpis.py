"""The journey KPIs on the real Kafka and Redis equal a batch recomputation from the records published.

A simulated stream (half the customers anonymous until signup, surveys, duplicates, late and
malformed records) and a marketing-spend file go through a real worker. The test then recomputes
every KPI from what it published — in plain Python, from the records, not from the tracker's
counters — and compares: counts and sums exactly, ratios to 1e-9. Churn is recomputed from the
drop-off alerts on the alerts topic (the tracker's own alert decisions, tested elsewhere).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.devtools.simulate import simulate
from tests.integration.conftest import ROOT, WorkerProcess, read_topic

DAY = 86_400_000
CHANNELS = ("search", "social", "email", "display", "direct", "referral")
ORDERS, REFUND = {"purchase", "upgrade"}, "refund"
RANK = {"ad_click": 0, "site_visit": 0, "signup": 1, "product_view": 1, "add_to_cart": 2, "checkout": 2,
        "purchase": 2, "onboarding_complete": 3, "upgrade": 3, "refund": 3, "review": 4}
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
MARGIN = 0.3


def week(ts: int) -> int:
    return (ts // DAY + 3) // 7


def public(ch: str | None) -> str:
    return "(none)" if not ch else ch if ch in CHANNELS else "other"


@pytest.fixture(scope="module")
def run(worker_factory, tmp_path_factory):
    now = int(time.time() * 1000)
    _, stream = simulate(1500, seed=23, now_ms=now, days=60, anonymous_share=0.5, survey_share=0.4)
    records = list(stream)
    w: WorkerProcess = worker_factory(JOURNEY_ANONYMOUS_TTL="400d", JOURNEY_DEDUPE_WINDOW="400d",
                                      JOURNEY_IDLE_TIMEOUT="1h")
    w.start()
    for r in records:
        w.producer.send(w.settings.touchpoints_topic, key=r.key, value=r.value)
    w.producer.flush()
    # Spend: 80 a day on search, 20 on email, 5 on a channel the tracker does not know, for 40 days.
    spend = tmp_path_factory.mktemp("spend") / "spend.csv"
    today = now // DAY
    rows = ["channel,day,amount,currency"]
    for d in range(today - 39, today + 1):
        day = datetime.fromtimestamp(d * 86400, UTC).date().isoformat()
        rows += [f"search,{day},80.00,EUR", f"email,{day},20.00,", f"tiktok,{day},5.00,EUR"]
    spend.write_text("\n".join(rows) + "\n")
    done = journey(w, "spend", "import", str(spend))
    assert done.returncode == 0, done.stderr
    w.wait_drained(timeout=300)
    alerts = [orjson.loads(m.value) for m in read_topic(w.settings, w.settings.alerts_topic) if m.value]
    return w, records, alerts, today


def journey(w: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**os.environ, **w.env},
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def people(records) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """Each customer's events (their devices' anonymous events included), and the applied events in
    publish order with their person (None: an anonymous visitor never linked)."""
    events, seen = [], set()
    for r in records:
        if r.kind == "malformed":
            continue
        doc = orjson.loads(r.value)
        if doc["event_id"] in seen:
            continue
        seen.add(doc["event_id"])
        events.append(doc)
    owner = {d["anonymous_id"]: d["customer_id"] for d in events if d.get("customer_id") and d.get("anonymous_id")}
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ordered = []
    for d in events:
        person = d.get("customer_id") or owner.get(d.get("anonymous_id"))
        if person is not None:
            by[person].append(d)
            ordered.append((person, d))
    return by, ordered


def ts(d: dict[str, Any]) -> int:
    t = d["timestamp"]
    return t if isinstance(t, int) else int(datetime.fromisoformat(t).timestamp() * 1000)


def cents(v: float) -> int:
    return round(v * 100)


def expected(records, alerts, as_of_day: int, days: int, spend: dict[str, int]) -> dict[str, Any]:
    by, ordered = people(records)
    buyers = repeat = 0
    acquired: dict[str, int] = defaultdict(int)
    revenue: dict[str, int] = defaultdict(int)
    cohorts: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    first_window = as_of_day - days + 1
    for evs in by.values():
        times = sorted(ts(d) for d in evs)
        orders = sorted(ts(d) for d in evs if d["touchpoint"] in ORDERS)
        if orders and orders[0] // DAY <= as_of_day:
            buyers += 1
        if len(orders) > 1 and orders[1] // DAY <= as_of_day:
            repeat += 1
        with_channel = sorted((ts(d), d["channel"]) for d in evs if d.get("channel"))
        channel = public(with_channel[0][1] if with_channel else None)
        if orders and first_window <= orders[0] // DAY <= as_of_day:
            acquired[channel] += 1
            gross = sum(cents(d["value"]) for d in evs if d["touchpoint"] in ORDERS)
            refunded = sum(cents(d["value"]) for d in evs if d["touchpoint"] == REFUND)
            revenue[channel] += max(0, gross - refunded)
        cohort = week(times[0])
        for k in {week(t) - cohort for t in times} & {0, 1, 2, 4, 8, 12}:
            cohorts[cohort][k] += 1
    # churn: drop-offs after the purchase stage, opened (due) up to the day minus resolved up to it
    churned = 0
    for a in alerts:
        if a["type"] == "drop_off" and a["customer_id"] and a["stage"] in ("retention", "advocacy"):
            day = ts({"timestamp": a["event_time"]}) // DAY
            if day <= as_of_day:
                churned += 1 if a["status"] == "open" else -1
    # surveys: applied in publish order, with the stage the customer had reached by then
    reached: dict[str, int] = defaultdict(lambda: -1)
    nps: dict[str, list[int]] = defaultdict(list)
    csat: dict[str, list[int]] = defaultdict(list)
    for person, d in ordered:
        tp = d["touchpoint"]
        if tp in RANK and d.get("customer_id"):
            reached[person] = max(reached[person], RANK[tp])
        if tp in ("nps_survey", "csat_survey") and first_window <= ts(d) // DAY <= as_of_day:
            stage = STAGES[max(reached[person], 0)]
            for seg in ("*", f"s:{stage}"):
                (nps if tp == "nps_survey" else csat)[seg].append(d["properties"]["score"])
    last_complete = (as_of_day + 4) // 7 - 1
    retention = []
    for wk in range(last_complete - 11, last_complete + 1):
        size = cohorts[wk][0]
        if size:
            retention.append((wk, size, {k: (cohorts[wk][k] / size if wk + k <= last_complete else None)
                                         for k in (1, 2, 4, 8, 12)}))
    return {"buyers": buyers, "repeat": repeat, "churned": churned, "acquired": dict(acquired),
            "revenue": dict(revenue), "retention": retention, "nps": dict(nps), "csat": dict(csat), "spend": spend}


def check(body: dict[str, Any], want: dict[str, Any]) -> None:
    assert (body["customers_buying"], body["repeat_buyers"], body["churned"]) == (
        want["buyers"], want["repeat"], want["churned"])
    assert body["repeat_purchase_rate"] == pytest.approx(want["repeat"] / want["buyers"], abs=1e-9)
    assert body["churn_rate"] == pytest.approx(want["churned"] / want["buyers"], abs=1e-9)
    rows = {r["cohort"]: r for r in body["retention"]}
    assert len(rows) == len(want["retention"])
    for (_, size, shares), row in zip(want["retention"], body["retention"], strict=True):
        assert row["customers"] == size
        for k, share in shares.items():
            assert row[f"week_{k}"] == (None if share is None else pytest.approx(share, abs=1e-9))
    for seg, scores in want["nps"].items():
        got = body["nps"]["overall"] if seg == "*" else body["nps"]["by_stage"][seg[2:]]
        p, d = sum(s >= 9 for s in scores), sum(s <= 6 for s in scores)
        assert got["responses"] == len(scores)
        assert got["nps"] == pytest.approx(100 * (p - d) / len(scores), abs=1e-9)
    for seg, scores in want["csat"].items():
        got = body["csat"]["overall"] if seg == "*" else body["csat"]["by_stage"][seg[2:]]
        assert (got["responses"], got["csat"]) == (len(scores), pytest.approx(sum(scores) / len(scores), abs=1e-9))
    # per channel: each answer counts once, under the customer's channel
    assert sum(c["responses"] for c in body["nps"]["by_channel"].values()) == len(want["nps"].get("*", []))
    acq = {r["channel"]: r for r in body["acquisition"]}
    assert {c: r["customers_acquired"] for c, r in acq.items() if r["customers_acquired"]} == want["acquired"]
    for ch, n in want["acquired"].items():
        r = acq[ch]
        assert r["revenue_per_customer"] == pytest.approx(want["revenue"][ch] / 100 / n, abs=1e-9)
        spent = want["spend"].get(ch, 0) / 100
        assert r["spend"] == pytest.approx(spent, abs=1e-9)
        if spent:
            assert r["cac"] == pytest.approx(spent / n, abs=1e-9)
            assert r["clv_to_cac"] == pytest.approx(MARGIN * want["revenue"][ch] / 100 / n / (spent / n), abs=1e-9)


def test_kpis_equal_a_batch_recomputation_now_and_as_of_an_earlier_day(run):
    w, records, alerts, today = run
    status, body = w.get("/journey/kpis?days=30")
    assert status == 200
    as_of_day = ts({"timestamp": body["as_of"]}) // DAY
    # 40 days of 80 + 20 (+5 on a channel the tracker does not know: "other"), 30 of them in the window
    days_in = min(30, max(0, 30 - (as_of_day - today)))
    spend = {"search": 8000 * days_in, "email": 2000 * days_in, "other": 500 * days_in}
    want = expected(records, alerts, as_of_day, 30, spend)
    assert want["buyers"] > 100 and want["repeat"] > 10 and want["churned"] > 5 and want["nps"]["*"]  # not vacuous
    check(body, want)

    earlier = as_of_day - 17
    status, past = w.get(f"/journey/kpis?days=14&as_of={earlier * DAY + DAY - 1}")
    assert status == 200
    check(past, expected(records, alerts, earlier, 14, {"search": 8000 * 14, "email": 2000 * 14, "other": 500 * 14}))
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "kpis.json").write_text(json.dumps({"now": body, "as_of_17_days_earlier": past}, indent=2))

    # Prometheus: the same figures, under the names the Grafana dashboard queries
    with urllib.request.urlopen(w.base_url + "/metrics", timeout=10) as r:  # noqa: S310
        metrics = r.read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("journey_kpi") or line.startswith("journey_alert_uplift")}
    now_kpis = w.get("/journey/kpis?days=30")[1]  # what the scrape read (nothing was published since)
    assert samples["journey_kpi_repeat_purchase_rate"] == pytest.approx(now_kpis["repeat_purchase_rate"], abs=1e-12)
    assert samples["journey_kpi_churn_rate"] == pytest.approx(now_kpis["churn_rate"], abs=1e-12)
    search = next(a for a in now_kpis["acquisition"] if a["channel"] == "search")
    assert samples['journey_kpi_cac{channel="search"}'] == pytest.approx(search["cac"], abs=1e-9)
    grafana = (ROOT / "deploy/grafana/dashboards/journey-tracker.json").read_text()
    for name in set(re.findall(r"journey_(?:kpi|alert)_[a-z_]+", grafana)):
        assert f"# HELP {name} " in metrics, f"the Grafana dashboard queries {name}, which the worker does not export"

    cli = journey(w, "kpis", "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == body
    text = journey(w, "kpis")
    assert text.returncode == 0 and "repeat purchase rate" in text.stdout and "Retention" in text.stdout


def test_gaps_and_value_per_channel_and_cohort_add_up_to_the_whole(run):
    w, records, _, _ = run
    _, whole = w.get("/journey/gaps?days=90")
    by_channel = [w.get(f"/journey/gaps?days=90&channel={c}")[1] for c in (*CHANNELS, "other", "(none)")]
    for i, stage in enumerate(whole["stages"]):
        assert stage["reached"] == sum(b["stages"][i]["reached"] for b in by_channel) > 0
    _, value = w.get("/journey/value")
    weeks = {week(ts(orjson.loads(r.value))) for r in records if r.kind != "malformed"}
    cohorts = [w.get(f"/journey/value?cohort={datetime.fromtimestamp((wk * 7 - 3) * 86400, UTC).date()}")[1]
               for wk in sorted(weeks)]
    for i, stage in enumerate(value["stages"]):
        assert stage["value_created"] == pytest.approx(sum(c["stages"][i]["value_created"] for c in cohorts), abs=0.05)
    assert cohorts[0]["cohort"].count("-W") == 1
    status, err = w.get("/journey/gaps?cohort=soon")
    assert status == 400 and "ISO week" in err["error"]
    status, err = w.get("/journey/value?channel=search&cohort=2026-W01")
    assert status == 400 and "not both" in err["error"]
    bad = journey(w, "gaps", "--cohort", "soon")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "ISO week" in bad.stderr
