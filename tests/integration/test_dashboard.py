"""The live dashboard, end to end: a real worker serves it at `GET /`, headless Chromium runs its
JavaScript against the worker's own endpoints, and the numbers in the rendered page are the
worker's numbers. A screenshot is kept in test-output/dashboard.png.

Needs Debian's `chromium` (scripts/test.sh installs it); without it this test fails, never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import ROOT, WorkerProcess, wait_for

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
SCREENSHOT = ROOT / "test-output" / "dashboard.png"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=8000",  # let the page poll a few times (virtual time, so it takes ~1-2 s)
]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("chromium is not installed: run scripts/test.sh (it installs Debian's chromium) "
                "or `apt-get install chromium`")


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 120 s: {' '.join(cmd)}")
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done


class DataTestIds(HTMLParser):
    """Every element with a data-testid: its attributes and its text content."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, dict[str, Any]] = {}
        self.alert_rows: list[str] = []
        self._open: list[str | None] = []  # the data-testid (or None) of each open element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "data-alert-id" in a:
            self.alert_rows.append(a["data-alert-id"])
        if tag in self.VOID:
            return
        testid = a.get("data-testid")
        if testid is not None:
            self.found[testid] = {"attrs": a, "text": ""}
        self._open.append(testid)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for testid in self._open:
            if testid is not None:
                self.found[testid]["text"] += data


def parse(dom: str) -> DataTestIds:
    parser = DataTestIds()
    parser.feed(dom)
    return parser


def ev(eid: str, cid: str, tp: str, ts: int, **extra: object) -> dict[str, object]:
    return {"event_id": eid, "customer_id": cid, "touchpoint": tp, "timestamp": ts, **extra}


def model_of(w: WorkerProcess) -> tuple[int, Any]:
    """GET /model: (200, figures; roc_auc null until a label has been learned), or (404, None) when scoring is off."""
    try:
        with urllib.request.urlopen(w.base_url + "/model", timeout=5) as r:  # noqa: S310
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, None


def snapshot(w: WorkerProcess) -> dict[str, Any]:
    """What the dashboard reads, minus what moves by itself (uptime, wall-clock watermarks)."""
    stats = w.get("/worker/stats")[1]
    return {
        "stats": {k: v for k, v in stats.items() if k not in ("uptime_seconds", "watermarks")},
        "funnel": w.get("/journey/funnel")[1],
        "gaps": w.get("/journey/gaps?days=30")[1],
        "value": w.get("/journey/value")[1],
        "alerts": w.get("/alerts/recent")[1],
        "model": model_of(w),
        "kpis": w.get("/journey/kpis?days=30")[1],
        "uplift": w.get("/journey/uplift")[1],
    }


@pytest.fixture(scope="module")
def worker(worker_factory) -> WorkerProcess:
    # With a 1 s idle timeout the watermarks follow the wall clock at once, so stalls in the
    # past fire and the alerts panel has real alerts.
    w = worker_factory(JOURNEY_IDLE_TIMEOUT="1s")
    w.start()
    return w


