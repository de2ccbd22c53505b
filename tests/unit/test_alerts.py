"""Stall and drop-off alerts on the reference model: when they open, when they resolve, and
that the result depends on the order of events only — not on batch boundaries."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.alerts import AlertFacts, AlertStatus, AlertType, render, stamp
from models.journey_map import parse_journey_map
from models.partition import Rules
from tests.unit.support import Harness as BaseHarness

MIN = 60_000
HOUR = 60 * MIN
# x -> y -> z: TE(x->y) = (1 + 4*10 + 61)/6 = 17 min, sigma = 10 min -> stall after 37 min
JOURNEY = parse_journey_map(
    {
        "stages": [
            {"name": "a", "max_silence": "2h", "severity": "low"},
            {"name": "b", "max_silence": "2h", "severity": "high"},
            {"name": "c"},
        ],
        "touchpoints": {"x": {"stage": "a"}, "y": {"stage": "b"}, "z": {"stage": "c"}, "w": {"stage": "a"}},
        "flow": [
            {"from": "x", "to": "y", "optimistic": "1m", "likely": "10m", "pessimistic": "61m"},
            {"from": "y", "to": "z", "optimistic": "1m", "likely": "10m", "pessimistic": "61m"},
        ],
    }
)
LATENESS = 5 * MIN
T0 = 1_790_000_000_000


def ev(cid: str, tp: str, minute: float, eid: str | None = None) -> bytes:
    ts = T0 + int(minute * MIN)
    return orjson.dumps({"event_id": eid or f"{cid}-{tp}-{minute}", "customer_id": cid, "touchpoint": tp,
                         "timestamp": ts})


class Harness(BaseHarness):
    def __init__(self, late_grace_ms: int = 10 * MIN) -> None:
        super().__init__(JOURNEY, rules=Rules(JOURNEY, allowed_lateness_ms=LATENESS, late_grace_ms=late_grace_ms))


def test_the_map_derives_the_critical_path_and_stall_thresholds():
    assert JOURNEY.critical_path == ("x", "y", "z")
    assert JOURNEY.stall_after_ms == (37 * MIN, 37 * MIN, 0)


async def test_a_customer_who_progresses_in_time_gets_no_alert():
    h = Harness()
    await h.batch(ev("ann", "x", 0), ev("ann", "y", 20), ev("ann", "z", 40))
    await h.batch(ev("clock", "w", 600))  # the watermark moves far past every deadline
    assert h.of("ann") == []


async def test_a_stall_opens_once_when_the_watermark_passes_and_resolves_when_they_move_on():
    h = Harness()
    await h.batch(ev("bob", "x", 0))
    await h.batch(ev("clock", "w", 37 + 5 - 1))  # watermark 36 min: not yet
    assert h.of("bob") == []
    await h.batch(ev("clock", "w", 37 + 5))  # watermark 37 min: due
    assert h.of("bob") == [("stalled_critical_path", "open", "x")]
    await h.batch(ev("clock", "w", 50), ev("clock", "w", 60))  # later ticks: still one alert
    assert h.of("bob") == [("stalled_critical_path", "open", "x")]
    await h.batch(ev("bob", "y", 70))
    assert h.of("bob") == [("stalled_critical_path", "open", "x"), ("stalled_critical_path", "resolved", "x")]
    body, resolved = [a for a in h.alerts() if a["customer_id"] == "bob"]
    assert body["alert_id"] == resolved["alert_id"]
    assert body["next_touchpoint"] == "y" and body["expected_seconds"] == 37 * 60
    assert body["elapsed_seconds"] == 37 * 60 and body["severity"] == "low"
    assert "has not reached y" in body["reason"]


async def test_a_late_event_that_arrives_before_the_deadline_passes_cancels_the_alert():
    h = Harness()
    await h.batch(ev("cy", "x", 0))
    await h.batch(ev("clock", "w", 40))  # watermark 35 min < due 37 min
    await h.batch(ev("cy", "y", 20))  # late (event time 20 min), but before the watermark passed 37
    await h.batch(ev("clock", "w", 300))
    assert ("stalled_critical_path", "open", "x") not in h.of("cy")
    assert ("stalled_critical_path", "open", "y") in h.of("cy")  # the next step is now the one overdue


async def test_a_late_event_after_the_deadline_passed_opens_then_resolves():
    h = Harness()
    await h.batch(ev("dee", "x", 0))
    await h.batch(ev("clock", "w", 50))  # watermark 45 > due 37: fires
    await h.batch(ev("dee", "y", 20))  # the late event shows they did move on: resolved
    assert h.of("dee") == [("stalled_critical_path", "open", "x"), ("stalled_critical_path", "resolved", "x")]


async def test_a_late_history_that_arrives_in_order_opens_no_alert():
    # Live traffic has the watermark 31 days on; then a customer's history of a day 31 days ago arrives,
    # in order: x, then y 30 min later (past its 37-min stall threshold? no: within it), then z.
    h = Harness()
    day = 24 * 60
    await h.batch(ev("clock", "w", 31 * day))
    await h.batch(ev("lia", "x", 0))  # alone, its stall (due at 37 min) would be 31 days overdue
    await h.batch(ev("lia", "y", 30))
    await h.batch(ev("lia", "z", 40))
    await h.batch(ev("clock", "w", 31 * day + 60))  # and time goes on
    assert h.of("lia") == []


async def test_a_late_history_that_truly_stalled_alerts_once_the_grace_has_passed():
    h = Harness(late_grace_ms=10 * MIN)
    day = 24 * 60
    await h.batch(ev("clock", "w", 31 * day))  # watermark: 31 days - 5 min (the allowed lateness)
    await h.batch(ev("sam", "x", 0))  # overdue on arrival: held until the watermark is 10 min further
    await h.batch(ev("clock", "w", 31 * day + 9))  # watermark moved 9 min: still held
    assert h.of("sam") == []
    await h.batch(ev("clock", "w", 31 * day + 10))  # 10 min: sam never went on, and was silent too
    assert h.of("sam") == [("stalled_critical_path", "open", "x"), ("drop_off", "open", "x")]


async def test_silence_beyond_the_stage_maximum_is_a_drop_off_until_they_come_back():
    h = Harness()
    await h.batch(ev("eve", "x", 0), ev("eve", "y", 10))  # stage b, max silence 2h
    await h.batch(ev("clock", "w", 120 + 10 + 5))
    assert ("drop_off", "open", "y") in h.of("eve")
    opened = next(a for a in h.alerts() if a["customer_id"] == "eve" and a["type"] == "drop_off")
    assert (opened["stage"], opened["severity"], opened["expected_seconds"]) == ("b", "high", 2 * 3600)
    await h.batch(ev("eve", "z", 200))
    assert ("drop_off", "resolved", "y") in h.of("eve")


scripted = st.lists(
    st.tuples(st.sampled_from(["p", "q", "r"]), st.sampled_from(["x", "y", "z", "w"]), st.integers(0, 400)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(events=scripted, cuts=st.lists(st.integers(0, 30), max_size=6))
def test_alerts_depend_on_the_event_order_only_not_on_batch_boundaries(events, cuts):
    import asyncio

    values = [ev(c, tp, m) for c, tp, m in events] + [ev("clock", "w", 10_000)]

    async def run(bounds: list[int], due_limit: int = 1000) -> list[bytes]:
        h = Harness()
        h.handler.due_limit = due_limit
        edges = [0, *sorted({b for b in bounds if 0 < b < len(values)}), len(values)]
        for lo, hi in zip(edges, edges[1:], strict=False):
            await h.batch(*values[lo:hi])
        return [orjson.dumps(a) for a in h.alerts()]

    # The very bytes of every alert, in order: batch boundaries and how much of the due set is
    # loaded at a time change nothing.
    one_batch = asyncio.run(run([]))
    assert asyncio.run(run(cuts)) == one_batch
    assert asyncio.run(run(list(range(len(values))))) == one_batch  # one event per batch
    assert asyncio.run(run(cuts, due_limit=1)) == one_batch  # one due customer loaded at a time


@pytest.mark.parametrize("status", list(AlertStatus))
def test_rendered_alerts_match_the_shipped_schema(status):
    import json
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).parents[2] / "models/schemas/alert.schema.json").read_text())
    f = AlertFacts(AlertType.STALLED_CRITICAL_PATH, status, "c1", "a", "x", T0, 37 * MIN, T0 + HOUR, "y", "low")
    body = stamp(orjson.dumps(render(f, extra={"clv": None})), T0)
    jsonschema.validate(orjson.loads(body), schema)
