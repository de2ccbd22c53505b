"""Realistic, reproducible touchpoint traffic for ``journey simulate``, and a paced Kafka publisher for it.

Planted upsell rule (``upsell_signal=True``): a customer who completed onboarding upgrades with
probability ``UPGRADE_P_TRAIT`` (30 %) if they viewed >= 3 products before their first purchase OR
completed onboarding within 24 h of their first purchase, else ``UPGRADE_P_BASE`` (6 %); with
``upsell_signal=False`` every onboarded customer upgrades with ``UPGRADE_P_FLAT`` (15 %), independent
of everything. Both traits are visible in the events themselves, so a model can learn the rule.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import itertools
import math
import operator
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any

import orjson

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Acquisition mix of a mid-sized web shop: search and social dominate, email is the owned list.
CHANNELS = ("search", "social", "email", "display", "direct", "referral")
CHANNEL_WEIGHTS = (0.30, 0.25, 0.12, 0.10, 0.15, 0.08)
PAID_CHANNELS = frozenset({"search", "social", "display"})
# Later sessions usually come back through the acquisition channel; otherwise mostly typed-in or newsletter.
P_SAME_CHANNEL = 0.8
RETURN_CHANNELS = ("direct", "email", "search")
RETURN_CHANNEL_WEIGHTS = (0.5, 0.3, 0.2)

# Paid traffic starts with a tracked ad click; a few clicks bounce before the landing page loads.
P_AD_CLICK_PAID = 0.85
P_LANDING_AFTER_CLICK = 0.9
# Unpaid visitors occasionally click a retargeting ad on a later day.
P_AD_CLICK_UNPAID = 0.1
# Extra awareness visits (0..3) before the customer decides anything: people come back a few times.
EXTRA_VISIT_WEIGHTS = (0.45, 0.30, 0.15, 0.10)

# The funnel: probability of getting past each step (the rest go silent there).
P_PAST_AWARENESS = 0.5  # half of all visitors never come back after browsing the landing pages
P_TO_CART = 0.5  # of those who signed up and looked at products
P_TO_CHECKOUT = 0.7  # cart abandonment ~30 %
P_TO_PURCHASE = 0.85  # payment drop-off at checkout
P_ONBOARD = 0.85  # buyers who finish setting up the subscription product
P_REVIEW = 0.4  # onboarded customers who write a review (advocacy)
# Products viewed in the consideration session(s): 1..5, most people look at one or two.
PRODUCT_VIEW_WEIGHTS = (0.40, 0.28, 0.15, 0.10, 0.07)
# Repeat buyers: share of onboarded customers, and how many more orders (1..4) they place.
P_REPEAT = 0.35
REPEAT_COUNT_WEIGHTS = (0.45, 0.30, 0.15, 0.10)
# Refunds are rare; most are full, the rest partial (one item of the order sent back).
P_REFUND = 0.06
P_FULL_REFUND = 0.7

# The planted upsell signal (see the module docstring).
UPSELL_MIN_VIEWS = 3
UPSELL_FAST_ONBOARDING_MS = DAY_MS
UPGRADE_P_TRAIT = 0.30
UPGRADE_P_BASE = 0.06
UPGRADE_P_FLAT = 0.15  # about the blended rate of the planted rule, so totals look alike either way

# Money: basket ~ lognormal around 60 EUR; upgrades are the annual plan, priced around 96 EUR.
CURRENCY = "EUR"
PURCHASE_MEDIAN, PURCHASE_SIGMA = 60.0, 0.5
UPGRADE_MEDIAN, UPGRADE_SIGMA = 96.0, 0.25

# Delays between steps as (median ms, lognormal sigma, min ms, max ms): minutes inside a session,
# hours to days between sessions, days to weeks in retention.
D_LANDING = (8 * SECOND_MS, 0.6, 1 * SECOND_MS, 2 * MINUTE_MS)
D_RETURN_VISIT = (20 * HOUR_MS, 1.2, 30 * MINUTE_MS, 10 * DAY_MS)
D_TO_CONSIDERATION = (3 * HOUR_MS, 1.6, 1 * MINUTE_MS, 14 * DAY_MS)
D_IN_SESSION = (40 * SECOND_MS, 0.8, 2 * SECOND_MS, 10 * MINUTE_MS)
D_VIEW = (2 * MINUTE_MS, 1.0, 5 * SECOND_MS, 40 * MINUTE_MS)
D_SIGNUP = (3 * MINUTE_MS, 0.8, 20 * SECOND_MS, 30 * MINUTE_MS)
D_TO_CART = (40 * MINUTE_MS, 2.0, 30 * SECOND_MS, 10 * DAY_MS)
D_CHECKOUT = (5 * MINUTE_MS, 1.0, 10 * SECOND_MS, 2 * HOUR_MS)
D_PAY = (90 * SECOND_MS, 0.6, 10 * SECOND_MS, 20 * MINUTE_MS)
D_ONBOARD = (48 * HOUR_MS, 0.9, 10 * MINUTE_MS, 21 * DAY_MS)
D_REPEAT = (8 * DAY_MS, 0.7, 1 * DAY_MS, 60 * DAY_MS)
D_UPGRADE = (5 * DAY_MS, 0.8, 1 * HOUR_MS, 60 * DAY_MS)
D_REFUND = (4 * DAY_MS, 0.6, 2 * HOUR_MS, 30 * DAY_MS)
D_REVIEW = (7 * DAY_MS, 0.7, 1 * HOUR_MS, 60 * DAY_MS)
# A gap this long between two client events starts a new session (analytics convention).
SESSION_GAP_MS = 30 * MINUTE_MS

# Faults: late records are offline-app syncs (minutes to hours); duplicates are client/producer
# retries seconds to minutes after the original.
D_LATE = (25 * MINUTE_MS, 1.2, 1 * MINUTE_MS, 8 * HOUR_MS)
D_DUPLICATE = (20 * SECOND_MS, 1.5, 1 * SECOND_MS, 30 * MINUTE_MS)
FUTURE_SKEW_MS = 30 * DAY_MS  # how far ahead the "clock is wrong" malformed records are
OVERSIZED_BYTES = 24 * 1024  # larger than any sane payload limit (the worker's default is 16 KiB)

# Who sends the event decides its timestamp format: browsers send toISOString() ("Z"), some
# front-ends local time with an offset, the apps epoch milliseconds, the billing backend an offset.
PLATFORMS = ("web", "ios", "android")
PLATFORM_WEIGHTS = (0.6, 0.22, 0.18)
BACKEND_TOUCHPOINTS = frozenset({"purchase", "upgrade", "refund"})
_TS_ZULU, _TS_EPOCH, _TS_UTC, _TS_CET, _TS_CEST = range(5)
WEB_TS_WEIGHTS = (0.85, 0.05, 0.10)  # Z, +01:00, +02:00
APP_TS_WEIGHTS = (0.9, 0.1)  # epoch ms, Z
BACKEND_TS_WEIGHTS = (0.6, 0.4)  # +00:00, +02:00
_TS_ZONES = {_TS_ZULU: (0, "Z"), _TS_UTC: (0, "+00:00"), _TS_CET: (60, "+01:00"), _TS_CEST: (120, "+02:00")}

LANDING_PAGES = ("/", "/pricing", "/products", "/blog/sleep-better", "/sale", "/how-it-works")
SIGNUP_METHODS = ("email", "google", "apple")
UPGRADE_PLANS = ("annual", "pro")
REFUND_REASONS = ("damaged", "not_as_described", "changed_mind", "late_delivery")
CATALOG_SIZE = 400
_SKUS = tuple(f"SKU-{n:04d}" for n in range(CATALOG_SIZE))
_SKU_PAGES = tuple(f"/products/{sku.lower()}" for sku in _SKUS)
REVIEW_RATING_WEIGHTS = (0.05, 0.05, 0.12, 0.33, 0.45)  # 1..5 stars, reviews skew positive

MALFORMED_KINDS = (
    "not_utf8",
    "not_json",
    "json_array",
    "missing_event_id",
    "customer_id_number",
    "unknown_touchpoint",
    "negative_value",
    "future_timestamp",
    "bad_timestamp",
    "oversized",
)
UNKNOWN_TOUCHPOINTS = ("teleport", "page_view", "Purchase", "add-to-cart")

_Dist = tuple[tuple[Any, ...], tuple[float, ...]]


def _dist(values: tuple[Any, ...], weights: tuple[float, ...]) -> _Dist:
    """Values with cumulative weights, so a draw is one bisect (random.choices redoes the sums each call)."""
    return values, tuple(itertools.accumulate(weights))


def _one(rand: Any, seq: Any) -> Any:
    """One element of a sequence, uniformly (Random.choice goes through the slower randbelow)."""
    return seq[int(rand() * len(seq))]


def _pick(rand: Any, dist: _Dist) -> Any:
    values, cum = dist
    return values[bisect.bisect(cum, rand() * cum[-1])]


_CHANNEL_DIST = _dist(CHANNELS, CHANNEL_WEIGHTS)
_RETURN_CHANNEL_DIST = _dist(RETURN_CHANNELS, RETURN_CHANNEL_WEIGHTS)
_EXTRA_VISIT_DIST = _dist((0, 1, 2, 3), EXTRA_VISIT_WEIGHTS)
_PRODUCT_VIEW_DIST = _dist((1, 2, 3, 4, 5), PRODUCT_VIEW_WEIGHTS)
_REPEAT_COUNT_DIST = _dist((1, 2, 3, 4), REPEAT_COUNT_WEIGHTS)
_RATING_DIST = _dist((1, 2, 3, 4, 5), REVIEW_RATING_WEIGHTS)
_PLATFORM_DIST = _dist(PLATFORMS, PLATFORM_WEIGHTS)
_WEB_TS_DIST = _dist((_TS_ZULU, _TS_CET, _TS_CEST), WEB_TS_WEIGHTS)
_APP_TS_DIST = _dist((_TS_EPOCH, _TS_ZULU), APP_TS_WEIGHTS)
_BACKEND_TS_DIST = _dist((_TS_UTC, _TS_CEST), BACKEND_TS_WEIGHTS)
_PLATFORM_TS_DIST = {"web": _WEB_TS_DIST, "ios": _APP_TS_DIST, "android": _APP_TS_DIST}

ID_BLOCK = 4096  # event ids per block of random bits
_EPOCH = datetime(1970, 1, 1)  # naive on purpose: isoformat() then has no suffix to strip
# Standard-normal quantiles: a table lookup is ~6x cheaper than Random.gauss, and 2**14 levels
# (|z| <= 3.8) are plenty for delays and prices.
_NORMAL_BITS = 14
_NORMAL = tuple(NormalDist().inv_cdf((k + 0.5) / (1 << _NORMAL_BITS)) for k in range(1 << _NORMAL_BITS))


@dataclass(frozen=True, slots=True)
class SimRecord:
    """One message as published: key, value bytes, what kind of record it is, and its event time."""

    key: bytes
    value: bytes
    kind: str  # "event" | "duplicate" | "late" | "malformed"
    event_time_ms: int  # for malformed records: when it was generated


@dataclass(frozen=True, slots=True)
class SimCustomer:
    """Ground truth of one simulated customer, as published up to ``now_ms``."""

    customer_id: str
    touchpoints: tuple[tuple[str, int], ...]  # (touchpoint, event_time_ms), event-time order
    dropped_after: str | None  # stage they went silent in; None if advocacy reached or still running
    upgraded: bool
    # Anonymous browsing before signup (``anonymous_share``): the devices' anonymous ids, and which
    # of them an event links to the customer (the signup; a second device at the next event after it).
    devices: tuple[str, ...] = ()
    linked: bool = False  # every device is linked to the customer by some event (else: never signed up)

    def anonymous_before(self) -> int | None:
        """Events before this event time went out under an anonymous id alone (None: none did)."""
        if not self.devices:
            return None
        return next((t for tp, t in self.touchpoints if tp == "signup"), 1 << 62)


@dataclass
class PublishSummary:
    """What ``publish`` did."""

    sent: int
    by_kind: dict[str, int]
    seconds: float
    rate: float  # achieved records/s


class PublishError(RuntimeError):
    """The records could not be delivered to Kafka."""


@dataclass(slots=True)
class _Plan:
    """Every planned (published) event of every customer, as flat parallel lists (cheap to sort)."""

    times: list[int]
    customer: list[int]
    touchpoint: list[str]
    channel: list[str | None]
    extra: list[tuple[float | None, dict[str, Any] | None] | None]


def _delay(rng: random.Random, spec: tuple[float, float, int, int]) -> int:
    median, sigma, low, high = spec
    d = int(median * math.exp(sigma * _NORMAL[rng.getrandbits(_NORMAL_BITS)]))
    return low if d < low else high if d > high else d


def _money(rng: random.Random, median: float, sigma: float) -> float:
    return round(median * math.exp(sigma * _NORMAL[rng.getrandbits(_NORMAL_BITS)]), 2)


# (event time, touchpoint, channel, value, properties) of one customer, in any order
Planned = list[tuple[int, str, str | None, float | None, dict[str, Any] | None]]


def _journey(rng: random.Random, idx: int, start: int, upsell_signal: bool, ev: Planned) -> str | None:
    """Plan one customer's whole journey from ``start`` into ``ev`` (any order); return the stage they go silent in."""
    rand = rng.random
    acq = _pick(rand, _CHANNEL_DIST)

    def session_channel() -> str:
        return acq if rand() < P_SAME_CHANNEL else _pick(rand, _RETURN_CHANNEL_DIST)

    def new_session(t: int) -> tuple[int, str]:
        """A site_visit opening a session at ``t``; returns when the next action happens and its channel."""
        ch = session_channel()
        ev.append((t, "site_visit", ch, None, None))
        return t + _delay(rng, D_IN_SESSION), ch

    # Awareness: an ad click and/or landing page, maybe a few more visits on later days.
    t = start
    if acq in PAID_CHANNELS and rand() < P_AD_CLICK_PAID:
        ev.append((t, "ad_click", acq, None, {"campaign": f"{acq}-{1 + int(rand() * 12):02d}"}))
        if rand() < P_LANDING_AFTER_CLICK:
            t += _delay(rng, D_LANDING)
            ev.append((t, "site_visit", acq, None, {"page": _one(rand, LANDING_PAGES)}))
    else:
        props = {"page": _one(rand, LANDING_PAGES)} if rand() < 0.6 else None
        ev.append((t, "site_visit", acq, None, props))
    for _ in range(_pick(rand, _EXTRA_VISIT_DIST)):
        t += _delay(rng, D_RETURN_VISIT)
        if acq not in PAID_CHANNELS and rand() < P_AD_CLICK_UNPAID:
            ev.append((t, "ad_click", "display", None, {"campaign": "retargeting"}))
            t += _delay(rng, D_LANDING)
        ev.append((t, "site_visit", session_channel(), None, None))
    if rand() >= P_PAST_AWARENESS:
        return "awareness"

    # Consideration: a new session with 1-5 product views, signing up somewhere along the way.
    t, ch = new_session(t + _delay(rng, D_TO_CONSIDERATION))
    n_views = _pick(rand, _PRODUCT_VIEW_DIST)
    signup_at = int(rand() * (n_views + 1))
    skus = []
    for k in range(n_views + 1):
        if k == signup_at:
            t += _delay(rng, D_SIGNUP)
            ev.append((t, "signup", ch, None, {"method": _one(rand, SIGNUP_METHODS)}))
        if k < n_views:
            t += _delay(rng, D_VIEW)
            n_sku = int(rand() * CATALOG_SIZE)
            skus.append(_SKUS[n_sku])
            ev.append((t, "product_view", ch, None, {"sku": _SKUS[n_sku], "page": _SKU_PAGES[n_sku]}))
    if rand() >= P_TO_CART:
        return "consideration"

    # Purchase: cart (same or a later session), checkout, payment.
    gap = _delay(rng, D_TO_CART)
    if gap >= SESSION_GAP_MS:
        t, ch = new_session(t + gap)
    else:
        t += gap
    items = 1 + (rand() < 0.3)
    ev.append((t, "add_to_cart", ch, None, {"sku": _one(rand, skus), "qty": 1}))
    if rand() >= P_TO_CHECKOUT:
        return "purchase"
    t += _delay(rng, D_CHECKOUT)
    ev.append((t, "checkout", ch, None, {"items": items}))
    if rand() >= P_TO_PURCHASE:
        return "purchase"
    t += _delay(rng, D_PAY)
    first_purchase = t
    amount = _money(rng, PURCHASE_MEDIAN, PURCHASE_SIGMA)
    purchases = [(t, amount, f"o{idx:06d}-1")]
    ev.append((t, "purchase", ch, amount, {"order_id": purchases[0][2], "items": items}))
    if rand() >= P_ONBOARD:
        return "purchase"

    # Retention: onboarding, then independent branches (repeat orders, upgrade, refund, review).
    t_on, ch = new_session(t + _delay(rng, D_ONBOARD))
    ev.append((t_on, "onboarding_complete", ch, None, None))
    trait = n_views >= UPSELL_MIN_VIEWS or t_on - first_purchase <= UPSELL_FAST_ONBOARDING_MS

    if rand() < P_REPEAT:
        tr = first_purchase
        for n in range(_pick(rand, _REPEAT_COUNT_DIST)):
            tr += _delay(rng, D_REPEAT)
            ts, ch = new_session(tr)
            ev.append((ts, "add_to_cart", ch, None, {"sku": _one(rand, _SKUS), "qty": 1}))
            ts += _delay(rng, D_CHECKOUT)
            ev.append((ts, "checkout", ch, None, {"items": 1}))
            ts += _delay(rng, D_PAY)
            amount = _money(rng, PURCHASE_MEDIAN, PURCHASE_SIGMA)
            order = f"o{idx:06d}-{n + 2}"
            purchases.append((ts, amount, order))
            ev.append((ts, "purchase", ch, amount, {"order_id": order, "items": 1}))

    p_upgrade = (UPGRADE_P_TRAIT if trait else UPGRADE_P_BASE) if upsell_signal else UPGRADE_P_FLAT
    if rand() < p_upgrade:
        price = _money(rng, UPGRADE_MEDIAN, UPGRADE_SIGMA)
        ev.append((t_on + _delay(rng, D_UPGRADE), "upgrade", None, price, {"plan": _one(rand, UPGRADE_PLANS)}))

    if rand() < P_REFUND:
        t_paid, amount, order = _one(rand, purchases)
        if rand() >= P_FULL_REFUND:
            amount = math.floor(amount * (0.2 + 0.7 * rand()) * 100) / 100  # floor: never above the order
        props = {"order_id": order, "reason": _one(rand, REFUND_REASONS)}
        ev.append((t_paid + _delay(rng, D_REFUND), "refund", None, amount, props))

    if rand() >= P_REVIEW:
        return "retention"
    # Advocacy
    tv, ch = new_session(t_on + _delay(rng, D_REVIEW))
    ev.append((tv, "review", ch, None, {"rating": _pick(rand, _RATING_DIST)}))
    return None


