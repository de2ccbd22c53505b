"""The fuzz suite: 10,000 hostile messages among valid events, through a real worker.

Every kind in ``streams/devtools/fuzz.py`` (money that overflows, a megabyte payload, bytes that
are no JSON object, ids that break hash tags or terminals, every broken time format, ...) is sent
many times, interleaved with valid events for the same customers, so hostile and valid records
share batches. Then:

- every hostile message is on the dead-letter topic, at its source offset, with the reason the
  fuzzer states for its kind (and its original bytes, or a marked truncated copy);
- every valid event is applied: each customer's event count and revenue are what was sent;
- the worker's counters add up: consumed = applied + duplicates + dead-lettered, nothing else;
- the worker stayed up, and no free text sent as a channel reached the public value view.
"""

from __future__ import annotations

import random
import time

import orjson
import pytest

from streams.devtools import fuzz
from tests.integration.conftest import WorkerProcess

HOSTILE = 10_000
VALID = 6_000
CUSTOMERS = 250
EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def worker(worker_factory) -> WorkerProcess:
    return worker_factory(JOURNEY_BATCH_SIZE="500")  # started once the backlog is published


def test_every_hostile_message_is_dead_lettered_with_its_reason_and_every_valid_one_applied(worker):
    w = worker
    now = int(time.time() * 1000)
    rng = random.Random(41)
    customers = [f"f{i:03d}" for i in range(CUSTOMERS - 2)] + ["Zoë-日本", "c:with:colons"]
    valid: list[tuple[bytes, bytes]] = []
    events: dict[str, int] = {}
    revenue: dict[str, float] = {}
    for i in range(VALID):
        cid = rng.choice(customers)
        tp = rng.choice(["site_visit", "product_view", "add_to_cart", "purchase"])
        doc = {"event_id": f"v{i}", "customer_id": cid, "touchpoint": tp,
               "timestamp": now - 3 * 86_400_000 + i * 1000,
               "channel": EMAIL if i % 50 == 0 else rng.choice(["search", "email", "social"]),
               "properties": {"nested": [[[{"deep": i}]]]}}
        if tp == "purchase":
            doc["value"] = 25.0
            revenue[cid] = revenue.get(cid, 0.0) + 25.0
        events[cid] = events.get(cid, 0) + 1
        valid.append((cid.encode(), orjson.dumps(doc)))
    hostile = [*fuzz.hostile_messages(HOSTILE, seed=41, now_ms=now, customers=customers),
               *fuzz.rare_messages(seed=41, now_ms=now, customers=customers)]
    assert len(hostile) >= HOSTILE and {h.kind for h in hostile} == set(fuzz.KINDS) | set(fuzz.RARE)

    # Interleave: valid events keep their order (event time); hostile ones fall in between.
    slots = ["v"] * len(valid) + ["h"] * len(hostile)
    rng.shuffle(slots)
    counters = {"v": 0, "h": 0}
    sent = {}
    for kind in slots:
        i = counters[kind]
        counters[kind] += 1
        key, value = valid[i] if kind == "v" else (hostile[i].key, hostile[i].value)
        sent[(kind, i)] = w.producer.send(w.settings.touchpoints_topic, key=key, value=value)
    w.producer.flush()
    where = {(m.partition, m.offset): ki for ki, f in sent.items() if (m := f.get(timeout=30))}

    w.start()
    letters = w.dead_letters()  # waits until the store's offsets reach the end of every partition

    by_source = {}
    for m in letters:
        h = dict(m.headers)
        by_source[(int(h["journey.source.partition"]), int(h["journey.source.offset"]))] = (m, h)
    expected = {pos: hostile[i] for pos, (kind, i) in where.items() if kind == "h"}
    assert set(by_source) == set(expected)  # every hostile message, and nothing valid, dead-lettered
    wrong = [(expected[pos].kind, h["journey.error.reason"].decode(), expected[pos].reason.value)
             for pos, (m, h) in by_source.items() if h["journey.error.reason"].decode() != expected[pos].reason]
    assert wrong == []
    for pos, (m, h) in by_source.items():
        original = expected[pos].value
        if original is not None and len(original) > 512 * 1024:  # the megabyte: a marked, truncated copy
            assert int(h["journey.error.truncated"]) == len(original) and original.startswith(m.value)
        else:
            assert m.value == original  # the original bytes

    assert {cid: (w.customer(cid) or {}).get("events", 0) for cid in customers} == {
        cid: events.get(cid, 0) for cid in customers}
    assert {cid: c["clv"]["revenue"] for cid in revenue if (c := w.customer(cid))} == revenue

    stats = w.get("/worker/stats")[1]
    assert stats["consumed"] == len(valid) + len(hostile)
    assert (stats["applied"], stats["duplicates"], stats["dead_letters"]) == (len(valid), 0, len(hostile))
    assert w.alive() and w.get("/healthz")[0] == 200

    value = w.get("/journey/value")[1]
    assert EMAIL not in orjson.dumps(value).decode()
    assert "other" in {c["channel"] for c in value["channels"]}
