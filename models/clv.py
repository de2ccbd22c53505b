"""Predictive customer lifetime value: BG/NBD (or MBG/NBD) for how often, Gamma-Gamma for how much.

A customer is summarised in the usual RFM form, with days as the time unit:

- ``x`` (frequency): the number of *repeat* purchases, i.e. orders minus one;
- ``t_x`` (recency): the customer's age at the last purchase (first to last purchase);
- ``T``: the customer's age now (first purchase to the observation time);
- ``m`` (monetary): the mean value of the repeat purchases. The first order is left out,
  as the Gamma-Gamma model expects, and customers with ``x == 0`` do not inform the spend fit.

The models are those of Fader, Hardie & Lee, "Counting your customers the easy way: an
alternative to the Pareto/NBD model" (Marketing Science, 2005) and Fader, Hardie & Lee,
"RFM and CLV: using iso-value curves for customer base analysis" (JMR, 2005), with the
formulas of Hardie's notes 004 (BG/NBD likelihood), 021 (P(alive)) and 025 (Gamma-Gamma).
The modified BG/NBD (MBG/NBD) of Batislam, Denizel & Filiztekin, "Empirical validation and
comparison of models for customer base analysis" (IJRM, 2007) is the alternative count model:
the same four parameters, but a customer may also drop out right after the first purchase, so
one who never bought again is not certain to be alive. Which of the two predicts better is
decided on a calibration / holdout split of the history (:func:`calibration_holdout`,
:func:`compare_kinds`).

Everything here is pure: parameters are fitted from arrays of summaries and then applied to
one customer or many. The results (:class:`FitResult`) are plain values meant to be stored
and versioned elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import betaln, expit, gammaln, hyp2f1

from models.durations import DAY_MS
from models.journey import StateLimits

#: Below this many customers in total, :func:`fit` refuses to fit. The BG/NBD has four
#: parameters, two of which (a, b: the dropout process) are only seen through the minority
#: of customers who bought again; with a few hundred customers the fit is stable, with a few
#: dozen it wanders to the bounds.
MIN_CUSTOMERS = 200
#: Below this many repeat buyers (x > 0), :func:`fit` refuses to fit: they carry all the
#: information about dropout and are the only customers the Gamma-Gamma spend model sees.
MIN_REPEAT_CUSTOMERS = 30

#: Days in a year, for turning an annual discount rate into a per-step one.
YEAR_DAYS = 365.25

# Log-parameters are searched within these bounds. exp(±20) is far beyond any sensible
# value in days or currency units, and keeps the likelihood finite everywhere the optimiser
# looks; a fit that ends on a bound means the data push a parameter to 0 or infinity (for
# instance no visible dropout at all) and is reported as not converged.
_LOG_BOUND = 20.0

# Within this distance of a == 1, expected purchases are interpolated (see _expected_purchases).
_A_NEAR_ONE = 1e-4


class ClvKind(StrEnum):
    """Which purchase-count model: both have the parameters of :class:`BGNBDParams`."""

    BGNBD = "bgnbd"  # Fader, Hardie & Lee 2005: dropout only after a repeat purchase
    MBGNBD = "mbgnbd"  # Batislam et al. 2007: also possible right after the first purchase


@dataclass(frozen=True, slots=True)
class BGNBDParams:
    """BG/NBD (or MBG/NBD) parameters, time in days.

    While alive a customer buys at Poisson rate ``λ ~ Gamma(r, alpha)`` (shape ``r``,
    rate ``alpha``); after each repeat purchase they drop out with probability
    ``p ~ Beta(a, b)`` (MBG/NBD: after every purchase, the first one included).
    """

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        _check_positive(r=self.r, alpha=self.alpha, a=self.a, b=self.b)


@dataclass(frozen=True, slots=True)
class GammaGammaParams:
    """Gamma-Gamma spend parameters.

    Each transaction of a customer is ``Gamma(p, ν)`` (shape ``p``, rate ``ν``) and
    ``ν ~ Gamma(q, v)`` across customers, so the mean spend is ``p * v / (q - 1)``.
    """

    p: float
    q: float
    v: float

    def __post_init__(self) -> None:
        _check_positive(p=self.p, q=self.q, v=self.v)

    @property
    def population_mean(self) -> float:
        """Mean transaction value across customers; infinite unless ``q > 1``."""
        return self.p * self.v / (self.q - 1.0) if self.q > 1.0 else math.inf


@dataclass(frozen=True, slots=True)
class FitResult:
    """Fitted models and how well they fitted: what gets stored and versioned.

    ``gamma_gamma`` is None when no spend was given, when fewer than
    :data:`MIN_REPEAT_CUSTOMERS` repeat buyers spent anything, or when the spend fit gives
    no finite mean (``q <= 1``); predictions then use the customer's own average as is.
    Log-likelihoods are totals over the customers used, in the original units.
    ``converged`` is true when every fit reported success away from the bounds.
    ``kind`` says which count model ``bgnbd`` (the four parameters r, alpha, a, b) and
    ``log_likelihood_bgnbd`` belong to: BG/NBD unless a holdout validation chose MBG/NBD.
    """

    bgnbd: BGNBDParams
    gamma_gamma: GammaGammaParams | None
    n_customers: int
    n_repeat_customers: int
    log_likelihood_bgnbd: float
    log_likelihood_gg: float | None
    converged: bool
    kind: ClvKind = ClvKind.BGNBD


@dataclass(frozen=True, slots=True)
class InsufficientData:
    """Why :func:`fit` refused to fit, and the counts it saw."""

    reason: str
    n_customers: int
    n_repeat_customers: int


@dataclass(frozen=True, slots=True)
class Prediction:
    """One customer's outlook over a horizon.

    ``expected_purchases`` over the horizon, ``p_alive`` now, ``expected_value`` of one
    future order (the Gamma-Gamma conditional mean), ``predicted_clv`` the discounted margin.
    """

    expected_purchases: float
    p_alive: float
    expected_value: float
    predicted_clv: float


# --------------------------------------------------------------------------- BG/NBD


def bgnbd_log_likelihood(params: BGNBDParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> NDArray[np.float64]:
    """Per-customer BG/NBD log-likelihood (Fader, Hardie & Lee 2005, section 7).

    ``LL = ln Γ(r+x) − ln Γ(r) + r ln α + ln B(a, b+x) − ln B(a, b)
    + ln[(α+T)^−(r+x) + δ(x>0) a/(b+x−1) (α+t_x)^−(r+x)]``,
    the last term taken with ``logaddexp`` so that ``(α+T)^(r+x)`` never overflows.

    Examples
    --------
    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> bgnbd_log_likelihood(params, [0, 2], [0.0, 30.43], [38.86, 38.86]).round(4)
    array([-0.5547, -9.4586])
    """
    x, t_x, T = _rfm(x, t_x, T)
    return _bgnbd_ll(params.r, params.alpha, params.a, params.b, x, t_x, T)


def _bgnbd_ll(r: float, alpha: float, a: float, b: float, x, t_x, T) -> NDArray[np.float64]:
    head = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + betaln(a, b + x) - betaln(a, b)
    still_alive = -(r + x) * np.log(alpha + T)
    # For x == 0 the second branch does not exist (b + x - 1 may even be negative): give it
    # a harmless x and weight it out with -inf.
    x1 = np.maximum(x, 1.0)
    dropped = math.log(a) - np.log(b + x1 - 1.0) - (r + x) * np.log(alpha + t_x)
    dropped = np.where(x > 0, dropped, -np.inf)
    return np.asarray(head + np.logaddexp(still_alive, dropped), dtype=np.float64)


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[BGNBDParams, float, bool]:
    """Maximum-likelihood BG/NBD parameters.

    Returns
    -------
    tuple[BGNBDParams, float, bool]
        The parameters, the total log-likelihood at them, and whether the optimiser
        converged away from the parameter bounds.

    Examples
    --------
    >>> x, t_x, T = [0, 1, 2, 5, 0, 3], [0, 10, 40, 80, 0, 30], [50, 60, 90, 100, 30, 120]
    >>> params, ll, _ = fit_bgnbd(x * 50, t_x * 50, T * 50)
    >>> ll < 0 and params.r > 0
    True
    """
    return _fit_counts(_bgnbd_ll, x, t_x, T)


def _fit_counts(ll_fn, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[BGNBDParams, float, bool]:
    x, t_x, T = _rfm(x, t_x, T)
    if x.size == 0:
        raise ValueError("no customers to fit")
    # Scale time so the oldest customer is 10 units old: the search then starts with every
    # log-parameter near 0 whatever the data's time unit. Only alpha carries time.
    scale = 10.0 / max(float(T.max()), 1e-9)
    xs, txs, Ts = x, t_x * scale, T * scale
    n = x.size

    def objective(theta: NDArray[np.float64]) -> float:
        ll = ll_fn(*np.exp(theta), xs, txs, Ts)
        return _finite_or_huge(-ll.sum() / n)

    theta, converged = _minimize(objective, np.zeros(4))
    r, alpha, a, b = np.exp(theta)
    params = BGNBDParams(float(r), float(alpha / scale), float(a), float(b))
    return params, float(ll_fn(params.r, params.alpha, params.a, params.b, x, t_x, T).sum()), converged


def p_alive(params: BGNBDParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> float | NDArray[np.float64]:
    """Probability that a customer with this history is still alive (Hardie, note 021).

    ``1 / (1 + δ(x>0) a/(b+x−1) ((α+T)/(α+t_x))^(r+x))``: a customer who never bought again
    cannot have dropped out (dropout only follows a repeat purchase), so it is 1 for them.

    Examples
    --------
    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> p_alive(params, 0, 0.0, 38.86)
    1.0
    >>> round(p_alive(params, 2, 30.43, 38.86), 4), round(p_alive(params, 2, 30.43, 60.0), 4)
    (0.7266, 0.5213)
    """
    x, t_x, T = _rfm(x, t_x, T)
    return _out(_p_alive(params, x, t_x, T))


def expected_purchases(
    params: BGNBDParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> float | NDArray[np.float64]:
    """Expected repeat purchases in ``(T, T + t]`` given the history (FHL 2005, eq. 10).

    Eq. 10 holds ``((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x−1; z)`` with
    ``z = t/(α+T+t)``; both factors overflow for frequent buyers. Euler's transformation
    ``2F1(a, b; c; z) = (1−z)^(c−a−b) 2F1(c−a, c−b; c; z)`` turns the product into
    ``(1−z)^(a−1) · 2F1(a+b−1−r, a−1; a+b+x−1; z)``, whose first two parameters do not grow
    with ``x`` and which stays near 1 for any history. ``z < 1`` always since ``α > 0``.

    Examples
    --------
    The customer of FHL 2005 (CDNOW, weeks): 2 repeat purchases, the last at 30.43, now
    38.86 weeks old, expects 1.226 purchases in the next 39 weeks:

    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(expected_purchases(params, 39, 2, 30.43, 38.86), 3)
    1.226
    >>> expected_purchases(params, [0, 39], 0, 0, 0).round(4)
    array([0.    , 1.1967])
    """
    x, t_x, T = _rfm(x, t_x, T)
    t = _times(t, "t")
    return _out(_expected_purchases(params, t, x, t_x, T))


def expected_purchases_new(params: BGNBDParams, t: ArrayLike) -> float | NDArray[np.float64]:
    """Expected repeat purchases in ``(0, t]`` of a customer who just made a first purchase (FHL 2005, eq. 9).

    It is eq. 10 for the empty history ``x = t_x = T = 0``.

    Examples
    --------
    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(expected_purchases_new(params, 39), 4)
    1.1967
    """
    t = _times(t, "t")
    zero = np.zeros(())
    return _out(_expected_purchases(params, t, zero, zero, zero))


# --------------------------------------------------------------------------- MBG/NBD


def mbgnbd_log_likelihood(params: BGNBDParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> NDArray[np.float64]:
    """Per-customer MBG/NBD log-likelihood (Batislam, Denizel & Filiztekin 2007, eq. 5).

    ``LL = ln Γ(r+x) − ln Γ(r) + r ln α + ln B(a, b+x+1) − ln B(a, b)
    + ln[(α+T)^−(r+x) + a/(b+x) (α+t_x)^−(r+x)]``: BG/NBD's with one more chance to drop
    out (after the first purchase), so the second term is there for ``x == 0`` too.

    Examples
    --------
    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> mbgnbd_log_likelihood(params, [0, 2], [0.0, 30.43], [38.86, 38.86]).round(4)
    array([-0.387 , -9.6872])
    """
    x, t_x, T = _rfm(x, t_x, T)
    return _mbgnbd_ll(params.r, params.alpha, params.a, params.b, x, t_x, T)


def _mbgnbd_ll(r: float, alpha: float, a: float, b: float, x, t_x, T) -> NDArray[np.float64]:
    head = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + betaln(a, b + x + 1.0) - betaln(a, b)
    still_alive = -(r + x) * np.log(alpha + T)
    dropped = math.log(a) - np.log(b + x) - (r + x) * np.log(alpha + t_x)
    return np.asarray(head + np.logaddexp(still_alive, dropped), dtype=np.float64)


def fit_mbgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[BGNBDParams, float, bool]:
    """Maximum-likelihood MBG/NBD parameters (as :func:`fit_bgnbd`, for the modified model).

    Examples
    --------
    >>> x, t_x, T = [0, 1, 2, 5, 0, 3], [0, 10, 40, 80, 0, 30], [50, 60, 90, 100, 30, 120]
    >>> params, ll, _ = fit_mbgnbd(x * 50, t_x * 50, T * 50)
    >>> ll < 0 and params.r > 0
    True
    """
    return _fit_counts(_mbgnbd_ll, x, t_x, T)


def mbgnbd_p_alive(params: BGNBDParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> float | NDArray[np.float64]:
    """MBG/NBD probability that a customer is still alive: ``1 / (1 + a/(b+x) ((α+T)/(α+t_x))^(r+x))``.

    Unlike BG/NBD's it is below 1 for a customer who never bought again.

    Examples
    --------
    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(mbgnbd_p_alive(params, 0, 0.0, 38.86), 4), round(mbgnbd_p_alive(params, 2, 30.43, 38.86), 4)
    (0.6373, 0.7744)
    """
    x, t_x, T = _rfm(x, t_x, T)
    return _out(_p_alive(params, x, t_x, T, ClvKind.MBGNBD))


def mbgnbd_expected_purchases(
    params: BGNBDParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> float | NDArray[np.float64]:
    """MBG/NBD expected repeat purchases in ``(T, T + t]`` given the history (Batislam et al. 2007, eq. 9).

    ``(a+b+x)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) 2F1(r+x, b+x+1; a+b+x; z)] · P(alive)`` with
    ``z = t/(α+T+t)``, evaluated through Euler's transformation as in :func:`expected_purchases`.

    Examples
    --------
    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(mbgnbd_expected_purchases(params, 39, 2, 30.43, 38.86), 3)
    1.34
    """
    x, t_x, T = _rfm(x, t_x, T)
    t = _times(t, "t")
    return _out(_expected_purchases(params, t, x, t_x, T, ClvKind.MBGNBD))


def _p_alive(params: BGNBDParams, x, t_x, T, kind: ClvKind = ClvKind.BGNBD):
    return _p_alive_core(params.r, params.alpha, params.a, params.b, x, t_x, T, kind)


def _p_alive_core(r: float, alpha: float, a: float, b: float, x, t_x, T, kind: ClvKind = ClvKind.BGNBD):
    growth = (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    if kind is ClvKind.MBGNBD:
        # MBG/NBD: a dropout may follow any purchase, the first one included: no x > 0 case.
        return expit(-(math.log(a) - np.log(b + x) + growth))
    x1 = np.maximum(x, 1.0)
    # log of the odds of having dropped out; in logs, ((α+T)/(α+t_x))^(r+x) cannot overflow.
    log_odds = math.log(a) - np.log(b + x1 - 1.0) + growth
    return np.where(x > 0, expit(-log_odds), 1.0)


def _expected_purchases(params: BGNBDParams, t, x, t_x, T, kind: ClvKind = ClvKind.BGNBD):
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    # The leading factor 1/(a-1) is 0/0 at a == 1 (the limit is finite), and near it the
    # subtraction in _expected_core loses digits: about 1e-15/|a-1| relative. Within
    # _A_NEAR_ONE of 1, interpolate between the two edges instead, which is exact to
    # ~1e-11 from rounding and ~1e-7 from the curvature in a.
    if abs(a - 1.0) < _A_NEAR_ONE:
        lo = _expected_core(r, alpha, 1.0 - _A_NEAR_ONE, b, t, x, t_x, T, kind)
        hi = _expected_core(r, alpha, 1.0 + _A_NEAR_ONE, b, t, x, t_x, T, kind)
        expected = lo + (a - (1.0 - _A_NEAR_ONE)) / (2.0 * _A_NEAR_ONE) * (hi - lo)
    else:
        expected = _expected_core(r, alpha, a, b, t, x, t_x, T, kind)
    # Very large a and b (a nearly homogeneous dropout probability, common when little churn
    # heterogeneity is in the data) make (1-z)^(a-1) underflow while 2F1 overflows: 0 * inf.
    # Shrink a + b, keeping the mean dropout a/(a+b), until the product is finite; at such
    # concentrations the spread of p is already negligible, so the answer barely moves.
    shrink = 1.0
    while not np.all(np.isfinite(expected)) and shrink > 1e-6 and a * shrink > 2.0:
        shrink /= 2.0
        retry = _expected_core(r, alpha, a * shrink, b * shrink, t, x, t_x, T, kind)
        expected = np.where(np.isfinite(expected), expected, retry)
    # Rounding can leave a tiny negative (or -0.0) as t -> 0; a count is never negative.
    return np.maximum(expected, 0.0) + 0.0


def _expected_core(r: float, alpha: float, a: float, b: float, t, x, t_x, T, kind: ClvKind = ClvKind.BGNBD):
    # MBG/NBD's eq. (Batislam et al. 2007) is BG/NBD's with b + 1 in place of b in the leading
    # factor and in 2F1(r+x, b+x+1; a+b+x; z) (Euler-transformed the same way), and its own P(alive).
    bh = b + 1.0 if kind is ClvKind.MBGNBD else b
    z = t / (alpha + T + t)
    c = a + bh + x - 1.0
    # c == 0 (x == 0 and a + b == 1) is a pole of 2F1, cancelled by the same c in the leading
    # factor; the product is smooth there, and scipy is accurate up to |c| ~ 1e-12.
    c = np.where(np.abs(c) < 1e-12, 1e-12, c)
    hyp = hyp2f1(a + bh - 1.0 - r, a - 1.0, c, z)
    bad = ~np.isfinite(hyp)
    if np.any(bad):
        # scipy's hyp2f1 returns inf or nan in the degenerate case where c - a - b is an
        # exact integer (here: r - a an integer, e.g. r == a) with large c. The function
        # is smooth in its parameters: nudging the first by 1e-9 gives it to ~1e-10.
        first = (a + bh - 1.0 - r) + 1e-9 * max(1.0, abs(a + bh - 1.0 - r))
        hyp = np.where(bad, hyp2f1(first, a - 1.0, c, z), hyp)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):  # 0 * inf: handled by the caller
        gone = 1.0 - np.power(1.0 - z, a - 1.0) * hyp
        return c / (a - 1.0) * gone * _p_alive_core(r, alpha, a, b, x, t_x, T, kind)


# --------------------------------------------------------------------------- Gamma-Gamma


def gamma_gamma_log_likelihood(params: GammaGammaParams, x: ArrayLike, m: ArrayLike) -> NDArray[np.float64]:
    """Per-customer Gamma-Gamma log-likelihood of the average spend ``m`` over ``x`` purchases (Hardie, note 025).

    ``ln Γ(px+q) − ln Γ(px) − ln Γ(q) + q ln v + (px−1) ln m + px ln x − (px+q) ln(v + x m)``.
    Defined for customers with ``x > 0`` and ``m > 0`` only.

    Examples
    --------
    >>> gg = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    >>> gamma_gamma_log_likelihood(gg, [1, 4], [20.0, 35.0]).round(4)
    array([-3.5942, -4.0473])
    """
    x, m = _spend(x, m)
    if np.any(x <= 0) or np.any(m <= 0):
        raise ValueError("the Gamma-Gamma likelihood needs x > 0 and m > 0 (use repeat buyers only)")
    return _gg_ll(params.p, params.q, params.v, x, m)


def _gg_ll(p: float, q: float, v: float, x, m) -> NDArray[np.float64]:
    px = p * x
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * math.log(v)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(v + x * m)
    )
    return np.asarray(ll, dtype=np.float64)


def fit_gamma_gamma(x: ArrayLike, m: ArrayLike) -> tuple[GammaGammaParams, float, bool]:
    """Maximum-likelihood Gamma-Gamma parameters from all customers' ``(x, m)``.

    Only customers with ``x > 0`` and ``m > 0`` are used: the others have no repeat spend,
    or one the model cannot describe (free or refunded orders).

    Returns
    -------
    tuple[GammaGammaParams, float, bool]
        The parameters, the total log-likelihood over the customers used, and whether the
        optimiser converged away from the parameter bounds.

    Examples
    --------
    >>> params, ll, ok = fit_gamma_gamma([1, 2, 3, 1, 5, 2, 0], [20.0, 35.0, 28.0, 50.0, 31.0, 18.0, 0.0])
    >>> ok, 20 < params.population_mean < 60
    (True, True)
    """
    x, m = _spend(x, m)
    use = (x > 0) & (m > 0)
    x, m = x[use], m[use]
    if x.size < 2:
        raise ValueError("the Gamma-Gamma fit needs at least two repeat buyers with positive spend")
    # Scale money so the typical spend is 1 (only v carries the currency unit).
    scale = 1.0 / float(np.mean(m))
    ms = m * scale
    n = x.size

    def objective(theta: NDArray[np.float64]) -> float:
        ll = _gg_ll(*np.exp(theta), x, ms)
        return _finite_or_huge(-ll.sum() / n)

    theta, converged = _minimize(objective, np.zeros(3))
    p, q, v = np.exp(theta)
    params = GammaGammaParams(float(p), float(q), float(v / scale))
    return params, float(gamma_gamma_log_likelihood(params, x, m).sum()), converged


def expected_spend(gg: GammaGammaParams, x: ArrayLike, m: ArrayLike) -> float | NDArray[np.float64]:
    """Expected value of a customer's future transactions (Gamma-Gamma conditional mean).

    A weighted average of the population mean ``p v / (q − 1)`` and the customer's own
    average ``m``, the weight on ``m`` being ``p x / (p x + q − 1)``: the more purchases,
    the more the customer's own average is trusted. With ``x == 0`` it is the population mean.

    Examples
    --------
    >>> gg = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    >>> round(expected_spend(gg, 0, 0.0), 2), round(expected_spend(gg, 4, 60.0), 2)
    (35.22, 57.55)
    """
    if gg.q <= 1.0:
        raise ValueError(f"the Gamma-Gamma population mean is infinite when q <= 1 (q = {gg.q})")
    x, m = _spend(x, m)
    return _out(_expected_spend(gg, x, m))


def _expected_spend(gg: GammaGammaParams, x, m):
    px = gg.p * x
    weight = px / (px + gg.q - 1.0)
    # For x == 0 the weight is 0; m may be anything (often 0) and must not leak in as NaN.
    return (1.0 - weight) * gg.population_mean + weight * np.where(x > 0, m, 0.0)


# --------------------------------------------------------------------------- fitting both


def fit(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike, m: ArrayLike | None = None, *, kind: ClvKind = ClvKind.BGNBD
) -> FitResult | InsufficientData:
    """Fit BG/NBD or MBG/NBD (and Gamma-Gamma when spend is given) to a customer base.

    Parameters
    ----------
    x, t_x, T
        Per-customer repeat purchases, recency and age, in days.
    m
        Per-customer mean value of the repeat purchases, or None to fit purchases only.
    kind
        The purchase-count model (BG/NBD by default).

    Returns
    -------
    FitResult | InsufficientData
        The fits, or why there was too little data (fewer than :data:`MIN_CUSTOMERS`
        customers or :data:`MIN_REPEAT_CUSTOMERS` repeat buyers).

    Examples
    --------
    >>> fit([0, 1, 2], [0, 5, 9], [10, 10, 10], [0.0, 12.0, 20.0])
    InsufficientData(reason='3 customers, fewer than the 200 needed', n_customers=3, n_repeat_customers=2)
    """
    x, t_x, T = _rfm(x, t_x, T)
    n, n_repeat = int(x.size), int(np.count_nonzero(x > 0))
    if n < MIN_CUSTOMERS:
        return InsufficientData(f"{n} customers, fewer than the {MIN_CUSTOMERS} needed", n, n_repeat)
    if n_repeat < MIN_REPEAT_CUSTOMERS:
        return InsufficientData(f"{n_repeat} repeat buyers, fewer than the {MIN_REPEAT_CUSTOMERS} needed", n, n_repeat)
    kind = ClvKind(kind)
    bg, ll_bg, converged = (fit_mbgnbd if kind is ClvKind.MBGNBD else fit_bgnbd)(x, t_x, T)
    gg: GammaGammaParams | None = None
    ll_gg: float | None = None
    if m is not None:
        xm, mm = _spend(x, m)
        if xm.shape != x.shape:
            raise ValueError("m must have one value per customer")
        # Repeat buyers whose repeat orders were all free say nothing the model can use;
        # with too few of the rest, spend is left unmodelled rather than badly fitted.
        if np.count_nonzero((xm > 0) & (mm > 0)) >= MIN_REPEAT_CUSTOMERS:
            gg_fit, ll, gg_converged = fit_gamma_gamma(xm, mm)
            # Without a finite population mean the model cannot price anyone; fall back
            # to the customers' own averages rather than publish infinite values.
            if gg_fit.q > 1.0:
                gg, ll_gg = gg_fit, ll
                converged = converged and gg_converged
    return FitResult(bg, gg, n, n_repeat, ll_bg, ll_gg, converged, kind)


# --------------------------------------------------------------------------- value


def discounted_clv(
    params: BGNBDParams,
    gg: GammaGammaParams | None,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    m: ArrayLike,
    *,
    horizon_days: float,
    margin: float,
    annual_discount_rate: float,
    steps_per_year: int = 12,
    kind: ClvKind = ClvKind.BGNBD,
) -> float | NDArray[np.float64]:
    """Discounted expected margin over the next ``horizon_days``.

    The horizon is cut into steps of ``365.25 / steps_per_year`` days (the last one may be
    shorter). Each step's expected purchases (the increase of eq. 10 over the step) times
    the expected order value times ``margin`` is discounted by ``(1 + d)^k``, where
    ``d = (1 + annual_discount_rate)^(1/steps_per_year) − 1`` and ``k`` is the step's end
    in steps: cash is counted at the end of the step it falls in. Without a spend model
    (``gg`` None) the customer's own ``m`` is used as the order value.

    Examples
    --------
    >>> bg = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)  # CDNOW, weeks turned into days
    >>> gg = GammaGammaParams(p=6.25, q=3.74, v=15.44)

    Undiscounted, the CLV is the expected purchases times the expected order value times the
    margin (the definition); a 10 % yearly rate on cash spread over one year discounts it by a
    factor between 1/1.1 and 1:

    >>> flat = discounted_clv(bg, gg, 4, 200, 270, 60.0, horizon_days=365, margin=0.3, annual_discount_rate=0.0)
    >>> by_hand = expected_purchases(bg, 365, 4, 200, 270) * expected_spend(gg, 4, 60.0) * 0.3
    >>> bool(abs(flat - by_hand) < 1e-9)
    True
    >>> clv = discounted_clv(bg, gg, [0, 4], [0, 200], [270, 270], [0.0, 60.0],
    ...                      horizon_days=365, margin=0.3, annual_discount_rate=0.1)
    >>> bool(1 / 1.1 < clv[1] / flat < 1)
    True
    """
    x, t_x, T = _rfm(x, t_x, T)
    horizon = _times(horizon_days, "horizon_days")
    if horizon.ndim != 0:
        raise ValueError("horizon_days must be one number")
    _check_money(margin, annual_discount_rate, steps_per_year)
    if gg is None:
        _, mm = _spend(x, m)
        value = mm
    else:
        if gg.q <= 1.0:
            raise ValueError(f"the Gamma-Gamma population mean is infinite when q <= 1 (q = {gg.q})")
        xm, mm = _spend(x, m)
        value = _expected_spend(gg, xm, mm)
    return _out(_discounted_clv(params, value, x, t_x, T, float(horizon), margin, annual_discount_rate, steps_per_year,
                                ClvKind(kind)))


def _discounted_clv(params, value, x, t_x, T, horizon, margin, rate, steps_per_year, kind=ClvKind.BGNBD):
    step = YEAR_DAYS / steps_per_year
    # A hair of tolerance so a horizon of exactly k steps is not given a zero-length step k+1.
    n_steps = max(math.ceil(horizon / step - 1e-9), 0)
    if n_steps == 0:
        return np.zeros(np.broadcast(x, t_x, T, value).shape)
    ends = np.minimum(np.arange(1, n_steps + 1) * step, horizon)
    shape = (n_steps,) + (1,) * np.broadcast(x, t_x, T).ndim
    cumulative = _expected_purchases(params, ends.reshape(shape), x, t_x, T, kind)
    per_step = np.diff(cumulative, axis=0, prepend=0.0)
    discount = (1.0 + rate) ** (-(ends / step) / steps_per_year)
    purchases = np.tensordot(discount, per_step, axes=(0, 0))
    return purchases * value * margin


def predict(
    fit: FitResult,
    *,
    x: int,
    t_x: float,
    T: float,
    m: float,
    horizon_days: float,
    margin: float,
    annual_discount_rate: float,
) -> Prediction:
    """One customer's expected purchases, P(alive), order value and CLV over the horizon.

    Purchases and P(alive) are those of the fit's ``kind`` (BG/NBD or MBG/NBD).

    Examples
    --------
    >>> bg = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)  # CDNOW, weeks turned into days
    >>> gg = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    >>> fitted = FitResult(bg, gg, 2357, 946, -9582.4, -4000.0, True)
    >>> p = predict(fitted, x=4, t_x=200, T=270, m=60.0, horizon_days=365, margin=0.3, annual_discount_rate=0.1)

    The order value by hand (Gamma-Gamma, eq. 5 of Fader, Hardie & Lee 2005): the population
    mean v·p/(q−1) = 35.22 and the customer's own mean 60, weighted q−1 : p·x = 2.74 : 25.

    >>> round(p.expected_value, 2), round((2.74 * 15.44 * 6.25 / 2.74 + 25 * 60.0) / 27.74, 2)
    (57.55, 57.55)

    The purchases and P(alive) are those of :func:`expected_purchases` and :func:`p_alive`
    (checked against the ``lifetimes`` package in ``tests/unit/test_clv.py``):

    >>> bool(abs(p.expected_purchases - expected_purchases(bg, 365, 4, 200, 270)) < 1e-9)
    True
    >>> bool(abs(p.p_alive - p_alive(bg, 4, 200, 270)) < 1e-12)
    True

    A fit of kind MBG/NBD gives those of :func:`mbgnbd_expected_purchases` and :func:`mbgnbd_p_alive`:

    >>> modified = FitResult(bg, gg, 2357, 946, -9582.4, -4000.0, True, ClvKind.MBGNBD)
    >>> q = predict(modified, x=4, t_x=200, T=270, m=60.0, horizon_days=365, margin=0.3, annual_discount_rate=0.1)
    >>> bool(abs(q.expected_purchases - mbgnbd_expected_purchases(bg, 365, 4, 200, 270)) < 1e-9)
    True
    >>> bool(abs(q.p_alive - mbgnbd_p_alive(bg, 4, 200, 270)) < 1e-12)
    True
    """
    # One customer at a time is the streaming case: plain-float checks and a single hyp2f1
    # call over the step ends (the last of which gives the horizon's expected purchases)
    # keep it several times cheaper than going through the array functions.
    x, t_x, T, m, horizon = float(x), float(t_x), float(T), float(m), float(horizon_days)
    if not all(math.isfinite(v) for v in (x, t_x, T, m, horizon)):
        raise ValueError("x, t_x, T, m and horizon_days must be finite")
    if x < 0 or x != math.floor(x):
        raise ValueError("x (repeat purchases) must be a non-negative integer")
    if not 0.0 <= t_x <= T:
        raise ValueError("need 0 <= t_x <= T (recency within the customer's age)")
    if m < 0 or horizon < 0:
        raise ValueError("m and horizon_days must not be negative")
    _check_money(margin, annual_discount_rate, _PREDICT_STEPS_PER_YEAR)
    bg, gg, kind = fit.bgnbd, fit.gamma_gamma, ClvKind(fit.kind)
    value = m if gg is None else float(_expected_spend(gg, x, m))
    alive = float(_p_alive_core(bg.r, bg.alpha, bg.a, bg.b, x, t_x, T, kind))
    step = YEAR_DAYS / _PREDICT_STEPS_PER_YEAR
    n_steps = max(math.ceil(horizon / step - 1e-9), 0)
    if n_steps == 0:
        return Prediction(0.0, alive, value, 0.0)
    ends = np.minimum(np.arange(1, n_steps + 1) * step, horizon)
    cumulative = _expected_purchases(bg, ends, x, t_x, T, kind)
    per_step = cumulative.copy()
    per_step[1:] -= cumulative[:-1]
    discount = (1.0 + annual_discount_rate) ** (-(ends / step) / _PREDICT_STEPS_PER_YEAR)
    clv = float(discount @ per_step) * value * margin
    return Prediction(float(cumulative[-1]), alive, value, clv)


_PREDICT_STEPS_PER_YEAR = 12


# --------------------------------------------------------------------------- helpers


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float | np.floating | np.integer) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, not {value!r}")


def _rfm(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Validated float arrays of (x, t_x, T), broadcast together."""
    x = np.asarray(x, dtype=np.float64)
    t_x = np.asarray(t_x, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    x, t_x, T = np.broadcast_arrays(x, t_x, T)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t_x)) and np.all(np.isfinite(T))):
        raise ValueError("x, t_x and T must be finite")
    if np.any(x < 0) or np.any(x != np.floor(x)):
        raise ValueError("x (repeat purchases) must be a non-negative integer")
    if np.any(t_x < 0) or np.any(t_x > T):
        # t_x > T means the last purchase is after the observation time: the caller must
        # take T at or after the latest purchase it counted.
        raise ValueError("need 0 <= t_x <= T (recency within the customer's age)")
    return x, t_x, T


