"""Stall and drop-off alerts on the reference model: when they open, when they resolve, and
that the result depends on the order of events only — not on batch boundaries."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.alerts import AlertFacts, AlertStatus, AlertType, alert_id, render
from models.journey_map import parse_journey_map
from models.watermark import Watermarks
from streams.journey_store import InMemoryJourneyStore
from streams.pipeline import DeadLetter, Limits, SourceRecord, advance_journeys

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


class NoDeadLetters:
    async def send(self, letters: Sequence[DeadLetter]) -> None:
        raise AssertionError(f"unexpected dead letters: {letters}")


def ev(cid: str, tp: str, minute: float, eid: str | None = None) -> bytes:
    ts = T0 + int(minute * MIN)
    return orjson.dumps({"event_id": eid or f"{cid}-{tp}-{minute}", "customer_id": cid, "touchpoint": tp,
                         "timestamp": ts})


class Harness:
    def __init__(self) -> None:
        self.store = InMemoryJourneyStore(JOURNEY, dedupe_window_ms=30 * 24 * HOUR, path_length=10)
        self.watermarks = Watermarks(allowed_lateness_ms=LATENESS, idle_timeout_ms=10**12)
        self.offset = 0
        self.alerts: list[AlertFacts] = []

    async def batch(self, *values: bytes) -> None:
        records = []
        for v in values:
            records.append(SourceRecord(b"k", v, "touchpoints", 0, self.offset))
            self.offset += 1
        await advance_journeys(
            records, journey=JOURNEY, store=self.store, dead_letters=NoDeadLetters(),
            limits=Limits(1 << 20, 1 << 50), watermarks=self.watermarks, now_ms=T0,
        )
        await self.store.check_deadlines(0, self.watermarks.current(0, T0))
        self.alerts += await self.store.outbox(0)
        await self.store.ack_outbox(0, len(self.alerts))

    def of(self, cid: str) -> list[tuple[str, str, str]]:
        return [(f.type.value, f.status.value, f.touchpoint) for f in self.alerts if f.customer_id == cid]


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
    opened, resolved = [f for f in h.alerts if f.customer_id == "bob"]
    assert alert_id(opened) == alert_id(resolved)
    body = render(opened, emitted_at_ms=T0)
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


async def test_silence_beyond_the_stage_maximum_is_a_drop_off_until_they_come_back():
    h = Harness()
    await h.batch(ev("eve", "x", 0), ev("eve", "y", 10))  # stage b, max silence 2h
    await h.batch(ev("clock", "w", 120 + 10 + 5))
    assert ("drop_off", "open", "y") in h.of("eve")
    opened = next(f for f in h.alerts if f.customer_id == "eve" and f.type is AlertType.DROP_OFF)
    assert (opened.stage, opened.severity, opened.expected_ms) == ("b", "high", 2 * HOUR)
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

    async def run(bounds: list[int]) -> list[tuple[str, str, str, str, int]]:
        h = Harness()
        edges = [0, *sorted({b for b in bounds if 0 < b < len(values)}), len(values)]
        for lo, hi in zip(edges, edges[1:], strict=False):
            await h.batch(*values[lo:hi])
        return sorted((f.customer_id, f.type.value, f.status.value, f.touchpoint, f.anchor_ms) for f in h.alerts)

    one_batch = asyncio.run(run([]))
    assert asyncio.run(run(cuts)) == one_batch
    assert asyncio.run(run(list(range(len(values))))) == one_batch  # one event per batch


@pytest.mark.parametrize("status", list(AlertStatus))
def test_rendered_alerts_match_the_shipped_schema(status):
    import json
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).parents[2] / "models/schemas/alert.schema.json").read_text())
    f = AlertFacts(AlertType.STALLED_CRITICAL_PATH, status, "c1", "a", "x", T0, 37 * MIN, T0 + HOUR, "y", "low")
    jsonschema.validate(render(f, emitted_at_ms=T0), schema)
