"""Predictive CLV: the fits recover known parameters, the closed forms match simulation.

Evidence comes from a simulator of the models' own story (below), seeded so every run
sees the same draws, plus direct numerical integration of the likelihoods and, when the
optional ``lifetimes`` package is installed, a comparison against it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import betaln

from models.clv import (
    MIN_CUSTOMERS,
    MIN_REPEAT_CUSTOMERS,
    BGNBDParams,
    FitResult,
    GammaGammaParams,
    InsufficientData,
    Prediction,
    bgnbd_log_likelihood,
    discounted_clv,
    expected_purchases,
    expected_purchases_new,
    expected_spend,
    fit,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    p_alive,
    predict,
)

# Ground truth, in days: on average 1 purchase per 16 days while alive, ~24% chance of
# dropping out after each repeat purchase; spend 6 * 15 / 3 = 30 per order on average.
TRUE_BG = BGNBDParams(r=0.25, alpha=4.0, a=0.8, b=2.5)
TRUE_GG = GammaGammaParams(p=6.0, q=4.0, v=15.0)
HOLDOUT_DAYS = 180.0


@dataclass(frozen=True)
class Population:
    x: np.ndarray  # repeat purchases in (0, T]
    t_x: np.ndarray
    T: np.ndarray
    m: np.ndarray  # mean value of the repeat purchases (0 when x == 0)
    future: np.ndarray  # purchases in (T, T + holdout]
    alive_at_T: np.ndarray
    nu: np.ndarray  # each customer's spend rate: their true mean order value is p / nu


def simulate(
    rng: np.random.Generator,
    n: int,
    T: float | np.ndarray,
    holdout: float = 0.0,
    bg: BGNBDParams = TRUE_BG,
    gg: GammaGammaParams = TRUE_GG,
) -> Population:
    """Customers who made a first purchase at 0, observed until T and then for `holdout` more days.

    BG/NBD: λ ~ Gamma(r, rate α), dropout probability p ~ Beta(a, b); while alive, purchases
    are Poisson(λ); right after each repeat purchase the customer drops out with probability p.
    Gamma-Gamma: ν ~ Gamma(q, rate γ), each transaction ~ Gamma(p, rate ν).
    """
    lam = rng.gamma(bg.r, 1.0 / bg.alpha, n)
    drop = rng.beta(bg.a, bg.b, n)
    T = np.broadcast_to(np.asarray(T, dtype=float), (n,)).copy()
    end = T + holdout
    x = np.zeros(n, dtype=np.int64)
    t_x = np.zeros(n)
    future = np.zeros(n, dtype=np.int64)
    died_at = np.full(n, np.inf)
    clock = np.zeros(n)
    # All customers advance one purchase at a time, in lockstep; a customer leaves the loop
    # when their next purchase would fall after the end or when they drop out.
    active = np.arange(n)
    while active.size:
        clock[active] += rng.exponential(1.0 / lam[active])
        active = active[clock[active] <= end[active]]
        t = clock[active]
        in_calibration = t <= T[active]
        x[active[in_calibration]] += 1
        t_x[active[in_calibration]] = t[in_calibration]
        future[active[~in_calibration]] += 1
        dies = rng.random(active.size) < drop[active]
        died_at[active[dies]] = clock[active[dies]]
        active = active[~dies]
    nu = rng.gamma(gg.q, 1.0 / gg.v, n)
    m = np.zeros(n)
    rep = x > 0
    # The mean of x iid Gamma(p, rate ν) transactions is exactly Gamma(p x, rate x ν):
    # one draw per customer instead of one per transaction.
    m[rep] = rng.gamma(gg.p * x[rep], 1.0 / (x[rep] * nu[rep]))
    return Population(x, t_x, T, m, future, died_at > T, nu)


@pytest.fixture(scope="module")
def base() -> Population:
    rng = np.random.default_rng(20_240_601)
    n = 5_000
    return simulate(rng, n, rng.uniform(30.0, 365.0, n), holdout=HOLDOUT_DAYS)


@pytest.fixture(scope="module")
def fitted(base: Population) -> FitResult:
    result = fit(base.x, base.t_x, base.T, base.m)
    assert isinstance(result, FitResult)
    return result


# --------------------------------------------------------------------------- fitting


def test_fit_recovers_the_simulated_parameters(base: Population, fitted: FitResult):
    # Tolerances: about three standard deviations of the estimates over 30 seeds of this
    # same set-up (5,000 customers, T ~ U(30, 365) days); the largest error seen over those
    # seeds is in brackets. p and v of Gamma-Gamma are strongly correlated (their ratio to
    # q - 1 is what the data pin down), so they get wide bounds and the mean a tight one.
    bg, gg = fitted.bgnbd, fitted.gamma_gamma
    assert gg is not None
    assert fitted.converged
    assert (fitted.n_customers, fitted.n_repeat_customers) == (5_000, int((base.x > 0).sum()))

    def rel(estimate: float, truth: float) -> float:
        return abs(estimate / truth - 1.0)

    assert rel(bg.r, TRUE_BG.r) < 0.10  # (5%)
    assert rel(bg.alpha, TRUE_BG.alpha) < 0.20  # (12%)
    assert rel(bg.a, TRUE_BG.a) < 0.20  # (13%)
    assert rel(bg.b, TRUE_BG.b) < 0.25  # (17%)
    assert rel(bg.r / bg.alpha, TRUE_BG.r / TRUE_BG.alpha) < 0.12  # mean purchase rate (8%)
    assert abs(bg.a / (bg.a + bg.b) - TRUE_BG.a / (TRUE_BG.a + TRUE_BG.b)) < 0.03  # mean dropout (0.014)
    assert rel(gg.p, TRUE_GG.p) < 0.35  # (27%)
    assert rel(gg.q, TRUE_GG.q) < 0.15  # (10%)
    assert rel(gg.v, TRUE_GG.v) < 0.40  # (28%)
    assert rel(gg.population_mean, TRUE_GG.population_mean) < 0.05  # (3%)


def test_the_fit_is_the_maximum_of_the_likelihood(base: Population, fitted: FitResult):
    bg = fitted.bgnbd
    assert fitted.log_likelihood_bgnbd == pytest.approx(bgnbd_log_likelihood(bg, base.x, base.t_x, base.T).sum())
    for name in ("r", "alpha", "a", "b"):
        for factor in (0.97, 1.03):
            moved = BGNBDParams(**{**_fields(bg), name: getattr(bg, name) * factor})
            assert bgnbd_log_likelihood(moved, base.x, base.t_x, base.T).sum() < fitted.log_likelihood_bgnbd
    gg = fitted.gamma_gamma
    assert gg is not None and fitted.log_likelihood_gg is not None
    rep = base.x > 0
    for name in ("p", "q", "v"):
        for factor in (0.97, 1.03):
            moved_gg = GammaGammaParams(**{**_fields(gg), name: getattr(gg, name) * factor})
            assert gamma_gamma_log_likelihood(moved_gg, base.x[rep], base.m[rep]).sum() < fitted.log_likelihood_gg


def test_the_fitted_model_predicts_the_holdout(base: Population, fitted: FitResult):
    # What a user would do: fit on the calibration period, predict the next 180 days.
    # Over 30 seeds the total was off by at most 8% (sd 3.6%).
    predicted = expected_purchases(fitted.bgnbd, HOLDOUT_DAYS, base.x, base.t_x, base.T)
    assert predicted.sum() == pytest.approx(base.future.sum(), rel=0.10)


def test_fit_without_spend_fits_purchases_only(base: Population):
    result = fit(base.x, base.t_x, base.T)
    assert isinstance(result, FitResult)
    assert result.gamma_gamma is None and result.log_likelihood_gg is None


def test_too_few_customers_or_repeat_buyers_is_insufficient_data(base: Population):
    few = fit(base.x[: MIN_CUSTOMERS - 1], base.t_x[: MIN_CUSTOMERS - 1], base.T[: MIN_CUSTOMERS - 1])
    assert isinstance(few, InsufficientData)
    assert few.n_customers == MIN_CUSTOMERS - 1
    assert "customers" in few.reason and str(MIN_CUSTOMERS) in few.reason

    # Enough customers, but only MIN_REPEAT_CUSTOMERS - 1 of them bought again.
    n = 1_000
    x = np.zeros(n, dtype=int)
    x[: MIN_REPEAT_CUSTOMERS - 1] = 2
    t_x = np.where(x > 0, 20.0, 0.0)
    T = np.full(n, 100.0)
    lonely = fit(x, t_x, T, np.where(x > 0, 30.0, 0.0))
    assert lonely == InsufficientData(
        f"{MIN_REPEAT_CUSTOMERS - 1} repeat buyers, fewer than the {MIN_REPEAT_CUSTOMERS} needed",
        n,
        MIN_REPEAT_CUSTOMERS - 1,
    )


# --------------------------------------------------------------------------- closed forms vs Monte Carlo


@pytest.mark.parametrize("t", [30.0, 90.0, 365.0])
def test_expected_purchases_of_a_new_customer_matches_simulation(t: float):
    sim = simulate(np.random.default_rng(7), 200_000, t)
    mean, se = sim.x.mean(), sim.x.std() / math.sqrt(sim.x.size)
    closed = expected_purchases_new(TRUE_BG, t)
    # Seen (simulated vs closed form): t=30: 1.0981 vs 1.1036; t=90: 2.2144 vs 2.2118; t=365: 4.5623 vs 4.5573.
    assert abs(mean - closed) < 4 * se
    assert mean == pytest.approx(closed, rel=0.02)


def test_conditional_expected_purchases_match_the_simulated_future_by_group():
    rng = np.random.default_rng(11)
    n = 100_000
    sim = simulate(rng, n, rng.uniform(30.0, 365.0, n), holdout=HOLDOUT_DAYS)
    expected = expected_purchases(TRUE_BG, HOLDOUT_DAYS, sim.x, sim.t_x, sim.T)
    for lo, hi in [(0, 0), (1, 1), (2, 3), (4, 7), (8, 10**9)]:
        group = (sim.x >= lo) & (sim.x <= hi)
        actual = sim.future[group]
        se = actual.std() / math.sqrt(actual.size)
        assert abs(actual.mean() - expected[group].mean()) < 4 * se, (lo, hi)
        assert actual.mean() == pytest.approx(expected[group].mean(), rel=0.05), (lo, hi)


def test_p_alive_matches_the_simulated_share_still_alive_by_group():
    rng = np.random.default_rng(13)
    n = 100_000
    sim = simulate(rng, n, rng.uniform(30.0, 365.0, n))
    alive = p_alive(TRUE_BG, sim.x, sim.t_x, sim.T)
    silence = sim.T - sim.t_x
    for x_lo, x_hi in [(1, 1), (2, 4), (5, 10**9)]:
        for s_lo, s_hi in [(0, 30), (30, 120), (120, 400)]:
            group = (sim.x >= x_lo) & (sim.x <= x_hi) & (silence >= s_lo) & (silence < s_hi)
            share = sim.alive_at_T[group].mean()
            se = math.sqrt(max(share * (1 - share), 1e-4) / group.sum())
            assert abs(share - alive[group].mean()) < 4 * se + 0.005, (x_lo, x_hi, s_lo, s_hi)
    assert np.all(alive[sim.x == 0] == 1.0) and np.all(sim.alive_at_T[sim.x == 0])


def test_expected_spend_matches_the_customers_true_mean_spend_by_group(base: Population):
    true_mean = TRUE_GG.p / base.nu
    spend = expected_spend(TRUE_GG, base.x, base.m)
    for lo, hi in [(0, 0), (1, 2), (3, 6), (7, 10**9)]:
        group = (base.x >= lo) & (base.x <= hi)
        se = true_mean[group].std() / math.sqrt(group.sum())
        assert abs(spend[group].mean() - true_mean[group].mean()) < 4 * se, (lo, hi)


# --------------------------------------------------------------------------- likelihoods by integration


@pytest.mark.parametrize(("x", "t_x", "T"), [(0, 0.0, 12.0), (1, 3.0, 12.0), (4, 9.5, 12.0)])
def test_bgnbd_likelihood_equals_integrating_the_individual_likelihood(x: int, t_x: float, T: float):
    # Milder parameters than TRUE_BG so the Gamma density has no spike at 0 to integrate.
    params = BGNBDParams(r=2.0, alpha=3.0, a=2.0, b=3.0)

    def integrand(p: float, lam: float) -> float:
        alive = (1 - p) ** x * lam**x * math.exp(-lam * T)
        dropped = p * (1 - p) ** (x - 1) * lam**x * math.exp(-lam * t_x) if x > 0 else 0.0
        prior = stats.gamma.pdf(lam, params.r, scale=1 / params.alpha) * stats.beta.pdf(p, params.a, params.b)
        return (alive + dropped) * prior

    value, _ = integrate.dblquad(integrand, 0, 30, 0, 1, epsabs=1e-13, epsrel=1e-10)
    assert bgnbd_log_likelihood(params, x, t_x, T) == pytest.approx(math.log(value), abs=1e-6)


@pytest.mark.parametrize(("x", "m"), [(1, 12.0), (3, 30.0), (8, 55.0)])
def test_gamma_gamma_likelihood_equals_integrating_over_nu(x: int, m: float):
    gg = GammaGammaParams(p=6.0, q=4.0, v=15.0)

    def integrand(nu: float) -> float:
        # the mean of x transactions given nu is Gamma(p x, rate x nu)
        return stats.gamma.pdf(m, gg.p * x, scale=1 / (x * nu)) * stats.gamma.pdf(nu, gg.q, scale=1 / gg.v)

    value, _ = integrate.quad(integrand, 0, np.inf, epsabs=1e-14, epsrel=1e-10, limit=200)
    assert gamma_gamma_log_likelihood(gg, x, m) == pytest.approx(math.log(value), abs=1e-6)


@pytest.mark.parametrize(
    "params",
    [
        TRUE_BG,
        BGNBDParams(r=3.0, alpha=2.0, a=5.0, b=0.2),
        BGNBDParams(r=0.5, alpha=1.0, a=0.3, b=0.4),  # a + b < 1
        BGNBDParams(r=0.4, alpha=3.0, a=0.4, b=2.0),  # r == a: scipy's hyp2f1 degenerates
        BGNBDParams(r=0.7, alpha=3.0, a=0.4, b=0.6),  # a + b == 1: 2F1 has a pole for x == 0
        BGNBDParams(r=0.7, alpha=3.0, a=1.0, b=2.0),  # a == 1: 0/0 in eq. 9
    ],
)
@pytest.mark.parametrize("t", [1.0, 30.0, 1_000.0])
def test_expected_purchases_of_a_new_customer_equal_integrating_over_p(params: BGNBDParams, t: float):
    # E[X(t) | λ, p] = (1 - exp(-λ p t)) / p (FHL 2005, eq. 7); over λ ~ Gamma(r, α) the
    # exponential averages to (α / (α + p t))^r, leaving one integral over p ~ Beta(a, b),
    # whose density's endpoint singularities quad takes as an algebraic weight.
    def integrand(p: float) -> float:
        if p == 0.0:  # the limit: λ t averaged over λ
            return params.r / params.alpha * t
        return -math.expm1(-params.r * math.log1p(p * t / params.alpha)) / p

    weight = math.exp(-betaln(params.a, params.b))
    value, _ = integrate.quad(integrand, 0, 1, weight="alg", wvar=(params.a - 1, params.b - 1), epsabs=0, epsrel=1e-12)
    value *= weight
    assert expected_purchases_new(params, t) == pytest.approx(value, rel=1e-6)


# --------------------------------------------------------------------------- properties

HISTORIES = st.tuples(
    st.integers(min_value=1, max_value=500),
    st.floats(min_value=0.0, max_value=2_000.0),
    st.floats(min_value=0.0, max_value=2_000.0),
    st.floats(min_value=0.1, max_value=2_000.0),
)
PARAMS = st.builds(
    BGNBDParams,
    r=st.floats(0.05, 5.0),
    alpha=st.floats(0.5, 50.0),
    a=st.floats(0.1, 5.0),
    b=st.floats(0.1, 10.0),
)


@given(PARAMS, HISTORIES)
def test_p_alive_falls_as_silence_grows(params: BGNBDParams, history):
    x, t_x, T, more = history
    T = max(T, t_x)
    now, later = p_alive(params, x, t_x, T), p_alive(params, x, t_x, T + more)
    assert 0.0 <= later <= now <= 1.0
    assert p_alive(params, 0, 0.0, T) == p_alive(params, 0, 0.0, T + more) == 1.0


@given(PARAMS, HISTORIES, st.floats(0.0, 3_000.0), st.floats(0.0, 3_000.0))
def test_expected_purchases_are_finite_and_grow_with_the_horizon(params: BGNBDParams, history, t1, t2):
    x, t_x, T, _ = history
    T = max(T, t_x)
    short, long = sorted((t1, t2))
    e_short, e_long = expected_purchases(params, [short, long], x, t_x, T)
    assert np.isfinite(e_long)
    assert 0.0 <= e_short <= e_long * (1 + 1e-9) + 1e-12


def test_extreme_histories_stay_finite():
    # (alpha + T)^(r + x) alone would overflow here; every result must still be a number.
    x, t_x, T = np.array([0, 5_000, 20_000]), np.array([0.0, 9_000.0, 9_999.0]), np.array([10_000.0] * 3)
    assert np.all(np.isfinite(bgnbd_log_likelihood(TRUE_BG, x, t_x, T)))
    assert np.all(np.isfinite(expected_purchases(TRUE_BG, 3_650.0, x, t_x, T)))
    assert np.all(np.isfinite(p_alive(TRUE_BG, x, t_x, T)))
    assert expected_purchases(TRUE_BG, 0.0, x, t_x, T).tolist() == [0.0, 0.0, 0.0]


def test_a_equal_to_one_is_the_limit_of_its_neighbours():
    at_one = expected_purchases(BGNBDParams(0.25, 4.0, 1.0, 2.5), 100.0, 3, 50.0, 200.0)
    below = expected_purchases(BGNBDParams(0.25, 4.0, 1.0 - 1e-5, 2.5), 100.0, 3, 50.0, 200.0)
    above = expected_purchases(BGNBDParams(0.25, 4.0, 1.0 + 1e-5, 2.5), 100.0, 3, 50.0, 200.0)
    assert at_one == pytest.approx((below + above) / 2, rel=1e-6)


def test_expected_spend_shrinks_towards_the_population_mean():
    assert expected_spend(TRUE_GG, 0, 0.0) == pytest.approx(30.0)
    one, many = expected_spend(TRUE_GG, [1, 50], [90.0, 90.0])
    assert 30.0 < one < many < 90.0
    assert many == pytest.approx(90.0, rel=0.05)
    with pytest.raises(ValueError, match="q <= 1"):
        expected_spend(GammaGammaParams(2.0, 0.9, 10.0), 1, 10.0)


# --------------------------------------------------------------------------- value


def test_discounted_clv_is_the_discounted_sum_of_monthly_increments():
    x, t_x, T, m = 3, 80.0, 200.0, 40.0
    step = 365.25 / 12
    cumulative = expected_purchases(TRUE_BG, [step * k for k in range(13)], x, t_x, T)
    monthly_rate = 1.1 ** (1 / 12) - 1
    by_hand = sum(
        (cumulative[k] - cumulative[k - 1]) * expected_spend(TRUE_GG, x, m) * 0.25 / (1 + monthly_rate) ** k
        for k in range(1, 13)
    )
    clv = discounted_clv(TRUE_BG, TRUE_GG, x, t_x, T, m, horizon_days=365.25, margin=0.25, annual_discount_rate=0.1)
    assert clv == pytest.approx(by_hand, rel=1e-12)


def test_discounted_clv_without_discount_is_purchases_times_value_times_margin():
    many = discounted_clv(
        TRUE_BG, TRUE_GG, [0, 2, 9], [0.0, 40.0, 300.0], [300.0] * 3, [0.0, 25.0, 60.0],
        horizon_days=200.0, margin=0.4, annual_discount_rate=0.0,
    )  # fmt: skip
    purchases = expected_purchases(TRUE_BG, 200.0, [0, 2, 9], [0.0, 40.0, 300.0], [300.0] * 3)
    spend = expected_spend(TRUE_GG, [0, 2, 9], [0.0, 25.0, 60.0])
    np.testing.assert_allclose(many, purchases * spend * 0.4, rtol=1e-12)
    zero = discounted_clv(TRUE_BG, TRUE_GG, 2, 40.0, 300.0, 25.0, horizon_days=0, margin=0.4, annual_discount_rate=0.1)
    assert zero == 0.0


@pytest.mark.parametrize(
    ("x", "t_x", "T", "m", "horizon"),
    [
        (4, 150.0, 300.0, 42.0, 365.0),
        (0, 0.0, 40.0, 0.0, 90.0),
        (25, 360.0, 361.0, 18.5, 1_000.0),
        (1, 5.0, 300.0, 7.0, 1.0),
    ],
)
def test_predict_agrees_with_the_array_functions(fitted: FitResult, x, t_x, T, m, horizon):
    kwargs = {"horizon_days": horizon, "margin": 0.3, "annual_discount_rate": 0.08}
    got = predict(fitted, x=x, t_x=t_x, T=T, m=m, **kwargs)
    bg, gg = fitted.bgnbd, fitted.gamma_gamma
    assert got == Prediction(
        expected_purchases=pytest.approx(expected_purchases(bg, horizon, x, t_x, T), rel=1e-12),
        p_alive=pytest.approx(p_alive(bg, x, t_x, T), rel=1e-12),
        expected_value=pytest.approx(expected_spend(gg, x, m), rel=1e-12),
        predicted_clv=pytest.approx(discounted_clv(bg, gg, x, t_x, T, m, **kwargs), rel=1e-12),
    )


def test_predict_refuses_what_the_array_functions_refuse(fitted: FitResult):
    kwargs = {"horizon_days": 30.0, "margin": 0.3, "annual_discount_rate": 0.08}
    with pytest.raises(ValueError, match="t_x <= T"):
        predict(fitted, x=2, t_x=10.0, T=5.0, m=1.0, **kwargs)
    with pytest.raises(ValueError, match="non-negative integer"):
        predict(fitted, x=1.5, t_x=1.0, T=5.0, m=1.0, **kwargs)
    with pytest.raises(ValueError, match="margin"):
        predict(fitted, x=1, t_x=1.0, T=5.0, m=1.0, horizon_days=30.0, margin=-0.1, annual_discount_rate=0.0)
    nothing = predict(fitted, x=1, t_x=1.0, T=5.0, m=1.0, horizon_days=0.0, margin=0.3, annual_discount_rate=0.0)
    assert (nothing.expected_purchases, nothing.predicted_clv) == (0.0, 0.0)


def test_predict_prices_a_newcomer_at_the_population_mean(fitted: FitResult):
    kwargs = {"horizon_days": 365.0, "margin": 0.3, "annual_discount_rate": 0.08}
    gg = fitted.gamma_gamma
    # A newcomer is priced at the population mean, not at the 0 they have no repeat spend of.
    newcomer = predict(fitted, x=0, t_x=0.0, T=1.0, m=0.0, **kwargs)
    assert newcomer.p_alive == 1.0 and newcomer.predicted_clv > 0.0
    assert gg is not None and newcomer.expected_value == pytest.approx(gg.population_mean)


def test_predict_without_a_spend_model_uses_the_customers_own_average(fitted: FitResult):
    purchases_only = FitResult(fitted.bgnbd, None, 5_000, 3_000, -1.0, None, True)
    got = predict(purchases_only, x=4, t_x=150.0, T=300.0, m=42.0, horizon_days=90, margin=1.0,
                  annual_discount_rate=0.0)  # fmt: skip
    assert got.expected_value == 42.0
    assert got.predicted_clv == pytest.approx(got.expected_purchases * 42.0, rel=1e-12)


@pytest.mark.parametrize(
    ("x", "t_x", "T", "message"),
    [(-1, 0.0, 10.0, "non-negative integer"), (1.5, 1.0, 10.0, "non-negative integer"),
     (2, 11.0, 10.0, "t_x <= T"), (2, -1.0, 10.0, "t_x <= T"), (2, 1.0, math.nan, "finite")],
)  # fmt: skip
def test_invalid_histories_are_refused(x, t_x, T, message):
    with pytest.raises(ValueError, match=message):
        p_alive(TRUE_BG, x, t_x, T)
    with pytest.raises(ValueError, match=message):
        fit_bgnbd([x], [t_x], [T])


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        BGNBDParams(0.2, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="v"):
        GammaGammaParams(1.0, 2.0, math.inf)
    with pytest.raises(ValueError, match="margin"):
        discounted_clv(TRUE_BG, TRUE_GG, 1, 1.0, 2.0, 3.0, horizon_days=30, margin=1.5, annual_discount_rate=0.1)
    with pytest.raises(ValueError, match="x > 0 and m > 0"):
        gamma_gamma_log_likelihood(TRUE_GG, [0], [1.0])
    with pytest.raises(ValueError, match="two repeat buyers"):
        fit_gamma_gamma([0, 1], [0.0, 5.0])


# --------------------------------------------------------------------------- optional: lifetimes


def test_matches_the_lifetimes_package(base: Population, fitted: FitResult):
    # Only this comparison needs `lifetimes`; it is a test-only extra and the module never imports it.
    with warnings.catch_warnings():
        # lifetimes and the pandas it drives warn about their own deprecations on import and use
        warnings.simplefilter("ignore")
        import lifetimes  # a test-only dependency (the `test` extra): never skipped
        import pandas as pd

        bg, gg = fitted.bgnbd, fitted.gamma_gamma
        assert gg is not None
        x, t_x, T, m = base.x, base.t_x, base.T, base.m
        rep = x > 0

        theirs_ll = (
            -lifetimes.BetaGeoFitter._negative_log_likelihood(
                np.log([bg.r, bg.alpha, bg.a, bg.b]), x, t_x, T, np.ones(x.size), 0.0
            )
            * x.size
        )
        assert fitted.log_likelihood_bgnbd == pytest.approx(theirs_ll, rel=1e-10)
        theirs_gg_ll = (
            -lifetimes.GammaGammaFitter._negative_log_likelihood(
                np.log([gg.p, gg.q, gg.v]), x[rep], m[rep], np.ones(rep.sum()), 0.0
            )
            * rep.sum()
        )
        assert fitted.log_likelihood_gg == pytest.approx(theirs_gg_ll, rel=1e-10)

        bgf = lifetimes.BetaGeoFitter().fit(x, t_x, T)
        for name in ("r", "alpha", "a", "b"):
            assert getattr(bg, name) == pytest.approx(bgf.params_[name], rel=1e-3), name
        ggf = lifetimes.GammaGammaFitter().fit(x[rep], m[rep])
        for name in ("p", "q", "v"):
            assert getattr(gg, name) == pytest.approx(ggf.params_[name], rel=1e-3), name

        # Same parameters on both sides for the predictions.
        bgf.params_ = pd.Series({"r": bg.r, "alpha": bg.alpha, "a": bg.a, "b": bg.b})
        ggf.params_ = pd.Series({"p": gg.p, "q": gg.q, "v": gg.v})
        np.testing.assert_allclose(
            expected_purchases(bg, HOLDOUT_DAYS, x, t_x, T),
            np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(HOLDOUT_DAYS, x, t_x, T)),
            rtol=1e-9,
        )
        np.testing.assert_allclose(p_alive(bg, x, t_x, T), np.asarray(bgf.conditional_probability_alive(x, t_x, T)),
                                   rtol=1e-12)  # fmt: skip
        ts = np.array([1.0, 30.0, 365.0, 3650.0])
        np.testing.assert_allclose(
            expected_purchases_new(bg, ts), np.asarray(bgf.expected_number_of_purchases_up_to_time(ts)), rtol=1e-9
        )
        np.testing.assert_allclose(
            expected_spend(gg, x, m),
            np.asarray(ggf.conditional_expected_average_profit(pd.Series(x), pd.Series(m))),
            rtol=1e-12,
        )


def _fields(obj) -> dict[str, float]:
    return {name: getattr(obj, name) for name in obj.__slots__}


@pytest.mark.parametrize("a", [215.0, 800.0, 3200.0, 1e5])
def test_predictions_stay_finite_and_continuous_for_nearly_homogeneous_dropout(a):
    """Found in the stream: fits with a, b in the thousands made (1-z)^(a-1) * 2F1 a 0 * inf.

    With b = 6.5 a, the dropout probability per purchase is a/(a+b) = 1/7.5 for every a: the
    predictions must be finite, move smoothly with a, and agree with `lifetimes` where its own
    evaluation is still finite (a = 215)."""
    from models.clv import BGNBDParams, FitResult, GammaGammaParams, predict

    def expected(a_: float) -> float:
        fitted = FitResult(BGNBDParams(1.27, 60.15, a_, a_ * 6.5), GammaGammaParams(6, 4, 15), 401, 300, -1.0, -1.0,
                           False)
        p = predict(fitted, x=3, t_x=97.9, T=99.9, m=25, horizon_days=365, margin=0.3, annual_discount_rate=0.1)
        assert math.isfinite(p.expected_purchases) and math.isfinite(p.predicted_clv) and p.expected_purchases > 0
        return p.expected_purchases

    here, near = expected(a), expected(a * 1.001)
    assert near == pytest.approx(here, rel=1e-3)  # continuous in a
    if a == 215.0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import lifetimes
            import pandas as pd

            bgf = lifetimes.BetaGeoFitter()
            bgf.params_ = pd.Series({"r": 1.27, "alpha": 60.15, "a": a, "b": a * 6.5})
            theirs = float(bgf.conditional_expected_number_of_purchases_up_to_time(365, 3, 97.9, 99.9))
        assert expected_purchases(BGNBDParams(1.27, 60.15, a, a * 6.5), 365, 3, 97.9, 99.9) == pytest.approx(
            theirs, rel=1e-9)
