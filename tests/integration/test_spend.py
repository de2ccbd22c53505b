"""Marketing spend through the real Kafka and Redis (single and Cluster): `journey spend import` of a
CSV with a correction gives the per-channel sums of the file's latest lines; hostile messages go to
the DLQ with their reason and change nothing; a redelivered message and a zombie's replay of an old
offset change nothing either."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer

from models.spend import Spend, day_number, iso_day
from streams.state.connect import connect
from streams.state.keys import Keys
from streams.state.redis_store import RedisStore
from tests.integration.conftest import REDIS_MODES, ROOT, WorkerProcess, read_topic, wait_for

T = TypeVar("T")
DAY = 86_400_000
TODAY = int(time.time() * 1000) // DAY
D1, D2, D3 = (iso_day(TODAY - n) for n in (1, 2, 3))
OLD = "2024-02-29"  # history is fine

# The file: (channel, day, amount, currency); the last line corrects the second (search on D1).
ROWS = [
    ("search", D1, "1200.50", "EUR"),
    ("search", D1, "99.99", "EUR"),  # search on D1 again: a correction of the line above, within the file
    ("search", D2, "800", "EUR"),
    ("email", D1, "40.25", ""),  # no currency: the configured one
    ("email", D3, "100", "USD"),  # 0.5 EUR per USD
    ("paid social", D2, "0", "EUR"),
    ("display", OLD, "5000", "EUR"),
    ("search", D1, "1500.10", "EUR"),  # and corrected again: this one wins
]


def expected_cents(first_day: int, last_day: int) -> dict[str, int]:
    """The sums the worker must store, computed here from ROWS: the latest line per channel and day."""
    rate = {"EUR": 1.0, "": 1.0, "USD": 0.5}
    latest = {(ch, day): round(float(amount) * rate[cur] * 100) for ch, day, amount, cur in ROWS}
    out: dict[str, int] = defaultdict(int)
    for (ch, day), cents in latest.items():
        if first_day <= day_number(day) <= last_day:
            out[ch] += cents
    return dict(out)


def test_expected_sums_are_what_the_file_says():
    # the helper above, by hand: search 1500.10 (D1, corrected twice) + 800 (D2); email 40.25 + 50 (100 USD)
    assert expected_cents(TODAY - 3, TODAY) == {"search": 230_010, "email": 9_025, "paid social": 0}
    assert expected_cents(0, TODAY) == {"search": 230_010, "email": 9_025, "paid social": 0, "display": 500_000}


@pytest.fixture(scope="module", params=REDIS_MODES)
def worker(request, worker_factory) -> Iterator[WorkerProcess]:
    w = worker_factory(redis=request.param, JOURNEY_FX_RATES="USD=0.5",
                       JOURNEY_SPEND_TOPIC=f"marketing-spend-{uuid.uuid4().hex[:8]}")
    w.start()
    yield w
    w.stop()  # before its topic goes (the factory stops it too, later, and cleans up the rest)
    admin = KafkaAdminClient(bootstrap_servers=w.settings.bootstrap_servers)
    try:
        admin.delete_topics([w.settings.spend_topic])
    finally:
        admin.close()


def on_store(w: WorkerProcess, use: Callable[[RedisStore], Awaitable[T]]) -> T:
    """Run ``use`` against the worker's Redis store, as the CLI and the KPI side read it."""
    async def run() -> T:
        redis = connect(w.settings.redis_url)
        try:
            return await use(RedisStore(redis, Keys(w.settings.redis_prefix), pseudonym_key=b"k"))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def stored(w: WorkerProcess, first_day: int = 0, last_day: int = TODAY) -> dict[str, int]:
    return on_store(w, lambda s: s.spend_by_channel(first_day, last_day))


def journey(w: WorkerProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**os.environ, **w.env}, input=stdin,
                          capture_output=True, text=True, timeout=180, cwd=ROOT)


def publish(w: WorkerProcess, *messages: tuple[bytes, bytes]) -> list[int]:
    """Send (key, value) messages to the spend topic; return their offsets."""
    producer = KafkaProducer(bootstrap_servers=w.settings.bootstrap_servers, acks="all")
    try:
        futures = [producer.send(w.settings.spend_topic, key=k, value=v) for k, v in messages]
        producer.flush()
        return [f.get(timeout=30).offset for f in futures]
    finally:
        producer.close()


def wait_handled(w: WorkerProcess, offset: int) -> None:
    wait_for(lambda: on_store(w, lambda s: s.spend_offsets()).get(0, -1) >= offset, 60,
             f"the worker to handle the spend topic up to offset {offset} (log: {w.log_path})")


