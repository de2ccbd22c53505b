"""The stored form of a customer's state: what comes back is what went in, up to the documented
rounding of dedupe times, and storing a state again never moves those times."""

from __future__ import annotations

import orjson

from models.journey import JourneyState
from streams.state import codec


def state(first: int) -> JourneyState:
    s = JourneyState("c1", "awareness", first, first, first + 5_000, 2, {"site_visit": 2}, {"site_visit": first},
                     [(first, "site_visit", "")], anonymous_ids={"d1": True})
    s.seen = {11: first + 1_250, -7: first + 4_999}
    return s


def test_a_state_comes_back_with_dedupe_times_rounded_up_to_the_second():
    s = state(1_790_000_000_400)
    back = codec.decode(codec.encode(s))
    # first + 1,250 = …001,650 and first + 4,999 = …005,399: up to the next whole second of the epoch
    assert back.seen == {11: 1_790_000_002_000, -7: 1_790_000_006_000}
    back.seen = s.seen
    assert back == s


def test_storing_again_after_first_seen_moved_keeps_the_dedupe_times():
    # A merged visitor's history (or a late event) moves first_seen earlier; the times stay put.
    s = codec.decode(codec.encode(state(1_790_000_000_400)))
    times = dict(s.seen)
    s.first_seen_ms = 1_789_999_990_777
    assert codec.decode(codec.encode(s)).seen == times


def test_a_value_of_the_previous_format_is_still_read():
    s = state(1_790_000_000_400)
    head, _, seen = codec.encode(s).partition(b"\n")
    doc = orjson.loads(head)
    v1 = orjson.dumps([1, *doc[1:29]]) + b"\n" + b"".join(
        codec._SEEN.pack(d, -((s.first_seen_ms - t) // 1000)) for d, t in s.seen.items())
    back = codec.decode(v1)
    assert back.anonymous_ids == {} and back.merged_into is None
    assert back.seen == {11: 1_790_000_002_400, -7: 1_790_000_005_400}  # format 1: seconds after first_seen