_by_time = operator.itemgetter(0)


def _plan_customer(
    rng: random.Random, idx: int, cid: str, start: int, now_ms: int, upsell_signal: bool, plan: _Plan
) -> SimCustomer:
    """Plan one journey, append its events up to ``now_ms`` to ``plan``, and return its ground truth."""
    ev: Planned = []
    dropped = _journey(rng, idx, start, upsell_signal, ev)
    ev.sort(key=_by_time)
    touchpoints: list[tuple[str, int]] = []
    prev = -1
    upgraded = False
    cut = False
    times, customer, tps, chans, extras = plan.times, plan.customer, plan.touchpoint, plan.channel, plan.extra
    for t, tp, ch, value, props in ev:
        if t <= prev:  # independent retention branches may land on the same millisecond
            t = prev + 1
        if t > now_ms:
            cut = True
            break
        prev = t
        touchpoints.append((tp, t))
        upgraded = upgraded or tp == "upgrade"
        times.append(t)
        customer.append(idx)
        tps.append(tp)
        chans.append(ch)
        extras.append(None if value is None and props is None else (value, props))
    return SimCustomer(cid, tuple(touchpoints), None if cut else dropped, upgraded)


_MINUTE_PREFIX: dict[int, str] = {}  # "YYYY-MM-DDTHH:MM:" per minute; formatting dates is the slow part


