"""MBG/NBD and the calibration / holdout choice between it and BG/NBD.

The MBG/NBD formulas are checked against values derived independently of ``models/clv.py``:
the ``lifetimes`` package's ``ModifiedBetaGeoFitter`` (used in tests only), a Monte-Carlo
simulation of the MBG/NBD process (parameters recovered, conditional expectations against the
simulated future), and numerical integration of the individual likelihood. The holdout split
is checked on a hand-made history whose counts are worked out by hand below.
"""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
from scipy import integrate, stats

from models.clv import (
    BGNBDParams,
    Candidate,
    ClvKind,
    FitResult,
    HoldoutError,
    HoldoutSplit,
    OrderHistory,
    OrderSummary,
    best_candidate,
    calibration_holdout,
    compare_kinds,
    expected_purchases,
    fit,
    fit_mbgnbd,
    mbgnbd_expected_purchases,
    mbgnbd_log_likelihood,
    mbgnbd_p_alive,
    p_alive,
    predict,
    split_at,
)
from models.durations import DAY_MS
from models.propensity import Example
from streams.service.clv import ClvModels
from streams.service.learner import replay, validate_kinds
from streams.state.memory_store import MemoryStore

TRUE = BGNBDParams(r=0.3, alpha=6.0, a=0.7, b=2.2)
GRID = [(0, 0.0, 38.86), (0, 0.0, 365.0), (1, 5.0, 10.0), (2, 30.43, 38.86), (7, 180.0, 365.0), (40, 300.0, 310.0)]
PARAMS = [BGNBDParams(0.243, 4.414, 0.793, 2.426), TRUE, BGNBDParams(2.0, 30.0, 3.5, 9.0)]


# --------------------------------------------------------------------------- against lifetimes


@pytest.fixture(scope="module")
def lifetimes_mbg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lifetimes = pytest.importorskip("lifetimes")
        return lifetimes.ModifiedBetaGeoFitter()


@pytest.mark.parametrize("params", PARAMS)
def test_mbgnbd_matches_lifetimes(lifetimes_mbg, params: BGNBDParams):
    import pandas as pd

    x, t_x, T = (np.array(v, dtype=float) for v in zip(*GRID, strict=True))
    ref = lifetimes_mbg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.params_ = pd.Series({"r": params.r, "alpha": params.alpha, "a": params.a, "b": params.b})
        alive = ref.conditional_probability_alive(x, t_x, T)
        expected = ref.conditional_expected_number_of_purchases_up_to_time(90.0, x, t_x, T)
        lls = [-ref._negative_log_likelihood(np.log([params.r, params.alpha, params.a, params.b]), np.array([xi]),
                                             np.array([ti]), np.array([Ti]), np.array([1.0]), 0.0)
               for xi, ti, Ti in zip(x, t_x, T, strict=True)]
    np.testing.assert_allclose(mbgnbd_p_alive(params, x, t_x, T), alive, rtol=1e-10)
    np.testing.assert_allclose(mbgnbd_expected_purchases(params, 90.0, x, t_x, T), expected, rtol=1e-8)
    np.testing.assert_allclose(mbgnbd_log_likelihood(params, x, t_x, T), lls, rtol=1e-10)


