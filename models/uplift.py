"""What an alert is worth: holdout groups per alert type, and the measured uplift.

A share of customers per alert type is **held out**: a keyed hash of the alert type and the
customer id, so membership is the same on every replay and every worker, and independent
between types. Their alerts are still published, with ``"holdout": true``, so marketing tools
skip them (every other alert says ``"holdout": false``).

Each opened alert about a customer starts an :class:`~models.journey.Exposure`: over the
``window_ms`` of event time after the alert, did the customer reach a later stage (conversion),
and how much net revenue did they bring? When the watermark passes the end of the window the
exposure is settled into day counters (the day the alert opened), per type and group
(``t`` treated, ``h`` held out): ``u|<type>|<g>|n`` exposures, ``|c`` conversions, ``|r`` revenue
(cents) and ``|r2`` revenue squared (whole currency units², for the variance).

The uplift of a type is conversion(treated) − conversion(held out), with a 95 % confidence
interval (normal approximation of the difference of two proportions), and the same for revenue
per alerted customer (Welch). An event that arrives after its exposure settled is not counted:
the same allowed lateness as everywhere else. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from models.journey import Exposure, JourneyState

Z95 = 1.959963984540054
MAX_EXPOSURES = 8  # per customer; an alert beyond it is not measured (counted as ``uplift_unmeasured``)


def holdout_key(salt: str) -> bytes:
    """The key of the holdout hash for a salt (``JOURNEY_HOLDOUT_SALT``): a new salt draws new groups."""
    return f"journey-tracker holdout {salt}".encode()


def held_out(alert_type: str, customer_id: str, share: float, key: bytes) -> bool:
    """Whether the customer is in the holdout group of this alert type: a keyed hash below ``share``.

    Examples
    --------
    >>> key = b"k"
    >>> held_out("drop_off", "c1", 0.0, key), held_out("drop_off", "c1", 1.0, key)
    (False, True)
    >>> n = sum(held_out("drop_off", f"c{i}", 0.1, key) for i in range(10_000))   # about 10 % (sd 30)
    >>> 900 < n < 1100
    True
    """
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(f"{alert_type}|{customer_id}".encode(), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def expose(state: JourneyState, alert_type: str, at_ms: int, holdout: bool, rank: int) -> bool:
    """Start measuring an alert (in place); False when the customer already has too many being measured."""
    if len(state.exposures) >= MAX_EXPOSURES:
        return False
    state.exposures.append(Exposure(alert_type, at_ms, holdout, rank))
    return True


def observe(state: JourneyState, ts_ms: int, rank: int, cents: int, window_ms: int) -> None:
    """An applied event at ``ts_ms`` in a stage of ``rank``, worth ``cents`` (negative: a refund)."""
    for e in state.exposures:
        if e.at_ms < ts_ms <= e.at_ms + window_ms:
            if rank > e.rank:
                e.converted = True
            e.revenue_cents += cents


def next_settle(state: JourneyState, window_ms: int) -> int | None:
    """When the earliest exposure's window ends (None: nothing being measured)."""
    return min(e.at_ms for e in state.exposures) + window_ms if state.exposures else None


def settle(state: JourneyState, watermark_ms: int, window_ms: int) -> list[tuple[int, str, int]]:
    """Settle the exposures whose window the watermark has passed (in place): the day counters they add.

    Examples
    --------
    >>> st = JourneyState("c1", "s", 0, 0, 0)
    >>> _ = expose(st, "drop_off", 86_400_000, False, 1)
    >>> observe(st, 90_000_000, 2, 2_500, window_ms=86_400_000)
    >>> settle(st, 100_000_000, 86_400_000), settle(st, 172_800_000, 86_400_000)
    ([], [(1, 'u|drop_off|t|n', 1), (1, 'u|drop_off|t|c', 1), (1, 'u|drop_off|t|r', 2500), (1, 'u|drop_off|t|r2', 625)])
    """
    out: list[tuple[int, str, int]] = []
    keep = []
    for e in state.exposures:
        if e.at_ms + window_ms > watermark_ms:
            keep.append(e)
            continue
        day, prefix = e.at_ms // 86_400_000, f"u|{e.type}|{'h' if e.holdout else 't'}"
        out.append((day, f"{prefix}|n", 1))
        if e.converted:
            out.append((day, f"{prefix}|c", 1))
        if e.revenue_cents:
            out.append((day, f"{prefix}|r", e.revenue_cents))
            out.append((day, f"{prefix}|r2", round((e.revenue_cents / 100) ** 2)))
    state.exposures = keep
    return out