def _timestamp(t_ms: int, fmt: int) -> str | int:
    """Event time in the given wire format (exact to the millisecond)."""
    if fmt == _TS_EPOCH:
        return t_ms
    offset, suffix = _TS_ZONES[fmt]
    minute, rest = divmod(t_ms + offset * MINUTE_MS, MINUTE_MS)
    prefix = _MINUTE_PREFIX.get(minute)
    if prefix is None:
        if len(_MINUTE_PREFIX) > 1_000_000:  # a year of minutes per zone: keep long-lived processes bounded
            _MINUTE_PREFIX.clear()
        prefix = _MINUTE_PREFIX[minute] = (_EPOCH + timedelta(minutes=minute)).isoformat()[:17]
    sec, ms = divmod(rest, 1000)
    return f"{prefix}{sec:02d}.{ms:03d}{suffix}"


def _event_id(rng: random.Random) -> str:
    """A version-4-shaped UUID from the seeded generator (uuid.UUID() is several times slower)."""
    h = rng.getrandbits(128).to_bytes(16).hex()
    return "-".join((h[:8], h[8:12], "4" + h[13:16], "a" + h[17:20], h[20:]))


def _malformed(kind: str, doc: dict[str, Any], rng: random.Random, now_ms: int, t_ms: int) -> bytes:
    """A realistic but invalid payload derived from a valid event ``doc``."""
    bad = dict(doc)
    if kind == "not_utf8":
        # A legacy client encoding its JSON text as Latin-1.
        bad["properties"] = {"page": "/produkte/grüner-tee", "city": "Zürich"}
        return orjson.dumps(bad).decode("utf-8").encode("latin-1")
    if kind == "not_json":
        raw = orjson.dumps(bad)
        if rng.random() < 0.5:
            return raw[: len(raw) // 2]  # a body cut off mid-write
        return f"event_id={bad['event_id']}&customer_id={bad['customer_id']}&touchpoint={bad['touchpoint']}".encode()
    if kind == "json_array":
        return orjson.dumps([bad])  # a batch endpoint's body forwarded as one message
    if kind == "missing_event_id":
        del bad["event_id"]
    elif kind == "customer_id_number":
        bad["customer_id"] = int("".join(ch for ch in bad["customer_id"] if ch.isdigit()) or 0)
    elif kind == "unknown_touchpoint":
        bad["touchpoint"] = rng.choice(UNKNOWN_TOUCHPOINTS)
    elif kind == "negative_value":
        # Refunds sent as negative amounts: the classic sign bug.
        bad["touchpoint"] = "refund"
        bad.pop("properties", None)
        bad["value"] = -max(bad.get("value") or _money(rng, PURCHASE_MEDIAN, PURCHASE_SIGMA), 0.01)
        bad["currency"] = CURRENCY
    elif kind == "future_timestamp":
        bad["timestamp"] = _timestamp(now_ms + FUTURE_SKEW_MS, _TS_ZULU)
    elif kind == "bad_timestamp":
        when = _EPOCH + timedelta(milliseconds=t_ms)
        bad["timestamp"] = rng.choice(
            (
                when.strftime("%d/%m/%Y %H:%M:%S"),  # locale formatting
                when.isoformat(timespec="seconds"),  # local time without a zone
                -t_ms,  # a negative epoch (before 1970): a sign flipped somewhere upstream
                "yesterday",  # a relative date straight from the UI
            )
        )
    elif kind == "oversized":
        # A client that attaches a DOM snapshot for debugging.
        chunk = '<div class="product-tile"><img src="/img/p.webp"><span>Add to cart</span></div>'
        bad["properties"] = {"dom_snapshot": chunk * (OVERSIZED_BYTES // len(chunk) + 1)}
    return orjson.dumps(bad)


def simulate(
    customers: int,
    *,
    seed: int,
    now_ms: int,
    days: float = 14.0,
    duplicate_share: float = 0.01,
    late_share: float = 0.02,
    malformed_share: float = 0.005,
    upsell_signal: bool = True,
    anonymous_share: float = 0.0,
    two_device_share: float = 0.25,
    survey_share: float = 0.0,
    id_prefix: str = "c",
) -> tuple[list[SimCustomer], Iterator[SimRecord]]:
    """Plan ``customers`` journeys and return their ground truth and the records to publish.

    Parameters
    ----------
    customers
        How many customers; journeys start uniformly over ``[now_ms - days, now_ms]``.
    seed, now_ms
        The same pair gives the same customers and byte-identical records.
    days
        How far back the first journeys start.
    duplicate_share, late_share, malformed_share
        Expected shares of all published records that are exact re-sends, out-of-order late
        arrivals, and invalid payloads.
    upsell_signal
        Plant the upsell rule described in the module docstring.
    anonymous_share
        Share of customers who browse anonymously until they sign up: their events before the
        signup carry only an ``anonymous_id`` (keyed by it), the signup carries both ids. Those
        who never sign up stay anonymous. Of them, ``two_device_share`` also browse on a second
        device (its own anonymous id, half of their pre-signup events), linked by the first event
        after the signup (only customers with such an event get one).
    survey_share
        Share of buyers who answer an NPS survey (``nps_survey``, ``properties.score`` 0-10) one to
        five days after their first purchase, and of onboarded customers who answer a CSAT survey
        (``csat_survey``, 1-5) after onboarding. Happier scores for repeat buyers and reviewers.
    id_prefix
        Customer ids are this and a zero-padded number (``c000042``); another prefix gives other
        customers (the demo uses one per run, so a second run does not replay into the first's).

    Returns
    -------
    tuple[list[SimCustomer], Iterator[SimRecord]]
        The customers (planned eagerly) and the records in publish order (generated lazily).
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    if days <= 0:
        raise ValueError("days must be > 0")
    for name, share in (
        ("duplicate_share", duplicate_share),
        ("late_share", late_share),
        ("malformed_share", malformed_share),
    ):
        if not 0.0 <= share < 1.0:
            raise ValueError(f"{name} must be in [0, 1)")
    valid_share = 1.0 - duplicate_share - malformed_share
    if valid_share <= 0 or late_share > valid_share:
        raise ValueError("duplicate_share + malformed_share + late_share leave no room for plain events")

    rng = random.Random(seed)
    stream_seed = rng.getrandbits(64)  # the publish-order pass has its own generator
    span = max(1, int(days * DAY_MS))
    plan = _Plan([], [], [], [], [])
    platforms: list[str] = []
    truth = []
    width = max(6, len(str(max(customers - 1, 0))))
    # Planning builds millions of small containers and frees none: the cyclic GC would only rescan them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for idx in range(customers):
            cid = f"{id_prefix}{idx:0{width}d}"
            start = now_ms - span + int(rng.random() * (span + 1))
            platforms.append(_pick(rng.random, _PLATFORM_DIST))
            truth.append(_plan_customer(rng, idx, cid, start, now_ms, upsell_signal, plan))
    finally:
        if gc_was_enabled:
            gc.enable()

    if survey_share > 0:  # its own generator: the records without it stay byte-identical
        truth = _add_surveys(truth, plan, random.Random(f"{seed}:surveys"), survey_share, now_ms)

    # Shares are of all records: per valid event, the chance of an extra duplicate / malformed one.
    p_dup = duplicate_share / valid_share
    p_mal = malformed_share / valid_share
    p_late = late_share / valid_share
    cids = [c.customer_id for c in truth]
    identities: list[tuple[str, str | None, int | None] | None] = [None] * len(truth)
    if anonymous_share > 0:  # its own generator: the records without it stay byte-identical
        who = random.Random(f"{seed}:anonymous")
        for i, c in enumerate(truth):
            if who.random() >= anonymous_share:
                continue
            signup = next((t for tp, t in c.touchpoints if tp == "signup"), None)
            after = signup is not None and any(t > signup for _, t in c.touchpoints)
            # A second device only for those with an event after signup: that event links it.
            second = f"d-{c.customer_id}-m" if who.random() < two_device_share and after else None
            identities[i] = (f"d-{c.customer_id}", second, signup)
            devices = (f"d-{c.customer_id}",) + ((second,) if second else ())
            truth[i] = SimCustomer(c.customer_id, c.touchpoints, c.dropped_after, c.upgraded, devices,
                                   signup is not None)
    records = _records(
        plan, cids, platforms, random.Random(stream_seed), now_ms, p_dup=p_dup, p_mal=p_mal, p_late=p_late,
        identities=identities, devices=random.Random(f"{seed}:devices"),
    )
    return truth, records


def _add_surveys(truth: list[SimCustomer], plan: _Plan, rng: random.Random, share: float,
                 now_ms: int) -> list[SimCustomer]:
    """Plan survey answers (see ``survey_share``) into ``plan``; return the customers with them."""
    out = []
    for idx, c in enumerate(truth):
        tps = dict(c.touchpoints)  # touchpoint -> its latest time (enough to find the first purchase below)
        first_purchase = next((t for tp, t in c.touchpoints if tp == "purchase"), None)
        onboarded = tps.get("onboarding_complete")
        happy = sum(tp == "purchase" for tp, _ in c.touchpoints) > 1 or "review" in tps
        taken = {t for _, t in c.touchpoints}
        added = []
        for kind, after, scores in (("nps_survey", first_purchase, range(11)), ("csat_survey", onboarded, range(1, 6))):
            if after is None or rng.random() >= share:
                continue
            t = after + DAY_MS + int(rng.random() * 4 * DAY_MS)
            while t in taken:
                t += 1
            if t > now_ms:
                continue
            top = len(scores) - 1
            pick = top - int(rng.random() ** (3.0 if happy else 1.0) * (top + 1) * 0.999)  # happy: skewed high
            taken.add(t)
            added.append((kind, t))
            plan.times.append(t)
            plan.customer.append(idx)
            plan.touchpoint.append(kind)
            plan.channel.append(None)
            plan.extra.append((None, {"score": scores[pick]}))
        if added:
            c = SimCustomer(c.customer_id, tuple(sorted((*c.touchpoints, *added), key=lambda x: x[1])),
                            c.dropped_after, c.upgraded, c.devices, c.linked)
        out.append(c)
    return out


def _identify(doc: dict[str, Any], ident: tuple[str, str | None, int | None], t: int,
              rng: random.Random | None, second_linked: set[str]) -> bytes:
    """Give an anonymously browsing customer's event its ids (see ``anonymous_share``); return its key."""
    device, second, signup = ident
    cid = doc["customer_id"]
    if signup is None or t < signup:  # before signup: the anonymous id alone (phone or laptop)
        del doc["customer_id"]
        doc["anonymous_id"] = second if second and rng is not None and rng.random() < 0.5 else device
        return doc["anonymous_id"].encode()
    if t == signup:
        doc["anonymous_id"] = device
    elif second and second not in second_linked:  # the first event after signup: a login on the phone
        second_linked.add(second)
        doc["anonymous_id"] = second
    return cid.encode()


def _records(
    plan: _Plan,
    cids: list[str],
    platforms: list[str],
    rng: random.Random,
    now_ms: int,
    *,
    p_dup: float,
    p_mal: float,
    p_late: float,
    identities: list[tuple[str, str | None, int | None] | None] | None = None,
    devices: random.Random | None = None,
) -> Iterator[SimRecord]:
    """Serialise the plan in publish order, with late, duplicate and malformed records mixed in."""
    n = len(plan.times)
    shift = max(n, 1).bit_length()
    mask = (1 << shift) - 1
    # One int per event (time, then index) sorts several times faster than tuples.
    order = [(t << shift) | i for i, t in enumerate(plan.times)]
    order.sort()
    customer, tps, chans, extras = plan.customer, plan.touchpoint, plan.channel, plan.extra
    del plan

    rand, dumps, event_id, timestamp = rng.random, orjson.dumps, _event_id, _timestamp
    keys = [cid.encode() for cid in cids]
    formats = _PLATFORM_TS_DIST
    # Held-back records: (release at stream time, tie-break, kind, key, value, event time).
    pending: list[tuple[int, int, str, bytes, bytes, int]] = []
    tie = itertools.count()
    mal_next = rng.randrange(len(MALFORMED_KINDS))  # cycle through the kinds from a seeded start
    max_valid = -1  # highest event time of a valid record published so far

    ids_hex, id_pos = "", 0  # random bits for event ids, drawn in blocks (one call per event is slow)
    second_linked: set[str] = set()  # customers whose second device has been linked

    for k in order:
        i = k & mask
        t = k >> shift
        c = customer[i]
        tp = tps[i]
        fmt = _pick(rand, _BACKEND_TS_DIST if tp in BACKEND_TOUCHPOINTS else formats[platforms[c]])
        if id_pos >= len(ids_hex):
            ids_hex, id_pos = rng.getrandbits(128 * ID_BLOCK).to_bytes(16 * ID_BLOCK).hex(), 0
        h = ids_hex[id_pos : id_pos + 32]
        id_pos += 32
        doc: dict[str, Any] = {
            "event_id": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}",  # shaped like a UUID v4
            "customer_id": cids[c],
            "touchpoint": tp,
            "timestamp": timestamp(t, fmt),
        }
        ch = chans[i]
        if ch is not None:
            doc["channel"] = ch
        extra = extras[i]
        if extra is not None:
            value, props = extra
            if value is not None:
                doc["value"] = value
                doc["currency"] = CURRENCY
            if props is not None:
                doc["properties"] = props
        key = keys[c]

        if p_mal and rand() < p_mal:
            kind = MALFORMED_KINDS[mal_next % len(MALFORMED_KINDS)]
            mal_next += 1
            bad = dict(doc, event_id=event_id(rng))
            yield SimRecord(key, _malformed(kind, bad, rng, now_ms, t), "malformed", t)

        ident = identities[c] if identities else None
        if ident is not None:
            key = _identify(doc, ident, t, devices, second_linked)

        raw = dumps(doc)
        if p_late and rand() < p_late:
            heapq.heappush(pending, (t + _delay(rng, D_LATE), next(tie), "late", key, raw, t))
        else:
            if t > max_valid:
                max_valid = t
            yield SimRecord(key, raw, "event", t)
            if p_dup and rand() < p_dup:
                heapq.heappush(pending, (t + _delay(rng, D_DUPLICATE), next(tie), "duplicate", key, raw, t))

        # Held-back records go out once the stream has moved past their release time.
        while pending and pending[0][0] <= t:
            _, _, kind, pkey, praw, pt = heapq.heappop(pending)
            if kind == "late":
                if pt >= max_valid:
                    kind = "event"  # nothing newer got out first, so it is not out of order after all
                elif p_dup and rand() < p_dup:
                    heapq.heappush(pending, (t + _delay(rng, D_DUPLICATE), next(tie), "duplicate", pkey, praw, pt))
            if pt > max_valid:
                max_valid = pt
            yield SimRecord(pkey, praw, kind, pt)
    for _, _, kind, pkey, praw, pt in sorted(pending):
        if kind == "late" and pt >= max_valid:
            kind = "event"
        max_valid = max(max_valid, pt)
        yield SimRecord(pkey, praw, kind, pt)


class _Progress:
    """A one-line bar on a TTY, periodic plain lines otherwise, nothing when disabled."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.every = 0.1 if self.tty else 2.0
        self.last = 0.0

    def line(self, sent: int, elapsed: float) -> str:
        rate = sent / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = min(sent / self.total, 1.0)
            if self.tty:
                bar = "#" * int(share * 30)
                return f"[{bar:<30}] {sent}/{self.total} {share:4.0%} ({rate:.0f} ev/s)"
            return f"sent {sent}/{self.total} ({rate:.0f} ev/s)"
        return f"sent {sent} ({rate:.0f} ev/s)"

    def update(self, sent: int, elapsed: float) -> None:
        if not self.enabled or elapsed - self.last < self.every:
            return
        self.last = elapsed
        self.write(self.line(sent, elapsed))

    def write(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{text}")
        else:
            sys.stderr.write(f"{text}\n")
        sys.stderr.flush()

    def finish(self, sent: int, elapsed: float) -> None:
        if self.enabled:
            self.write(self.line(sent, elapsed))
            if self.tty:
                sys.stderr.write("\n")
                sys.stderr.flush()


# Pacing granularity: each chunk is ~10 ms of traffic, so sleeps are few but the rate stays smooth.
CHUNK_SECONDS = 0.01
MAX_CHUNK = 1000
# A stalled producer may catch up by at most this much burst before the schedule resets.
MAX_BURST_SECONDS = 0.5
FLUSH_TIMEOUT_S = 120.0
MAX_BLOCK_MS = 30_000
# Bigger batches than the 16 KiB default: the pure-Python producer spends its time per batch, not per byte.
BATCH_BYTES = 256 * 1024


def publish(
    records: Iterable[SimRecord],
    *,
    bootstrap_servers: list[str],
    topic: str,
    rate: float | None,
    total: int | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> PublishSummary:
    """Send ``records`` to ``topic`` (key = customer id) at ``rate`` records/s (None or 0: unpaced).

    Raises
    ------
    PublishError
        When no broker is reachable, the topic cannot be written, or any record was not acknowledged.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    servers = ", ".join(bootstrap_servers)
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id="journey-simulate",
            acks="all",  # keeps the idempotent producer on: retries never add duplicates we did not plan
            linger_ms=5,
            batch_size=BATCH_BYTES,
            compression_type=None,
            max_block_ms=MAX_BLOCK_MS,
        )
    except KafkaError as exc:
        raise PublishError(f"cannot connect a Kafka producer to {servers} (is the broker up?): {exc!r}") from exc

    errors: list[BaseException] = []
    by_kind: Counter[str] = Counter()
    sent = 0
    per_second = float(rate) if rate and rate > 0 else 0.0
    chunk = max(1, min(MAX_CHUNK, int(per_second * CHUNK_SECONDS))) if per_second else MAX_CHUNK
    bar = _Progress(total, progress)
    started = time.monotonic()
    schedule = started  # when the records sent so far are due, under the rate
    it = iter(records)

    def failed() -> PublishError:
        return PublishError(f"Kafka did not accept a record for topic {topic!r} at {servers}: {errors[0]!r}")

    try:
        try:
            while not (stop is not None and stop.is_set()):
                if errors:
                    raise failed()
                batch = list(itertools.islice(it, chunk))
                if not batch:
                    break
                for rec in batch:
                    producer.send(topic, value=rec.value, key=rec.key).add_errback(errors.append)
                    by_kind[rec.kind] += 1
                sent += len(batch)
                now = time.monotonic()
                if per_second:
                    schedule = max(schedule, now - MAX_BURST_SECONDS) + len(batch) / per_second
                    ahead = schedule - now
                    if ahead > 0:
                        if stop is not None:
                            stop.wait(ahead)
                        else:
                            time.sleep(ahead)
                bar.update(sent, time.monotonic() - started)
            producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as exc:
            raise PublishError(f"publishing to {topic!r} at {servers} failed: {exc!r}") from exc
        finally:
            producer.close(timeout=5)
    finally:
        elapsed = time.monotonic() - started
        bar.finish(sent, elapsed)
    if errors:
        raise failed()
    return PublishSummary(sent, dict(by_kind), elapsed, sent / elapsed if elapsed > 0 else 0.0)


@dataclass(frozen=True, slots=True)
class TreatedCustomer:
    """Ground truth of one customer of :func:`simulate_treatment`."""

    customer_id: str
    alerted_ms: int  # when their drop-off alert is due (event time)
    held_out: bool
    converted: bool


def simulate_treatment(
    customers: int,
    *,
    seed: int,
    start_ms: int,
    holdout_share: float,
    holdout_salt: str = "v1",
    base_rate: float = 0.2,
    effect: float = 0.15,
    silence_ms: int = 7 * DAY_MS,
    spacing_ms: int = 4 * MINUTE_MS,
    heartbeat_keys: Iterable[str] = (),
    until_ms: int | None = None,
) -> tuple[list[TreatedCustomer], list[SimRecord]]:
    """A stream with a planted treatment effect, for measuring what drop-off alerts are worth.

    Customer ``i`` arrives at ``start_ms + i * spacing_ms`` (ad click, visit, signup, product
    view: the consideration stage) and goes silent. Their ``drop_off`` alert is due ``silence_ms``
    after the product view (the default map's ``max_silence`` of consideration). A marketing tool
    acts on the alerts it may act on: a customer not in the holdout group of ``drop_off`` (the
    tracker's own hash, :func:`models.uplift.held_out`) comes back with probability
    ``base_rate + effect``, a held-out one with ``base_rate``; coming back is cart, checkout,
    purchase, onboarding and a review, 12 h to 3 days after the alert (so within the measured
    window, and never a drop-off again: advocacy has no maximum silence).

    ``heartbeat_keys``: one per partition (customer ids the producer puts there), each visiting the
    site every hour until ``until_ms``, so that every partition's watermark keeps moving: each alert
    fires before the customer's return, and every window ends. They get one stall alert each.

    Returns the truth and the records in event-time order (no duplicates, late or malformed ones).
    """
    from models.uplift import held_out, holdout_key

    rng = random.Random(f"{seed}:treatment")
    key = holdout_key(holdout_salt)
    truth: list[TreatedCustomer] = []
    planned: list[tuple[int, str, str, str | None, float | None]] = []
    for i in range(customers):
        cid = f"u{i:05d}"
        s = start_ms + i * spacing_ms
        steps = [(0, "ad_click", "search"), (MINUTE_MS, "site_visit", "search"), (20 * MINUTE_MS, "signup", None),
                 (30 * MINUTE_MS, "product_view", None)]
        planned += [(s + dt, cid, tp, ch, None) for dt, tp, ch in steps]
        due = s + 30 * MINUTE_MS + silence_ms
        held = held_out("drop_off", cid, holdout_share, key)
        back = rng.random() < base_rate + (0.0 if held else effect)
        if back:
            t = due + 12 * HOUR_MS + int(rng.random() * 60 * HOUR_MS)
            planned += [(t, cid, "add_to_cart", None, None), (t + 5 * MINUTE_MS, cid, "checkout", None, None),
                        (t + 8 * MINUTE_MS, cid, "purchase", None, 50.0),
                        (t + HOUR_MS, cid, "onboarding_complete", None, None),
                        (t + 2 * HOUR_MS, cid, "review", None, None)]
        truth.append(TreatedCustomer(cid, due, held, back))
    end = until_ms if until_ms is not None else start_ms + customers * spacing_ms + silence_ms + 30 * DAY_MS
    for beat in heartbeat_keys:
        planned += [(t, beat, "site_visit", "direct", None) for t in range(start_ms, end, HOUR_MS)]
    planned.sort()
    records = []
    for n, (t, cid, tp, ch, value) in enumerate(planned):
        doc: dict[str, Any] = {"event_id": f"{cid}-{n}", "customer_id": cid, "touchpoint": tp, "timestamp": t}
        if ch is not None:
            doc["channel"] = ch
        if value is not None:
            doc["value"], doc["currency"] = value, CURRENCY
        records.append(SimRecord(cid.encode(), orjson.dumps(doc), "event", t))
    return truth, records