def test_mbgnbd_fit_matches_lifetimes_fit(lifetimes_mbg):
    rng = np.random.default_rng(3)
    x, t_x, T, _ = simulate_mbg(rng, 2000, rng.uniform(60, 365, 2000), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lifetimes_mbg.fit(x, t_x, T)
    mine, _, converged = fit_mbgnbd(x, t_x, T)
    assert converged
    for name in ("r", "alpha", "a", "b"):
        assert getattr(mine, name) == pytest.approx(lifetimes_mbg.params_[name], rel=2e-3), name


# --------------------------------------------------------------------------- against simulation and integration


def simulate_mbg(rng: np.random.Generator, n: int, T: np.ndarray, holdout: float):
    """MBG/NBD: λ ~ Gamma(r, rate α), p ~ Beta(a, b); right after *every* purchase, the first one
    included, the customer drops out with probability p; while alive purchases are Poisson(λ).
    Returns calibration (x, t_x, T) and purchases in (T, T + holdout]."""
    lam = rng.gamma(TRUE.r, 1.0 / TRUE.alpha, n)
    drop = rng.beta(TRUE.a, TRUE.b, n)
    x = np.zeros(n, dtype=np.int64)
    t_x = np.zeros(n)
    future = np.zeros(n, dtype=np.int64)
    clock = np.zeros(n)
    end = T + holdout
    active = np.arange(n)[rng.random(n) >= drop]  # the dropout after the first purchase
    while active.size:
        clock[active] += rng.exponential(1.0 / lam[active])
        active = active[clock[active] <= end[active]]
        t = clock[active]
        cal = t <= T[active]
        x[active[cal]] += 1
        t_x[active[cal]] = t[cal]
        future[active[~cal]] += 1
        active = active[rng.random(active.size) >= drop[active]]
    return x.astype(float), t_x, T, future


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(20_250_101)
    n = 6000
    return simulate_mbg(rng, n, rng.uniform(60.0, 365.0, n), 120.0)


def test_fit_recovers_simulated_mbgnbd_parameters(population):
    x, t_x, T, _ = population
    est, _, converged = fit_mbgnbd(x, t_x, T)
    assert converged
    # 6,000 customers: the sampling error of each parameter is a few percent; 20 % is far outside it
    for name in ("r", "alpha", "a", "b"):
        assert getattr(est, name) == pytest.approx(getattr(TRUE, name), rel=0.2), name


def test_conditional_expectation_predicts_the_simulated_future(population):
    x, t_x, T, future = population
    predicted = mbgnbd_expected_purchases(TRUE, 120.0, x, t_x, T)
    # The sum of conditional expectations is the expected total; its standard error is about
    # sqrt(sum of variances) < sqrt(sum(future) * 3): allow 4 of those.
    se = math.sqrt(3 * future.sum())
    assert abs(predicted.sum() - future.sum()) < 4 * se
    # and by group, the customers who never bought again vs those who did
    for group in (x == 0, x > 0):
        assert predicted[group].sum() == pytest.approx(future[group].sum(), rel=0.12)


@pytest.mark.parametrize(("x", "t_x", "T"), [(0, 0.0, 12.0), (1, 3.0, 12.0), (4, 9.5, 12.0)])
def test_mbgnbd_likelihood_equals_integrating_the_individual_likelihood(x: int, t_x: float, T: float):
    p = BGNBDParams(r=2.0, alpha=3.0, a=2.0, b=3.0)  # no density spike at 0 to integrate

    def individual(lam: float, q: float) -> float:
        # alive through T after x repeats (survived x + 1 dropout chances), or dropped right after the x-th
        alive = (1 - q) ** (x + 1) * lam**x * math.exp(-lam * T)
        dropped = q * (1 - q) ** x * lam**x * math.exp(-lam * t_x)
        return (alive + dropped) * stats.gamma.pdf(lam, p.r, scale=1 / p.alpha) * stats.beta.pdf(q, p.a, p.b)

    value, _ = integrate.dblquad(individual, 0, 1, 0, 30, epsabs=1e-13, epsrel=1e-10)
    assert float(mbgnbd_log_likelihood(p, x, t_x, T)) == pytest.approx(math.log(value), abs=1e-6)


def test_a_customer_who_never_bought_again_may_have_left_under_mbgnbd_only():
    assert p_alive(TRUE, 0, 0.0, 200.0) == 1.0
    assert 0 < mbgnbd_p_alive(TRUE, 0, 0.0, 200.0) < mbgnbd_p_alive(TRUE, 0, 0.0, 10.0) < 1


def test_the_fit_and_predict_carry_the_kind():
    rng = np.random.default_rng(5)
    x, t_x, T, _ = simulate_mbg(rng, 800, rng.uniform(60, 365, 800), 0.0)
    bg, mbg = fit(x, t_x, T), fit(x, t_x, T, kind=ClvKind.MBGNBD)
    assert isinstance(bg, FitResult) and isinstance(mbg, FitResult)
    assert bg.kind is ClvKind.BGNBD and mbg.kind is ClvKind.MBGNBD and bg.bgnbd != mbg.bgnbd
    pb = predict(bg, x=2, t_x=50, T=100, m=10.0, horizon_days=60, margin=0.3, annual_discount_rate=0.0)
    pm = predict(mbg, x=2, t_x=50, T=100, m=10.0, horizon_days=60, margin=0.3, annual_discount_rate=0.0)
    assert pb.expected_purchases == pytest.approx(float(expected_purchases(bg.bgnbd, 60, 2, 50, 100)), rel=1e-9)
    assert pm.expected_purchases == pytest.approx(float(mbgnbd_expected_purchases(mbg.bgnbd, 60, 2, 50, 100)),
                                                  rel=1e-9)


# --------------------------------------------------------------------------- the split, by hand


def day(d: float) -> int:
    return int(d * DAY_MS)


HAND = [
    # A: first order 06:00 day 1, another on day 5, two on day 9 (one the split day itself), one on day 14
    OrderHistory(OrderSummary(5, day(1.25), day(14.5), 0, 0), {1: 1, 5: 1, 9: 2, 14: 1}),
    # B: two orders on day 2 (the first at 12:00), none later
    OrderHistory(OrderSummary(2, day(2.5), day(2.75), 0, 0), {2: 2}),
    # C: first order on day 9, the split day: not in the calibration cohort
    OrderHistory(OrderSummary(2, day(9.1), day(12.0), 0, 0), {9: 1, 12: 1}),
    # D: a single order on day 3 and one in the holdout on day 20 (after as_of: not counted)
    OrderHistory(OrderSummary(2, day(3.0), day(20.0), 0, 0), {3: 1, 20: 1}),
    # E: one order on day 0 and one at 18:00 on day 8 (the calibration's last day), none later
    OrderHistory(OrderSummary(2, day(0.0), day(8.75), 0, 0), {0: 1, 8: 1}),
]


def test_the_split_counts_each_customers_calibration_and_holdout_purchases():
    s = calibration_holdout(HAND, day(9), day(15))
    # In the cohort (first order before day 9): A, B, D, E (C started on the split day).
    # A: calibration orders on days 1 and 5 -> x = 1, last at midday of day 5 -> t_x = 5.5 - 1.25 = 4.25,
    #    T = 9 - 1.25 = 7.75; holdout: 2 on day 9 + 1 on day 14 = 3.
    # B: 2 orders, both in calibration -> x = 1, t_x = 2.75 - 2.5 = 0.25 (exact: no holdout order), T = 6.5, 0.
    # D: 1 calibration order -> x = 0, t_x = 0, T = 6; the day-20 order is after as_of (day 15): 0.
    # E: x = 1, t_x = 8.75 exactly, T = 9; holdout 0.
    assert s.x.tolist() == [1, 1, 0, 1]
    assert s.t_x.tolist() == [4.25, 0.25, 0.0, 8.75]
    assert s.T.tolist() == [7.75, 6.5, 6.0, 9.0]
    assert s.actual.tolist() == [3, 0, 0, 0]
    assert s.holdout_days == 6.0 and s.estimated == 0


def test_a_calibration_order_older_than_the_days_kept_is_estimated():
    # 3 orders: day 0, day 10 (no longer kept), and day 400 (after the split at 390): x = 1 in calibration;
    # the newest day kept is 400, so anything before 400 - 365 = 35 may be gone: the last calibration
    # order is taken at the latest it could be, midday of day 35.
    h = [OrderHistory(OrderSummary(3, day(0), day(400), 0, 0), {400: 1})]
    s = calibration_holdout(h, day(390), day(401))
    assert (s.x.tolist(), s.t_x.tolist(), s.actual.tolist(), s.estimated) == ([1.0], [35.5], [1.0], 1)


def test_where_the_split_falls_and_what_is_refused():
    assert split_at(day(0), day(100)) == day(75)
    assert split_at(day(10.5), day(50.2), holdout_days=7) == day(43)
    assert split_at(day(0), day(5000)) == day(5000 - 364)
    with pytest.raises(ValueError, match="1 to 364 days"):
        split_at(0, day(1000), holdout_days=365)
    with pytest.raises(ValueError, match="before the first order"):
        split_at(day(10), day(20), holdout_days=15)
    with pytest.raises(ValueError, match="start of a day"):
        calibration_holdout(HAND, day(9.5), day(15))


def test_the_candidate_with_the_lowest_mae_wins_and_unfittable_ones_are_reported(population):
    x, t_x, T, future = population
    split = HoldoutSplit(day(400), day(520), x, t_x, T, future.astype(float))
    candidates = compare_kinds(split)
    assert [c.kind for c in candidates] == [ClvKind.BGNBD, ClvKind.MBGNBD]
    assert all(c.error is not None and math.isfinite(c.error.mae) for c in candidates)
    best = best_candidate(candidates)
    assert best is not None and best.error.mae == min(c.error.mae for c in candidates if c.error)
    assert candidates[0].error.actual_total == int(future.sum())
    few = HoldoutSplit(0, DAY_MS, x[:50], t_x[:50], T[:50], future[:50].astype(float))
    assert all(c.error is None and "fewer than the 200" in (c.reason or "") for c in compare_kinds(few))
    assert best_candidate(compare_kinds(few)) is None
    assert best_candidate([Candidate(ClvKind.BGNBD, None, HoldoutError(1.0, 2.0, 0, 0, 0))]).kind is ClvKind.BGNBD


# --------------------------------------------------------------------------- the service: store, choose, keep


class DictClvStore:
    def __init__(self) -> None:
        self.records: list[dict] = []

    async def current(self):
        return self.records[-1] if self.records else None

    async def add(self, record):
        self.records.append({**record, "version": len(self.records) + 1})
        return len(self.records)


class Histories(MemoryStore):
    """The in-memory store's order queries over a given set of histories (clock at ``as_of``)."""

    def __init__(self, histories: list[OrderHistory], as_of_ms: int) -> None:
        super().__init__()
        self.histories, self.as_of_ms = histories, as_of_ms

    async def order_summaries(self):
        return [h.summary for h in self.histories]

    async def order_histories(self):
        return self.histories

    async def clocks(self):
        from models.watermark import Clock

        return {0: Clock(self.as_of_ms, self.as_of_ms)}


def histories_from(x, t_x, T, future, as_of_day: float, holdout: float) -> list[OrderHistory]:
    """Order histories whose calibration is (x, t_x, T) as of ``as_of_day - holdout`` and with ``future``
    orders spread over the holdout (days as keys)."""
    out = []
    split = as_of_day - holdout
    rng = random.Random(1)
    for xi, txi, Ti, fi in zip(x, t_x, T, future, strict=True):
        first = split - Ti
        days: dict[int, int] = {}
        times = [first] + ([first + txi] if xi else []) + [first + rng.uniform(0, txi) for _ in range(int(xi) - 1)]
        times += [split + rng.uniform(0, holdout - 1) for _ in range(int(fi))]
        for t in times:
            days[int(t)] = days.get(int(t), 0) + 1
        out.append(OrderHistory(OrderSummary(len(times), day(first), day(max(times)), 100 * len(times), 100), days))
    return out


async def test_validate_stores_the_winner_with_its_selection_and_refits_keep_it(population):
    x, t_x, T, future = population
    queries = Histories(histories_from(x[:1500], t_x[:1500], T[:1500], future[:1500], 1000.0, 120.0), day(1000))
    store = DictClvStore()
    models = ClvModels(store, queries)
    plain = await models.refit()
    assert plain["model"] == "fitted" and plain["kind"] == "bgnbd" and plain["selection"] is None
    chosen = await models.validate(holdout_days=100)
    sel = chosen["selection"]
    assert chosen["model"] == "fitted" and sel["split"] == "1972-06-19T00:00:00.000Z" and sel["holdout_days"] == 100.0
    maes = {c["kind"]: c["mae"] for c in sel["candidates"]}
    assert set(maes) == {"bgnbd", "mbgnbd"} and sel["chosen"] == min(maes, key=maes.__getitem__)
    assert chosen["kind"] == sel["chosen"] and models.current is not None
    assert models.current.fit.kind == sel["chosen"] and models.meta["selection"] == sel
    # a later refit (the leader's periodic one, a plain `journey clv fit`) keeps the chosen kind and says why
    again = await models.refit()
    assert again["kind"] == sel["chosen"] and again["selection"] == sel and again["version"] == chosen["version"] + 1


async def test_validate_says_why_not_without_data():
    empty = ClvModels(DictClvStore(), Histories([], 0))
    assert (await empty.validate())["reason"] == "no customer has purchased yet"
    few = ClvModels(DictClvStore(), Histories(HAND, day(15)))
    result = await few.validate()
    assert result["model"] == "insufficient data" and "fewer than the 200" in result["reason"]
    short = await few.validate(holdout_days=20)
    assert short["model"] == "insufficient data" and "before the first order" in short["reason"]


async def test_the_memory_store_returns_each_buyers_order_days():
    from pathlib import Path

    import orjson

    from streams.journey_file import load_journey_map
    from tests.unit.support import Harness

    journey = load_journey_map(Path(__file__).parents[2] / "streams" / "default_journey.yaml")
    h = Harness(journey)
    events = [("p1", 1.25), ("p2", 5.5), ("p3", 9.1), ("p4", 9.9)]
    await h.batch(*(orjson.dumps({"event_id": e, "customer_id": "ann", "touchpoint": "purchase",
                                  "timestamp": day(1000 + d), "value": 10.0}) for e, d in events))
    (history,) = await h.store.order_histories()
    assert history.summary.orders == 4 and dict(history.order_days) == {1001: 1, 1005: 1, 1009: 2}


# --------------------------------------------------------------------------- propensity kinds, offline


def examples(n: int, seed: int) -> list[Example]:
    """A planted rule: x1 > 0.5 upgrades 70 % of the time, others 10 %; labels settle 14 days later."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        f = {"x1": rng.random(), "x2": rng.random()}
        y = rng.random() < (0.7 if f["x1"] > 0.5 else 0.1)
        out.append(Example(i * 3_600_000 + 14 * DAY_MS, i * 3_600_000 + 14 * DAY_MS, i * 3_600_000, y, 0.5, False,
                           0, f))
    return out


def test_each_kind_is_replayed_and_the_best_is_named():
    body = validate_kinds(examples(1500, 1), running="logistic", window=500)
    by_kind = {c["kind"]: c for c in body["candidates"]}
    assert set(by_kind) == {"logistic", "tree"} and body["examples"] == 1500
    assert all(c["roc_auc"] > 0.7 for c in by_kind.values())  # the planted rule is found (oracle: 0.8)
    assert body["best"] == max(by_kind, key=lambda k: by_kind[k]["roc_auc"])
    assert body["recorded_scores"]["roc_auc"] == 0.5  # the recorded scores were all 0.5
    assert ("JOURNEY_MODEL_KIND=" in body["advice"]) == (body["best"] != "logistic")


def test_a_model_never_scores_an_example_it_has_learned():
    # An untrained logistic model says 0.5 (log loss ln 2); one that learned a positive says more.
    # Settled at the moment it is scored: predicted before it is learned.
    e = Example(0, 0, 0, True, 0.5, False, 0, {"x1": 1.0})
    assert replay([e], "logistic")["log_loss"] == pytest.approx(math.log(2))
    # b is scored (at 5) before a's label settles (at 10): neither prediction knows a label
    a = Example(10, 10, 0, True, 0.5, False, 0, {"x1": 1.0})
    b = Example(20, 20, 5, True, 0.5, False, 0, {"x1": 1.0})
    assert replay([a, b], "logistic")["log_loss"] == pytest.approx(math.log(2))
    # c is scored (at 25) after both settled: it is predicted by a model that learned them
    c = Example(30, 30, 25, True, 0.5, False, 0, {"x1": 1.0})
    assert replay([a, b, c], "logistic")["log_loss"] < math.log(2)