def _spend(x: ArrayLike, m: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    x, m = np.broadcast_arrays(x, m)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(m))):
        raise ValueError("x and m must be finite")
    if np.any(x < 0) or np.any(x != np.floor(x)):
        raise ValueError("x (repeat purchases) must be a non-negative integer")
    if np.any(m < 0):
        raise ValueError("m (average spend) must not be negative")
    return x, m


def _times(t: ArrayLike, name: str) -> NDArray[np.float64]:
    t = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return t


def _check_money(margin: float, rate: float, steps_per_year: int) -> None:
    if not (math.isfinite(margin) and 0.0 <= margin <= 1.0):
        raise ValueError(f"margin must be a fraction in [0, 1], not {margin!r}")
    if not (math.isfinite(rate) and rate >= 0.0):
        raise ValueError(f"annual_discount_rate must be finite and non-negative, not {rate!r}")
    if isinstance(steps_per_year, bool) or not isinstance(steps_per_year, int) or steps_per_year < 1:
        raise ValueError(f"steps_per_year must be a positive integer, not {steps_per_year!r}")


def _out(value: Any) -> float | NDArray[np.float64]:
    """A float for scalar inputs, an array otherwise."""
    arr = np.asarray(value, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr


def _finite_or_huge(value: float) -> float:
    # The optimisers cope with a large value far better than with inf or NaN.
    return float(value) if math.isfinite(value) else 1e300


def _minimize(objective, start: NDArray[np.float64]) -> tuple[NDArray[np.float64], bool]:
    """Minimise over log-parameters: L-BFGS-B, then Nelder-Mead from there if it stalls."""
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * start.size
    result = minimize(objective, start, method="L-BFGS-B", bounds=bounds)
    theta, success = result.x, bool(result.success)
    if not success:
        # L-BFGS-B with finite-difference gradients often stops on a line-search failure
        # near the optimum; a derivative-free polish settles it.
        result = minimize(
            objective,
            theta,
            method="Nelder-Mead",
            bounds=bounds,
            options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000},
        )
        theta, success = result.x, bool(result.success)
    at_bound = bool(np.any(np.abs(theta) > _LOG_BOUND - 1e-3))
    return np.asarray(theta, dtype=np.float64), success and not at_bound


