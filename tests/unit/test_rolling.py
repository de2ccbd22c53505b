"""Rolling revenue: window sums are computed on read from event-time day buckets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.rolling import DAY_MS, bucket_of, prune, window_sum

DAYS = st.integers(min_value=-50, max_value=1_000)
AMOUNTS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
REVENUE = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
NOW = st.integers(min_value=0, max_value=1_000 * DAY_MS)
WINDOW = st.integers(min_value=0, max_value=400)


def brute_force(purchases: list[tuple[int, float]], now_ms: int, window_days: int) -> float:
    """The window sum straight from the purchases, without buckets."""
    today = now_ms // DAY_MS
    return max(math.fsum(a for ts, a in purchases if today - window_days < ts // DAY_MS <= today), 0.0)


def bucketise(purchases: list[tuple[int, float]]) -> dict[int, float]:
    buckets: dict[int, float] = {}
    for ts, amount in purchases:
        day = bucket_of(ts)
        buckets[day] = buckets.get(day, 0.0) + amount
    return buckets


@given(st.dictionaries(DAYS, AMOUNTS), NOW, WINDOW)
def test_window_sums_are_never_negative(buckets, now, window):
    assert window_sum(buckets, now, window) >= 0.0


@given(st.dictionaries(DAYS, REVENUE), NOW, WINDOW, WINDOW)
def test_window_sums_grow_with_the_window_when_there_are_no_refunds(buckets, now, w1, w2):
    short, long = sorted((w1, w2))
    assert window_sum(buckets, now, short) <= window_sum(buckets, now, long)


@given(
    st.lists(st.tuples(st.integers(min_value=0, max_value=400 * DAY_MS), st.integers(1, 10_000)), max_size=30),
    NOW,
    WINDOW,
)
def test_bucketed_sums_equal_summing_the_purchases_themselves(purchases, now, window):
    # integer amounts: both sides are then exact, whatever the grouping into buckets
    purchases = [(ts, float(a)) for ts, a in purchases]
    assert window_sum(bucketise(purchases), now, window) == brute_force(purchases, now, window)


@given(
    st.dictionaries(DAYS, REVENUE),
    st.integers(min_value=0, max_value=500),
    st.integers(min_value=0, max_value=DAY_MS - 1),
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=0, max_value=120),
    st.floats(min_value=0.01, max_value=1e4, allow_nan=False),
)
def test_a_late_purchase_lands_in_the_window_of_its_own_event_time(buckets, today, ms_into_day, window, age, amount):
    now = today * DAY_MS + ms_into_day
    # The purchase happened `age` days before today but is only applied now.
    event_ts = (today - age) * DAY_MS + 1234
    late = dict(buckets)
    late[bucket_of(event_ts)] = late.get(bucket_of(event_ts), 0.0) + amount
    before, after = window_sum(buckets, now, window), window_sum(late, now, window)
    if age < window:
        assert after == pytest.approx(before + amount, rel=1e-12, abs=1e-9)
    else:
        assert after == before
    # ... and the purchase leaves the window once its own day has aged out, however late it came.
    expiry = (today - age + window) * DAY_MS
    assert window_sum(late, expiry, window) == window_sum(buckets, expiry, window)


@given(
    st.dictionaries(DAYS, AMOUNTS),
    NOW,
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=200 * DAY_MS),
)
def test_pruning_changes_no_window_within_keep_days_now_or_later(buckets, now, keep, window, later):
    window = min(window, keep)
    pruned = prune(buckets, now, keep)
    assert set(pruned) <= set(buckets)
    for read_at in (now, now + later):
        assert window_sum(pruned, read_at, window) == window_sum(buckets, read_at, window)


def test_pruning_drops_exactly_the_days_no_window_can_reach():
    now = 100 * DAY_MS + 10
    buckets = {day: 1.0 for day in range(60, 105)}
    assert sorted(prune(buckets, now, 30)) == list(range(71, 105))


def test_days_ahead_of_the_reader_count_only_once_reached():
    buckets = {5: 10.0}
    assert window_sum(buckets, 4 * DAY_MS, 30) == 0.0
    assert window_sum(buckets, 5 * DAY_MS, 30) == 10.0
    assert prune(buckets, 4 * DAY_MS, 1) == buckets


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="window_days"):
        window_sum({}, 0, -1)
    with pytest.raises(ValueError, match="keep_days"):
        prune({}, 0, -1)
    with pytest.raises(ValueError, match="bucket_ms"):
        bucket_of(5, 0)
