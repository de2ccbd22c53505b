"""Value attribution and money rules: shares always add up to the purchase, windows never go negative."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import Invalid, Reason, TouchpointEvent
from models.value import ATTRIBUTION_MODELS, attribute, check_money, rolling_value

DAY = 86_400_000
touches = st.lists(
    st.tuples(st.integers(0, 60 * DAY), st.sampled_from(["ad_click", "site_visit", "signup"]),
              st.sampled_from(["", "email", "social"])),
    max_size=20,
).map(sorted)


@settings(max_examples=300)
@given(touches=touches, purchase=st.integers(0, 60 * DAY), cents=st.integers(0, 10**7),
       half_life=st.integers(3_600_000, 30 * DAY))
def test_every_model_splits_exactly_the_purchase_value_over_eligible_touches(touches, purchase, cents, half_life):
    shares = attribute(touches, purchase, cents, lookback_ms=30 * DAY, half_life_ms=half_life)
    eligible = [purchase - 30 * DAY <= ts < purchase for ts, _, _ in touches]
    for model in ATTRIBUTION_MODELS:
        assert all(s >= 0 for s in shares[model])
        assert all(s == 0 for s, ok in zip(shares[model], eligible, strict=True) if not ok)
        assert sum(shares[model]) == pytest.approx(cents if any(eligible) else 0, rel=1e-9, abs=1e-6)


@given(days=st.dictionaries(st.integers(0, 800), st.integers(-10**6, 10**6)), now=st.integers(0, 900))
def test_rolling_windows_are_never_negative_even_with_refunds(days, now):
    out = rolling_value(days, {d: 1 for d in days}, now * DAY, [30, 90, 365])
    assert all(v >= 0 for v in out.values())


def test_currency_rules():
    usd = TouchpointEvent("e", "c", "purchase", 0, value=10.0, currency="USD")
    assert check_money(usd, "order", currency="USD", rates={}) is usd
    assert check_money(usd, None, currency="EUR", rates={"USD": 0.5}).value == 5.0
    missing = check_money(TouchpointEvent("e", "c", "refund", 0), "refund", currency="EUR", rates={})
    assert isinstance(missing, Invalid) and missing.reason is Reason.MISSING_FIELD


@given(days=st.dictionaries(st.integers(0, 800), st.integers(-10**6, 10**6)), now=st.integers(0, 900),
       windows=st.lists(st.integers(1, 400), min_size=1, max_size=4, unique=True))
def test_rolling_windows_are_the_window_sums_of_the_day_buckets(days, now, windows):
    from models.rolling import window_sum

    out = rolling_value(days, {d: 1 for d in days}, now * DAY, windows)
    for w in windows:
        assert out[f"revenue_{w}d"] == round(window_sum(days, now * DAY, w), 2)
        assert out[f"orders_{w}d"] == int(window_sum({d: 1.0 for d in days}, now * DAY, w))