def test_the_dashboard_shows_the_workers_live_numbers_in_a_real_browser(worker: WorkerProcess, tmp_path: Path):
    chromium_binary()  # fail fast, with the hint, when it is not installed
    w = worker
    now = int(time.time() * 1000)
    c = {name: f"dash-{name}-{w.settings.redis_prefix[-8:]}" for name in
         ("ann", "ben", "cat", "dev", "eve", "fin", "gus", "hal")}
    t_ann = now - 5 * DAY
    purchase = ev("ann6", c["ann"], "purchase", t_ann + 75 * MINUTE, value=40.0, channel="email")
    product_view = ev("cat2", c["cat"], "product_view", now - 50 * MINUTE)
    w.send(
        # purchase stage: bought five days ago, never onboarded (a stall alert)
        ev("ann1", c["ann"], "ad_click", t_ann, channel="search"),
        ev("ann2", c["ann"], "site_visit", t_ann + MINUTE),
        ev("ann3", c["ann"], "signup", t_ann + 10 * MINUTE),
        ev("ann4", c["ann"], "add_to_cart", t_ann + HOUR),
        ev("ann5", c["ann"], "checkout", t_ann + 70 * MINUTE),
        purchase,
        # awareness: ben has been silent three days (a drop-off and a stall), fin and gus are recent
        ev("ben1", c["ben"], "ad_click", now - 3 * DAY, channel="social"),
        ev("ben2", c["ben"], "site_visit", now - 3 * DAY + MINUTE),
        ev("fin1", c["fin"], "site_visit", now - 30 * MINUTE),
        ev("gus1", c["gus"], "site_visit", now - 10 * MINUTE),
        # consideration
        ev("cat1", c["cat"], "site_visit", now - HOUR),
        product_view,
        ev("cat3", c["cat"], "signup", now - 40 * MINUTE),
        ev("hal1", c["hal"], "site_visit", now - 2 * HOUR),
        ev("hal2", c["hal"], "signup", now - 110 * MINUTE),
        # retention
        ev("dev1", c["dev"], "site_visit", now - 4 * HOUR, channel="direct"),
        ev("dev2", c["dev"], "signup", now - 3 * HOUR),
        ev("dev3", c["dev"], "purchase", now - 2 * HOUR, value=25.0),
        ev("dev4", c["dev"], "onboarding_complete", now - HOUR),
        ev("dev5", c["dev"], "nps_survey", now - 50 * MINUTE, properties={"score": 10}),  # a promoter: NPS 100
        # advocacy
        ev("eve1", c["eve"], "site_visit", now - 3 * HOUR),
        ev("eve2", c["eve"], "review", now - 30 * MINUTE),
    )
    # anonymous visitors: ivy never signed up; jo browsed on a laptop, then signed up (one stitched history)
    ivy, laptop = f"dash-ivy-{w.settings.redis_prefix[-8:]}", f"dash-jo-laptop-{w.settings.redis_prefix[-8:]}"
    c["jo"] = f"dash-jo-{w.settings.redis_prefix[-8:]}"
    w.send({"event_id": "ivy1", "anonymous_id": ivy, "touchpoint": "site_visit", "timestamp": now - 20 * MINUTE},
           key=ivy.encode())
    w.send({"event_id": "jo1", "anonymous_id": laptop, "touchpoint": "ad_click", "timestamp": now - 2 * HOUR,
            "channel": "search"}, key=laptop.encode())
    w.send(ev("jo2", c["jo"], "signup", now - 100 * MINUTE, anonymous_id=laptop))
    w.send(purchase, product_view)  # redelivered: 2 duplicates
    w.send(b"this is not json", key=b"dash-bad")  # 2 dead letters
    w.send(ev("bad1", "dash-bad", "teleport", now))
    applied, expected_stages = 25, {"awareness": 3, "consideration": 3, "purchase": 1, "retention": 1, "advocacy": 1}
    expected_anonymous = {"awareness": 1, "consideration": 0, "purchase": 0, "retention": 0, "advocacy": 0}

    w.wait_drained()

    # Settled: the partitions went idle (1 s), their watermarks followed the clock and what was overdue
    # fired: ann's stall (no onboarding 5 days after buying) and ben's drop-off (3 days silent). Nothing
    # else is due for a day, so the numbers stay put while the browser reads them.
    def settled() -> dict[str, Any] | None:
        now = snapshot(w)
        kinds = {(a["customer"], a["type"]) for a in now["alerts"]["alerts"]}
        return now if {(alias[c["ann"]], "stalled_critical_path"), (alias[c["ben"]], "drop_off")} <= kinds else None

    from models.privacy import pseudonym

    alias = {cid: pseudonym(b"integration-test-pseudonym-key", cid) for cid in c.values()}
    before = wait_for(settled, 60, "ann's stall and ben's drop-off")
    stats = before["stats"]
    assert {s["stage"]: s["customers"] for s in before["funnel"]["stages"]} == expected_stages
    assert {s["stage"]: s["anonymous_visitors"] for s in before["funnel"]["stages"]} == expected_anonymous
    assert before["funnel"]["anonymous_histories_merged"] == 1

    # 1. The page as the browser renders it after several polls.
    dom = run_chromium(tmp_path / "profile-dom", "--dump-dom", w.base_url + "/").stdout
    after = snapshot(w)
    assert after == before, "the worker's numbers changed while the page was loading"
    page = parse(dom)
    found = page.found

    def value(testid: str) -> str:
        assert testid in found, f"no element with data-testid={testid!r} in the page"
        return found[testid]["attrs"].get("data-value", "")

    def number(testid: str) -> float | None:
        raw = value(testid)
        return None if raw == "" else float(raw)

    def text(testid: str) -> str:
        assert testid in found, f"no element with data-testid={testid!r} in the page"
        return " ".join(found[testid]["text"].split())

    assert "journey-tracker" in dom and "<script" in dom
    assert text("error-banner") == "", f"the page shows an error: {text('error-banner')}"
    assert text("last-updated") not in ("", "never")

    # the counters are the worker's
    assert int(value("applied")) == stats["applied"] == applied
    # consumed: the applied events, 2 duplicates, 2 dead letters, and jo's link and merge records
    assert int(value("consumed")) == stats["consumed"] == applied + 2 + 2 + 2
    assert stats["identity_records"] == 2
    assert int(value("duplicates")) == stats["duplicates"] == 2
    assert int(value("dead-letters")) == stats["dead_letters"] == 2
    assert text("applied") == f"{applied:,}"
    assert int(value("alerts-emitted")) == stats["alerts_emitted"]
    assert int(value("batches")) == stats["batches"]
    assert int(value("redis-errors")) == 0
    assert float(value("events-per-second")) == 0  # nothing flowed while the page polled
    by_type = stats["alerts_emitted_by_type"]
    open_stalls = by_type.get("stalled_critical_path:open", 0) - by_type.get("stalled_critical_path:resolved", 0)
    assert open_stalls >= 1  # ann never onboarded
    assert int(value("open-stalls")) == int(value("critical-open-stalls")) == open_stalls
    for reason, n in stats["dead_letters_by_reason"].items():
        assert int(value(f"dead-letters-{reason}")) == n
    assert set(stats["dead_letters_by_reason"]) == {"undecodable", "unknown_touchpoint"}

    # the funnel: every stage, with its count and its rates from the gap analysis
    for stage, n in expected_stages.items():
        assert int(value(f"funnel-{stage}")) == n
        assert int(value(f"funnel-anonymous-{stage}")) == expected_anonymous[stage]
    assert int(value("funnel-stitched")) == 1
    gap_stages = {s["stage"]: s for s in before["gaps"]["stages"]}
    for stage, g in gap_stages.items():
        assert int(value(f"funnel-reached-{stage}")) == g["reached"]
        assert number(f"funnel-drop-off-{stage}") == g["drop_off_rate"]
        assert text(f"funnel-conversion-{stage}") == (
            "–" if g["converted_to_next"] is None else f"{100 * g['converted_to_next']:.1f} %")

    # the critical path: each critical activity, expected vs actual, flagged when slower
    critical = [a for a in before["gaps"]["activities"] if a["critical"]]
    assert critical
    for a in critical:
        step = f"{a['from']}-{a['to']}"
        actual = a["actual_median_seconds"]
        assert number(f"critical-expected-{step}") == a["expected_seconds"]
        assert number(f"critical-actual-{step}") == actual
        slow = actual is not None and actual > a["expected_seconds"]
        assert found[f"critical-{step}"]["attrs"]["data-slow"] == ("true" if slow else "false")
    # ann's checkout -> purchase took 5 minutes: a real transition time, not a placeholder
    assert number("critical-actual-checkout-purchase") > 0

    # the alerts table: the worker's recent alerts, newest first, pseudonymised
    alerts = before["alerts"]["alerts"]
    assert "alerts-table" in found
    assert page.alert_rows == [a["alert_id"] for a in alerts]
    assert int(value("alerts-shown")) == len(alerts)
    table = text("alerts-table")
    assert {"stalled_critical_path", "drop_off"} <= {a["type"] for a in alerts}
    assert all(a["customer"] in table for a in alerts)
    for raw_id in [*c.values(), ivy, laptop]:
        assert raw_id not in dom, f"the raw customer id {raw_id} appears on the page"

    # value: the touchpoints with attributed value (linear), ann's 40.00 and dev's 25.00 included
    touchpoints = {t["touchpoint"]: t["linear"] for t in before["value"]["touchpoints"] if t["linear"] > 0}
    top = sorted(touchpoints.items(), key=lambda kv: -kv[1])[:8]
    assert top
    for tp, linear in top:
        assert float(value(f"value-{tp}")) == linear
    assert sum(touchpoints.values()) == pytest.approx(65.0)

    # the model panel: ann was scored after her purchase, dev after his and after onboarding; their 14-day
    # horizons are not over, so no label has been learned and the panel says so
    status, model = before["model"]
    assert status == 200 and model["roc_auc"] is None and model["predictions_pending"] == 3
    assert text("model-status") == "model not trained yet: no labels so far (3 predictions waiting)"

    # the KPIs: ann and dev bought (once each), dev answered NPS 10; ann came by search (her first touch), dev direct
    kpis = before["kpis"]
    assert (kpis["customers_buying"], kpis["repeat_buyers"], kpis["nps"]["overall"]["nps"]) == (2, 0, 100.0)
    assert number("kpi-repeat-rate") == 0.0 and text("kpi-repeat-rate") == "0.0 %"
    assert number("kpi-nps") == 100.0 and text("kpi-nps") == "100"
    assert value("kpi-csat") == "" and text("kpi-csat") == "–"  # no CSAT answer
    assert int(value("acq-search")) == 1 and int(value("acq-direct")) == 1 and "acq-email" not in found
    assert value("acq-search-cac") == ""  # no spend recorded: no CAC
    # what alerts are worth: ann's stall and ben's drop-off are being measured, none settled yet
    assert all(r["treated"] + r["held_out"] == 0 for r in before["uplift"]["alert_types"])
    assert text("uplift").endswith("no alert measured yet")

    # watermarks: one row per partition the worker owns
    partitions = sorted(w.get("/worker/stats")[1]["watermarks"])
    assert partitions
    for p in partitions:
        assert value(f"watermark-lag-{p}") != ""

    # 2. A screenshot, for people (and reviewers) to look at.
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    run_chromium(tmp_path / "profile-shot", f"--screenshot={SCREENSHOT}", "--window-size=1400,1000", w.base_url + "/")
    assert SCREENSHOT.exists(), "chromium wrote no screenshot"
    png = SCREENSHOT.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 30_000, f"the screenshot is only {len(png)} bytes: probably a blank page"
