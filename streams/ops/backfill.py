"""``journey backfill``: publish a history (JSON lines or CSV) to the touchpoints topic, then say
what the worker applied and dead-lettered.

Every adoption starts with a replay of history. The events keep their own event times, so the
worker applies them exactly as it would have live (see the README's time semantics).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from models.events import Invalid, decode_event
from models.journey_map import JourneyMap
from models.kpis import check_survey
from models.value import check_money

#: CSV columns that are numbers in the JSON the worker reads (the rest stay strings; empty cells are left out).
NUMERIC_COLUMNS = ("value",)


class BackfillError(Exception):
    """A problem with the input file, for the user (no traceback)."""


@dataclass
class Line:
    """One input line as the event the worker will read."""

    number: int
    value: bytes
    key: bytes | None


@dataclass
class Summary:
    """What a backfill sent, and what became of it."""

    lines: int = 0
    sent: int = 0
    invalid: Counter[str] = field(default_factory=Counter)  # reason -> lines (dry run: would be dead-lettered)
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> first, last offset sent
    applied_through: dict[int, int] = field(default_factory=dict)
    dead_lettered: Counter[str] = field(default_factory=Counter)


def open_input(path: str, error: type[Exception]) -> IO[str]:
    """A text file to read lines from (``-``: standard input), bytes that are not UTF-8 kept as they are
    (the worker dead-letters them); ``error`` with a one-line message when it cannot be opened."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    try:
        return Path(path).open(encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None


def read_lines(path: str) -> Iterator[Line]:
    """The events of a JSON-lines or CSV file (``-``: standard input), keyed by customer id."""
    with open_input(path, BackfillError) as stream:
        first = stream.readline()
        if not first:
            return
        if first.lstrip().startswith("{"):
            yield from _json_lines(first, stream)
        else:
            yield from _csv_lines(first, stream)


def _key(doc: Any) -> bytes | None:
    if isinstance(doc, dict):
        cid = doc.get("customer_id")
        return cid.encode() if isinstance(cid, str) else None
    return None


def _json_lines(first: str, rest: IO[str]) -> Iterator[Line]:
    for number, text in enumerate([first, *rest], start=1):
        text = text.strip()
        if not text:
            continue
        raw = text.encode("utf-8", errors="surrogateescape")
        try:
            key = _key(orjson.loads(raw))
        except orjson.JSONDecodeError:
            key = None  # still sent: the worker dead-letters it with its reason, nothing is dropped here
        yield Line(number, raw, key)


def _csv_lines(first: str, rest: IO[str]) -> Iterator[Line]:
    reader = csv.DictReader([first, *rest])
    for number, row in enumerate(reader, start=2):
        doc: dict[str, Any] = {}
        for name, cell in row.items():
            if name is None or cell in (None, ""):
                continue
            if name in NUMERIC_COLUMNS or (name == "timestamp" and cell.lstrip("-").isdigit()):
                try:
                    doc[name] = int(cell) if cell.lstrip("-").isdigit() else float(cell)
                except ValueError:
                    doc[name] = cell
            else:
                doc[name] = cell
        yield Line(number, orjson.dumps(doc), _key(doc))


def check(line: Line, journey: JourneyMap, *, now_ms: int, currency: str, rates: dict[str, float],
          max_value: float, max_payload_bytes: int, min_event_ms: int) -> Invalid | None:
    """Why the worker would dead-letter this line (None: it would apply it)."""
    event = decode_event(line.value, touchpoints=journey.touchpoints, now_ms=now_ms,
                         max_payload_bytes=max_payload_bytes, max_future_ms=300_000, min_event_ms=min_event_ms)
    if isinstance(event, Invalid):
        return event
    checked = check_money(event, journey.value_roles.get(event.touchpoint), currency=currency, rates=rates,
                          max_value=max_value)
    if isinstance(checked, Invalid):
        return checked
    surveyed = check_survey(checked, journey.surveys.get(event.touchpoint))
    return surveyed if isinstance(surveyed, Invalid) else None


def publish(lines: Iterator[Line], *, bootstrap_servers: list[str], topic: str, rate: float,
            progress: Callable[[int, float], None]) -> Summary:
    """Send every line (at ``rate`` lines per second; 0: as fast as the broker takes them)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    summary = Summary()
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5, acks="all",
                                 max_request_size=2 * 1024 * 1024)
    except KafkaError as exc:
        raise BackfillError(f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}") from None
    started = time.monotonic()
    futures = []
    try:
        for line in lines:
            summary.lines += 1
            futures.append(producer.send(topic, key=line.key, value=line.value))
            if rate > 0:
                ahead = summary.lines / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if summary.lines % 1000 == 0:
                progress(summary.lines, time.monotonic() - started)
        producer.flush()
        for f in futures:
            meta = f.get(timeout=60)
            lo, hi = summary.ranges.get(meta.partition, (meta.offset, meta.offset))
            summary.ranges[meta.partition] = (min(lo, meta.offset), max(hi, meta.offset))
            summary.sent += 1
    finally:
        producer.close()
    summary.seconds = time.monotonic() - started
    progress(summary.lines, summary.seconds)
    return summary


async def wait_applied(summary: Summary, offsets: Callable[[], Awaitable[dict[int, int]]], *, timeout: float,
                       progress: Callable[[int, int], None]) -> bool:
    """Wait until the store has applied everything sent (its committed offsets reached the last ones
    sent). False on timeout."""
    import asyncio

    deadline = time.monotonic() + timeout
    total = sum(hi - lo + 1 for lo, hi in summary.ranges.values())
    while True:
        committed = await offsets()
        summary.applied_through = {p: committed.get(p, -1) for p in summary.ranges}
        done = sum(min(max(committed.get(p, -1) - lo + 1, 0), hi - lo + 1) for p, (lo, hi) in summary.ranges.items())
        progress(done, total)
        if done >= total:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


def dead_letters_of(summary: Summary, *, bootstrap_servers: list[str], source_topic: str, dlq_topic: str,
                    since_ms: int) -> Counter[str]:
    """The dead letters of the records this backfill sent, by reason (read from the DLQ topic)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, consumer_timeout_ms=1000)
    reasons: Counter[str] = Counter()
    seen: set[tuple[int, int]] = set()  # a record dead-lettered twice (after a crash) counts once
    try:
        parts = [TopicPartition(dlq_topic, p) for p in sorted(consumer.partitions_for_topic(dlq_topic) or ())]
        if not parts:
            return reasons
        consumer.assign(parts)
        starts = consumer.offsets_for_times({tp: since_ms for tp in parts})
        ends = consumer.end_offsets(parts)
        for tp in parts:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found else ends[tp])
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for batch in consumer.poll(timeout_ms=500).values():
                for m in batch:
                    h = {k: v.decode(errors="replace") for k, v in (m.headers or [])}
                    if h.get("journey.source.topic") != source_topic:
                        continue
                    p, off = int(h.get("journey.source.partition", -1)), int(h.get("journey.source.offset", -1))
                    lo, hi = summary.ranges.get(p, (1, 0))
                    if lo <= off <= hi and (p, off) not in seen:
                        seen.add((p, off))
                        reasons[h.get("journey.error.reason", "?")] += 1
    finally:
        consumer.close()
    return reasons