# --------------------------------------------------------------------------- customers in the stream



@dataclass(frozen=True, slots=True)
class ClvModel:
    """A fitted, versioned model as the stream uses it: ``as_of_ms`` is the (event) time it was fitted as of."""

    fit: FitResult
    version: int
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class OrderSummary:
    """What the fit needs of one customer: their order count, first and last order time (epoch
    ms), gross order value and first order value (cents). Kept per customer by the stream."""

    orders: int
    first_ms: int
    last_ms: int
    gross_cents: int
    first_cents: int


def rfm(summaries: Sequence[OrderSummary], as_of_ms: int) -> tuple[NDArray[np.float64], ...]:
    """The ``(x, t_x, T, m)`` arrays (days, currency units) of these customers as of ``as_of_ms``.

    ``as_of_ms`` is the stream's time (its watermark, or an explicit date), never the wall
    clock, so a backfilled history gives the figures it would have given live. Customers
    whose first order is after ``as_of_ms`` are left out.

    Examples
    --------
    >>> s = [OrderSummary(3, 0, 10 * DAY_MS, 9_000, 1_000), OrderSummary(1, 5 * DAY_MS, 5 * DAY_MS, 500, 500)]
    >>> x, t_x, T, m = rfm(s, as_of_ms=30 * DAY_MS)
    >>> x.tolist(), t_x.tolist(), T.tolist(), m.tolist()
    ([2.0, 0.0], [10.0, 0.0], [30.0, 25.0], [40.0, 0.0])
    """
    rows = [s for s in summaries if s.orders > 0 and s.first_ms <= as_of_ms]
    if not rows:
        return tuple(np.zeros(0) for _ in range(4))
    a = np.array([(s.orders, s.first_ms, s.last_ms, s.gross_cents, s.first_cents) for s in rows], dtype=np.float64)
    x = a[:, 0] - 1
    first, last = a[:, 1], a[:, 2]
    t_x = (last - first) / DAY_MS
    T = np.maximum((as_of_ms - first) / DAY_MS, t_x)
    m = np.where(x > 0, (a[:, 3] - a[:, 4]) / 100 / np.maximum(x, 1), 0.0)
    return x, t_x, T, np.maximum(m, 0.0)