def difference_ci(x1: float, n1: int, x0: float, n0: int) -> tuple[float, float, float] | None:
    """Difference of two proportions ``x1/n1 - x0/n0`` and its 95 % interval (Wald); None without data.

    Examples
    --------
    >>> [round(v, 4) for v in difference_ci(300, 1000, 200, 1000)]
    [0.1, 0.0623, 0.1377]
    """
    if not n1 or not n0:
        return None
    p1, p0 = x1 / n1, x0 / n0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    d = p1 - p0
    return d, d - Z95 * se, d + Z95 * se


def mean_difference_ci(s1: float, q1: float, n1: int, s0: float, q0: float, n0: int
                       ) -> tuple[float, float, float] | None:
    """Difference of two means from sums ``s`` and sums of squares ``q``, with a 95 % interval (Welch,
    normal approximation); None without two observations in each group.

    Examples
    --------
    >>> [round(v, 3) for v in mean_difference_ci(30.0, 500.0, 3, 3.0, 5.0, 3)]   # means 10 and 1, variances 100 and 1
    [9.0, -2.372, 20.372]
    """
    if n1 < 2 or n0 < 2:
        return None
    m1, m0 = s1 / n1, s0 / n0
    v1 = max(0.0, (q1 - n1 * m1 * m1) / (n1 - 1))
    v0 = max(0.0, (q0 - n0 * m0 * m0) / (n0 - 1))
    se = math.sqrt(v1 / n1 + v0 / n0)
    d = m1 - m0
    return d, d - Z95 * se, d + Z95 * se


def report(counts: Mapping[str, int], alert_types: list[str], shares: Mapping[str, float],
           window_s: float) -> list[dict[str, Any]]:
    """Per alert type: treated and held-out customers, their conversion and revenue, the uplift and its CI.

    Examples
    --------
    >>> c = {"u|drop_off|t|n": 1000, "u|drop_off|t|c": 300, "u|drop_off|h|n": 1000, "u|drop_off|h|c": 200}
    >>> r = report(c, ["drop_off"], {"drop_off": 0.5}, 86400.0)[0]
    >>> r["treated"], r["conversion_treated"], round(r["uplift"], 12), round(r["ci_low"], 4)
    (1000, 0.3, 0.1, 0.0623)
    """
    rows = []
    for t in alert_types:
        n1, n0 = counts.get(f"u|{t}|t|n", 0), counts.get(f"u|{t}|h|n", 0)
        c1, c0 = counts.get(f"u|{t}|t|c", 0), counts.get(f"u|{t}|h|c", 0)
        r1, r0 = counts.get(f"u|{t}|t|r", 0) / 100, counts.get(f"u|{t}|h|r", 0) / 100
        conv = difference_ci(c1, n1, c0, n0)
        rev = mean_difference_ci(r1, counts.get(f"u|{t}|t|r2", 0), n1, r0, counts.get(f"u|{t}|h|r2", 0), n0)
        rows.append({
            "type": t, "holdout_share": shares.get(t, 0.0), "window_seconds": window_s,
            "treated": n1, "held_out": n0,
            "conversion_treated": c1 / n1 if n1 else None, "conversion_held_out": c0 / n0 if n0 else None,
            "revenue_treated": r1 / n1 if n1 else None, "revenue_held_out": r0 / n0 if n0 else None,
            "uplift": conv[0] if conv else None, "ci_low": conv[1] if conv else None,
            "ci_high": conv[2] if conv else None,
            "revenue_uplift": rev[0] if rev else None, "revenue_ci_low": rev[1] if rev else None,
            "revenue_ci_high": rev[2] if rev else None,
        })
    return rows
