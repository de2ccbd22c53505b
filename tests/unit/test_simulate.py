"""The traffic simulator: reproducible, contract-abiding, with the faults and signal it promises."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.devtools.simulate import SimCustomer, SimRecord, _timestamp, simulate

NOW = 1_795_000_000_000  # 2026-11-19
DAY = 86_400_000
STAGE = {
    "ad_click": "awareness",
    "site_visit": "awareness",
    "signup": "consideration",
    "product_view": "consideration",
    "add_to_cart": "purchase",
    "checkout": "purchase",
    "purchase": "purchase",
    "onboarding_complete": "retention",
    "upgrade": "retention",
    "refund": "retention",
    "review": "advocacy",
}
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
MAX_PAYLOAD = 16_384


def contract(raw: bytes, now_ms: int) -> tuple[dict[str, object] | None, str | None]:
    """The event contract, independently of the worker's decoder: (doc, None) or (None, what is wrong)."""
    if len(raw) > MAX_PAYLOAD:
        return None, "payload too large"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, "not UTF-8 JSON"
    if not isinstance(doc, dict):
        return None, "not an object"
    for name in ("event_id", "customer_id", "touchpoint"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            return None, f"{name} missing or not a string"
    if doc["touchpoint"] not in STAGE:
        return None, "unknown touchpoint"
    ts = doc.get("timestamp")
    if isinstance(ts, int) and not isinstance(ts, bool):
        ms = ts
    elif isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            return None, "timestamp not ISO-8601"
        if parsed.tzinfo is None:
            return None, "timestamp without zone"
        ms = (parsed.replace(tzinfo=None) - parsed.utcoffset() - datetime(1970, 1, 1)) // timedelta(milliseconds=1)
    else:
        return None, "timestamp missing or wrong type"
    if not 946_684_800_000 <= ms <= 7_258_118_400_000:
        return None, "timestamp out of range"
    if ms > now_ms:
        return None, "timestamp in the future"
    if "value" in doc:
        value = doc["value"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, "value not a number"
        if value < 0:
            return None, "negative value"
    for name in ("channel", "currency"):
        if name in doc and not isinstance(doc[name], str):
            return None, f"{name} not a string"
    if "properties" in doc and not isinstance(doc["properties"], dict):
        return None, "properties not an object"
    doc["_ms"] = ms
    return doc, None


@pytest.fixture(scope="module")
def sim() -> tuple[list[SimCustomer], list[SimRecord]]:
    truth, records = simulate(2000, seed=7, now_ms=NOW)
    return truth, list(records)


@pytest.fixture(scope="module")
def big_sims() -> dict[bool, list[SimCustomer]]:
    """Many customers over a long window, so plenty of journeys reach retention."""
    return {signal: simulate(20_000, seed=11, now_ms=NOW, days=60, upsell_signal=signal)[0] for signal in (True, False)}


def test_same_seed_same_bytes(sim):
    truth, records = sim
    truth2, records2 = simulate(2000, seed=7, now_ms=NOW)
    assert truth2 == truth
    assert list(records2) == records


def test_different_seed_differs(sim):
    truth, records = sim
    truth2, records2 = simulate(2000, seed=8, now_ms=NOW)
    assert truth2 != truth
    assert [r.value for r in records2] != [r.value for r in records]


def test_nothing_after_now_and_journeys_start_in_window(sim):
    truth, records = sim
    assert max(r.event_time_ms for r in records) <= NOW
    starts = [c.touchpoints[0][1] for c in truth]
    assert min(starts) >= NOW - 14 * DAY
    assert all(t <= NOW for c in truth for _, t in c.touchpoints)
    # Spread over the whole window, not bunched up.
    assert min(starts) < NOW - 13 * DAY and max(starts) > NOW - DAY


def test_customers_and_touchpoints_are_well_formed(sim):
    truth, _ = sim
    assert [c.customer_id for c in truth] == [f"c{i:06d}" for i in range(2000)]
    for c in truth:
        assert c.touchpoints, c
        assert all(tp in STAGE for tp, _ in c.touchpoints)
        times = [t for _, t in c.touchpoints]
        assert times == sorted(times)
        assert STAGE[c.touchpoints[0][0]] == "awareness"
        assert c.upgraded == any(tp == "upgrade" for tp, _ in c.touchpoints)
        if c.dropped_after is not None:
            assert c.dropped_after == max((STAGE[tp] for tp, _ in c.touchpoints), key=STAGES.index)


def test_shares_roughly_match_defaults(sim):
    _, records = sim
    kinds = collections.Counter(r.kind for r in records)
    n = len(records)
    assert n > 8000
    assert kinds["duplicate"] / n == pytest.approx(0.01, rel=0.35)
    assert kinds["late"] / n == pytest.approx(0.02, rel=0.3)
    assert kinds["malformed"] / n == pytest.approx(0.005, rel=0.4)


def test_shares_follow_the_parameters():
    _, records = simulate(1000, seed=3, now_ms=NOW, duplicate_share=0.05, late_share=0.1, malformed_share=0.04)
    kinds = collections.Counter(r.kind for r in records)
    n = sum(kinds.values())
    assert kinds["duplicate"] / n == pytest.approx(0.05, rel=0.2)
    assert kinds["late"] / n == pytest.approx(0.1, rel=0.2)
    assert kinds["malformed"] / n == pytest.approx(0.04, rel=0.25)
    _, clean = simulate(300, seed=3, now_ms=NOW, duplicate_share=0, late_share=0, malformed_share=0)
    assert {r.kind for r in clean} == {"event"}


def test_valid_records_satisfy_the_contract(sim):
    _, records = sim
    ids = collections.Counter()
    for r in records:
        if r.kind == "malformed":
            continue
        doc, problem = contract(r.value, NOW)
        assert problem is None, (problem, r)
        assert doc is not None
        assert r.key == doc["customer_id"].encode()
        assert doc["_ms"] == r.event_time_ms
        if doc["touchpoint"] in ("purchase", "upgrade", "refund"):
            assert doc["value"] >= 0 and doc["currency"] == "EUR"
        if "channel" in doc:
            assert doc["channel"] in {"search", "social", "email", "display", "direct", "referral"}
        if r.kind != "duplicate":
            ids[doc["event_id"]] += 1
    assert ids and max(ids.values()) == 1  # event ids are unique across distinct events


def test_timestamps_come_in_every_format(sim):
    _, records = sim
    shapes = collections.Counter()
    for r in records:
        if r.kind != "malformed":
            ts = orjson.loads(r.value)["timestamp"]
            shapes["epoch" if isinstance(ts, int) else ts[23:]] += 1
    assert {"epoch", "Z", "+00:00", "+02:00"} <= set(shapes)


def test_malformed_records_break_the_contract_in_every_way(sim):
    _, records = sim
    problems = collections.Counter()
    for r in records:
        if r.kind == "malformed":
            doc, problem = contract(r.value, NOW)
            assert problem is not None, r
            problems[problem] += 1
    assert len(problems) >= 9, problems


def test_malformed_records_are_rejected_by_the_worker_decoder(sim):
    events = pytest.importorskip("models.events")
    _, records = sim
    reasons = collections.Counter()
    for r in records:
        result = events.decode_event(r.value, touchpoints=STAGE.keys(), now_ms=NOW)
        if r.kind == "malformed":
            assert isinstance(result, events.Invalid), r
            reasons[result.reason] += 1
        else:
            assert isinstance(result, events.TouchpointEvent), (result, r)
            assert result.ts_ms == r.event_time_ms
    assert len(reasons) >= 8, reasons


def test_published_events_are_the_ground_truth(sim):
    truth, records = sim
    published = collections.defaultdict(list)
    for r in records:
        if r.kind in ("event", "late"):
            doc = orjson.loads(r.value)
            published[doc["customer_id"]].append((doc["touchpoint"], r.event_time_ms))
    for c in truth:
        assert sorted(published[c.customer_id], key=lambda e: e[1]) == list(c.touchpoints)


def test_records_are_interleaved_in_event_time_order(sim):
    _, records = sim
    events = [r.event_time_ms for r in records if r.kind == "event"]
    assert events == sorted(events)
    keys = [r.key for r in records[:200]]
    assert len(set(keys)) > 50  # many customers interleaved, not one journey after another


def test_duplicates_repeat_earlier_bytes_exactly(sim):
    _, records = sim
    seen: set[bytes] = set()
    dups = 0
    for r in records:
        if r.kind == "duplicate":
            assert r.value in seen
            dups += 1
        elif r.kind != "malformed":
            seen.add(r.value)
    assert dups > 0


def test_late_records_are_out_of_order(sim):
    _, records = sim
    newest = -1
    late = 0
    for r in records:
        if r.kind == "late":
            assert r.event_time_ms < newest
            assert newest - r.event_time_ms <= 8 * 3_600_000 + DAY  # minutes to hours, not weeks
            late += 1
        newest = max(newest, r.event_time_ms)
    assert late > 0


def test_refunds_never_exceed_a_previous_purchase(sim):
    _, records = sim
    purchases = collections.defaultdict(list)
    refunds = 0
    for r in sorted((r for r in records if r.kind in ("event", "late")), key=lambda r: r.event_time_ms):
        doc = orjson.loads(r.value)
        if doc["touchpoint"] == "purchase":
            purchases[doc["customer_id"]].append(doc["value"])
        elif doc["touchpoint"] == "refund":
            refunds += 1
            assert purchases[doc["customer_id"]] and doc["value"] <= max(purchases[doc["customer_id"]])
    assert refunds > 0


def test_funnel_narrows(big_sims):
    truth = big_sims[True]
    reached = collections.Counter()
    for c in truth:
        stages = {STAGE[tp] for tp, _ in c.touchpoints}
        reached.update(stages)
    assert reached["awareness"] == len(truth)
    assert reached["awareness"] > reached["consideration"] > reached["purchase"] > reached["advocacy"] > 0
    assert 0.4 <= reached["consideration"] / reached["awareness"] <= 0.6
    assert reached["purchase"] / reached["awareness"] < 0.35
    dropped = collections.Counter(c.dropped_after for c in truth)
    assert dropped["awareness"] > dropped["consideration"] > dropped["retention"]


def _upgrade_rates(truth: list[SimCustomer]) -> tuple[float, float, int, int]:
    """Upgrade rate of onboarded customers with and without the planted trait."""
    counts = {True: [0, 0], False: [0, 0]}
    for c in truth:
        first: dict[str, int] = {}
        for tp, t in c.touchpoints:
            first.setdefault(tp, t)
        if "onboarding_complete" not in first:
            continue
        views = sum(1 for tp, _ in c.touchpoints if tp == "product_view")
        trait = views >= 3 or first["onboarding_complete"] - first["purchase"] <= DAY
        counts[trait][0] += 1
        counts[trait][1] += c.upgraded
    (n_t, up_t), (n_n, up_n) = counts[True], counts[False]
    return up_t / n_t, up_n / n_n, n_t, n_n


def test_upsell_signal_is_planted(big_sims):
    with_trait, without, n_t, n_n = _upgrade_rates(big_sims[True])
    assert n_t > 200 and n_n > 200
    assert with_trait > 2.5 * without


def test_no_upsell_signal_when_disabled(big_sims):
    with_trait, without, n_t, n_n = _upgrade_rates(big_sims[False])
    assert n_t > 200 and n_n > 200
    assert 0.6 < with_trait / without < 1.6


def test_no_customers_no_records():
    truth, records = simulate(0, seed=1, now_ms=NOW)
    assert truth == [] and list(records) == []


@pytest.mark.parametrize(
    "kw",
    [{"duplicate_share": 1.0}, {"late_share": -0.1}, {"duplicate_share": 0.6, "malformed_share": 0.5}, {"days": 0}],
)
def test_bad_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        simulate(10, seed=1, now_ms=NOW, **kw)


@given(st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000), st.integers(min_value=0, max_value=4))
def test_timestamps_are_exact_to_the_millisecond(ms, fmt):
    ts = _timestamp(ms, fmt)
    if isinstance(ts, int):
        assert ts == ms
    else:
        parsed = datetime.fromisoformat(ts)
        assert parsed.tzinfo is not None
        utc = parsed.replace(tzinfo=None) - parsed.utcoffset()
        assert (utc - datetime(1970, 1, 1)) // timedelta(milliseconds=1) == ms