def customer_figures(
    summary: OrderSummary | None,
    fit: FitResult | None,
    *,
    as_of_ms: int,
    horizon_days: float,
    margin: float,
    annual_discount_rate: float,
) -> dict[str, float | None]:
    """One customer's predictive figures as of ``as_of_ms`` (None where there is no model or order).

    Examples
    --------
    >>> bg = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
    >>> fitted = FitResult(bg, GammaGammaParams(p=6.25, q=3.74, v=15.44), 2357, 946, -9582.4, -4000.0, True)
    >>> s = OrderSummary(5, 0, 200 * DAY_MS, 30_000, 6_000)   # x = 4 repeats of 60 each, t_x = 200, T = 270
    >>> f = customer_figures(s, fitted, as_of_ms=270 * DAY_MS, horizon_days=365, margin=0.3, annual_discount_rate=0.1)
    >>> p = predict(fitted, x=4, t_x=200, T=270, m=60.0, horizon_days=365, margin=0.3, annual_discount_rate=0.1)
    >>> f["expected_purchases"] == round(p.expected_purchases, 4), f["expected_order_value"]
    (True, 57.55)
    """
    empty: dict[str, float | None] = dict.fromkeys(
        ("expected_purchases", "p_alive", "expected_order_value", "predicted_clv")
    )
    if fit is None or summary is None or summary.orders < 1:
        return empty
    x = summary.orders - 1
    t_x = (summary.last_ms - summary.first_ms) / DAY_MS
    T = max((as_of_ms - summary.first_ms) / DAY_MS, t_x)
    m = max((summary.gross_cents - summary.first_cents) / 100 / x, 0.0) if x else 0.0
    p = predict(fit, x=x, t_x=t_x, T=T, m=m, horizon_days=horizon_days, margin=margin,
                annual_discount_rate=annual_discount_rate)
    return {
        "expected_purchases": round(p.expected_purchases, 4),
        "p_alive": round(p.p_alive, 4),
        "expected_order_value": round(p.expected_value, 2),
        "predicted_clv": round(p.predicted_clv, 2),
    }