@pytest.fixture(scope="module")
def imported(worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> WorkerProcess:
    path = tmp_path_factory.mktemp("spend") / "spend.csv"
    path.write_text("channel,day,amount,currency\n" + "".join(",".join(r) + "\n" for r in ROWS))
    done = journey(worker, "spend", "import", str(path))
    assert done.returncode == 0, done.stderr
    assert f"sent {len(ROWS)} lines (4 channels, {OLD} to {D1})" in done.stdout
    assert "the worker applied them" in done.stdout
    return worker


def test_import_gives_the_sums_of_the_files_latest_lines(imported: WorkerProcess):
    # applied when the command returned: no waiting here
    assert stored(imported) == expected_cents(0, TODAY)
    assert stored(imported, TODAY - 3, TODAY) == expected_cents(TODAY - 3, TODAY)
    assert stored(imported, TODAY - 1, TODAY - 1) == {"search": 150_010, "email": 4_025}
    assert stored(imported, TODAY + 1, TODAY + 400) == {}
    shown = journey(imported, "spend", "show", "--days", "3", "--json")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == {
        "currency": "EUR", "first_day": iso_day(TODAY - 2), "last_day": iso_day(TODAY),
        "spend": {"search": 2300.1, "email": 40.25, "paid social": 0.0},  # D1 and D2; email's D3 is out
    }


def test_a_file_with_an_invalid_line_is_refused_whole(imported: WorkerProcess):
    before = imported.end_offsets(imported.settings.spend_topic)
    bad = f"channel,day,amount,currency\nsearch,{D1},1,EUR\nemail,{D1},-5,EUR\nsocial,2026-02-30,3,EUR\n"
    done = journey(imported, "spend", "import", "-", stdin=bad)
    assert done.returncode == 2
    assert "line 3: negative_value" in done.stderr and "line 4: invalid_timestamp" in done.stderr
    assert "nothing was imported" in done.stderr and "Traceback" not in done.stderr
    assert imported.end_offsets(imported.settings.spend_topic) == before
    assert stored(imported) == expected_cents(0, TODAY)


def test_hostile_messages_are_dead_lettered_with_their_reason_and_change_nothing(imported: WorkerProcess):
    hostile: list[tuple[bytes, bytes, str]] = [
        (f"search|{D1}".encode(), orjson.dumps({"channel": "search", "day": D1, "amount": -10}), "negative_value"),
        (f"search|{D1}".encode(), orjson.dumps({"channel": "search", "day": D1, "amount": 10, "currency": "XXX"}),
         "currency_mismatch"),
        (f"|{D1}".encode(), orjson.dumps({"day": D1, "amount": 10}), "missing_field"),
        (f"search|{D1}".encode(), b"{not json", "undecodable"),
        (b"search|2026-13-01", orjson.dumps({"channel": "search", "day": "2026-13-01", "amount": 10}),
         "invalid_timestamp"),
        (f"search|{D1}".encode(), orjson.dumps({"channel": "search", "day": f"{D1}T00:00:00Z", "amount": 10}),
         "invalid_timestamp"),
        (f"email|{D1}".encode(), orjson.dumps({"channel": "search", "day": D1, "amount": 10}), "invalid_key"),
    ]
    offsets = publish(imported, *((k, v) for k, v, _ in hostile))
    wait_handled(imported, offsets[-1])
    assert stored(imported) == expected_cents(0, TODAY)

    letters = {}
    for m in read_topic(imported.settings, imported.settings.dlq_topic):
        h = {k: v.decode() for k, v in m.headers}
        if h["journey.source.topic"] == imported.settings.spend_topic:
            letters[int(h["journey.source.offset"])] = (h["journey.error.reason"], m.key, m.value)
    assert letters == {off: (reason, k, v) for off, (k, v, reason) in zip(offsets, hostile, strict=True)}


def test_redelivery_and_a_zombies_replay_change_nothing(imported: WorkerProcess):
    before = stored(imported)
    # the winning line, published again (a producer's retry, a re-run of the import): applied, same amount
    winning = orjson.dumps({"channel": "search", "day": D1, "amount": 1500.10, "currency": "EUR"})
    (offset,) = publish(imported, (f"search|{D1}".encode(), winning))
    wait_handled(imported, offset)
    assert stored(imported) == before

    # a worker that lost the partition in a rebalance and replays an old offset with an old amount
    async def replay(store: RedisStore) -> list[Any]:
        old = Spend("search", TODAY - 1, 120_050)
        return [await store.apply_spend(0, 0, old), await store.apply_spend(0, offset, old),
                await store.spend_offsets()]

    assert on_store(imported, replay) == [False, False, {0: offset}]
    assert stored(imported) == before