# --------------------------------------------------------------------------- choosing the count model

#: The longest holdout whose purchases can be counted: a customer's orders per event-time day
#: are kept for ``StateLimits.value_days_kept`` (365) days behind their newest day, so every
#: day of a holdout of at most 364 days ending at the stream's time is still there.
MAX_HOLDOUT_DAYS = StateLimits().value_days_kept - 1
#: The default holdout: this share of the time between the earliest first order and the end.
HOLDOUT_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class OrderHistory:
    """One customer's order summary and their orders per event-time day (``day -> orders``; days
    more than :data:`MAX_HOLDOUT_DAYS` before the newest may be missing)."""

    summary: OrderSummary
    order_days: Mapping[int, int]


@dataclass(frozen=True, slots=True, eq=False)
class HoldoutSplit:
    """A history cut at ``split_ms`` (a day boundary) and observed up to ``as_of_ms``.

    Only customers whose first order is before the split take part. ``x``, ``t_x``, ``T`` are
    their calibration RFM (days, as of the split); ``actual`` their orders in the holdout,
    ``[split, as_of]``. ``estimated`` counts customers whose last calibration order day was no
    longer kept (more than 365 days before their newest), whose ``t_x`` is then an upper bound.
    """

    split_ms: int
    as_of_ms: int
    x: NDArray[np.float64]
    t_x: NDArray[np.float64]
    T: NDArray[np.float64]
    actual: NDArray[np.float64]
    estimated: int = 0

    @property
    def holdout_days(self) -> float:
        """Length of the holdout period in days (the prediction horizon ``t``)."""
        return (self.as_of_ms - self.split_ms) / DAY_MS


@dataclass(frozen=True, slots=True)
class HoldoutError:
    """How far predicted holdout purchases were from the actual ones: per customer (``mae``,
    ``rmse``) and in total (``total_error`` = predicted − actual, signed)."""

    mae: float
    rmse: float
    predicted_total: float
    actual_total: int
    total_error: float


@dataclass(frozen=True, slots=True)
class Candidate:
    """One count model fitted on the calibration period and judged on the holdout; ``error`` is
    None (and ``reason`` says why) when it could not be fitted."""

    kind: ClvKind
    fit: FitResult | None
    error: HoldoutError | None
    reason: str | None = None


def split_at(earliest_first_ms: int, as_of_ms: int, *, holdout_days: int | None = None) -> int:
    """Where to cut: the start of the day ``holdout_days`` before ``as_of_ms``, or by default the last
    :data:`HOLDOUT_FRACTION` of the time since the earliest first order (at most :data:`MAX_HOLDOUT_DAYS`).

    Raises ValueError when the holdout would leave no calibration period or cannot be counted.

    Examples
    --------
    A history from day 0 to noon of day 100: the last 25 % is 25 days, cut at the start of day 75.

    >>> end = 100 * DAY_MS + DAY_MS // 2
    >>> split_at(0, end) // DAY_MS, split_at(0, end, holdout_days=30) // DAY_MS
    (75, 70)
    >>> split_at(0, 10_000 * DAY_MS) // DAY_MS   # 2,500 days would be too long: 364
    9636
    """
    if holdout_days is not None:
        if not 1 <= holdout_days <= MAX_HOLDOUT_DAYS:
            raise ValueError(f"the holdout must be 1 to {MAX_HOLDOUT_DAYS} days (orders per day are kept "
                             f"{MAX_HOLDOUT_DAYS + 1} days), not {holdout_days}")
        length = holdout_days * DAY_MS
    else:
        length = min(round(HOLDOUT_FRACTION * (as_of_ms - earliest_first_ms)), MAX_HOLDOUT_DAYS * DAY_MS)
    split = (as_of_ms - length) // DAY_MS * DAY_MS
    if split <= earliest_first_ms:
        raise ValueError("the holdout would start before the first order: nothing is left to calibrate on")
    return int(split)


def calibration_holdout(histories: Sequence[OrderHistory], split_ms: int, as_of_ms: int) -> HoldoutSplit:
    """Each customer's calibration RFM as of ``split_ms`` and their actual orders from then to ``as_of_ms``.

    Day granularity: the holdout counts the orders on days ``>= split_ms`` (a day boundary).
    The first order's time is exact; so is the last calibration order's when nobody bought in
    the holdout (it is the summary's last order), otherwise it is taken at midday of its day.

    Examples
    --------
    Customer 1: first order at 6:00 of day 0, one on day 4, two on day 12; customer 2: one order
    on day 11, after the split (left out); customer 3: one order on day 3 only. Cut at day 10,
    observed to day 20:

    >>> h = [OrderHistory(OrderSummary(4, DAY_MS // 4, 12 * DAY_MS, 0, 0), {0: 1, 4: 1, 12: 2}),
    ...      OrderHistory(OrderSummary(1, 11 * DAY_MS, 11 * DAY_MS, 0, 0), {11: 1}),
    ...      OrderHistory(OrderSummary(1, 3 * DAY_MS, 3 * DAY_MS, 0, 0), {3: 1})]
    >>> s = calibration_holdout(h, 10 * DAY_MS, 20 * DAY_MS)
    >>> s.x.tolist(), s.t_x.tolist(), s.T.tolist(), s.actual.tolist(), s.holdout_days
    ([1.0, 0.0], [4.25, 0.0], [9.75, 7.0], [2.0, 0.0], 10.0)
    """
    if split_ms % DAY_MS:
        raise ValueError("split_ms must be the start of a day")
    if not split_ms <= as_of_ms:
        raise ValueError("the split must be at or before as_of_ms")
    split_day = split_ms // DAY_MS
    rows: list[tuple[float, float, float, float]] = []
    estimated = 0
    for h in histories:
        s = h.summary
        if s.orders < 1 or s.first_ms >= split_ms:
            continue
        # (orders after as_of_ms exist only when it is earlier than the stream's time: not calibration either)
        late = sum(n for d, n in h.order_days.items() if d >= split_day)
        seen = sum(n for d, n in h.order_days.items() if split_day <= d <= as_of_ms // DAY_MS)
        cal = max(s.orders - late, 1)
        if late == 0:
            last = s.last_ms
        else:
            before = [d for d, n in h.order_days.items() if d < split_day and n > 0]
            if cal == 1:
                last = s.first_ms
            elif before:
                last = max(max(before) * DAY_MS + DAY_MS // 2, s.first_ms)
            else:  # the calibration orders after the first are older than the days kept: at the latest then
                estimated += 1
                newest = max(h.order_days)
                last = min(max((newest - MAX_HOLDOUT_DAYS - 1) * DAY_MS + DAY_MS // 2, s.first_ms), split_ms)
        x = cal - 1
        rows.append((x, (last - s.first_ms) / DAY_MS if x else 0.0, (split_ms - s.first_ms) / DAY_MS, seen))
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return HoldoutSplit(split_ms, as_of_ms, a[:, 0], a[:, 1], a[:, 2], a[:, 3], estimated)


def holdout_error(predicted: ArrayLike, actual: ArrayLike) -> HoldoutError:
    """Per-customer and total errors of predicted holdout purchases.

    Examples
    --------
    >>> holdout_error([0.5, 2.0, 1.0], [0, 3, 1])
    HoldoutError(mae=0.5, rmse=0.6455, predicted_total=3.5, actual_total=4, total_error=-0.5)
    """
    p = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    if p.shape != y.shape or p.size == 0:
        raise ValueError("need one prediction per customer, and at least one customer")
    diff = p - y
    return HoldoutError(
        mae=round(float(np.mean(np.abs(diff))), 4),
        rmse=round(float(np.sqrt(np.mean(diff**2))), 4),
        predicted_total=round(float(p.sum()), 2),
        actual_total=int(round(float(y.sum()))),
        total_error=round(float(diff.sum()), 2),
    )


def compare_kinds(split: HoldoutSplit, kinds: Sequence[ClvKind] = tuple(ClvKind)) -> list[Candidate]:
    """Fit each count model on the calibration period and score its holdout predictions.

    Each candidate's prediction for a customer is its conditional expected number of purchases
    over the holdout's length given their calibration history.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> n = 400
    >>> T = rng.uniform(100, 300, n); x = rng.poisson(T / 60.0) * (rng.random(n) < 0.7)
    >>> t_x = np.where(x > 0, T * rng.uniform(0.3, 1.0, n), 0.0)
    >>> split = HoldoutSplit(300 * DAY_MS, 360 * DAY_MS, x, t_x, T, rng.poisson(0.6, n).astype(float))
    >>> [(c.kind.value, c.error is not None) for c in compare_kinds(split)]
    [('bgnbd', True), ('mbgnbd', True)]
    """
    out = []
    for kind in kinds:
        kind = ClvKind(kind)
        result = fit(split.x, split.t_x, split.T, None, kind=kind)
        if isinstance(result, InsufficientData):
            out.append(Candidate(kind, None, None, f"calibration period: {result.reason}"))
            continue
        predicted = _expected_purchases(result.bgnbd, split.holdout_days, split.x, split.t_x, split.T, kind)
        out.append(Candidate(kind, result, holdout_error(predicted, split.actual)))
    return out


def best_candidate(candidates: Sequence[Candidate]) -> Candidate | None:
    """The candidate with the lowest per-customer holdout MAE (RMSE breaks ties); None if none was fitted.

    Examples
    --------
    >>> e = lambda mae: HoldoutError(mae, 1.0, 0.0, 0, 0.0)
    >>> best_candidate([Candidate(ClvKind.BGNBD, None, e(0.31)), Candidate(ClvKind.MBGNBD, None, e(0.29))]).kind
    <ClvKind.MBGNBD: 'mbgnbd'>
    """
    fitted = [c for c in candidates if c.error is not None]
    if not fitted:
        return None
    return min(fitted, key=lambda c: (c.error.mae, c.error.rmse) if c.error else (math.inf, math.inf))
