"""``journey spend import``: check a file of marketing spend (CSV or JSON lines) line by line, publish
it to the spend topic, and wait until the worker has applied it.

The file is refused as a whole if any line is invalid: a half-imported spend table would give
wrong acquisition costs without anyone noticing.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from models.events import Invalid
from models.spend import Spend
from streams.ops.backfill import open_input
from streams.service.handler import Limits
from streams.service.spend import check_spend

#: The CSV columns of a spend file (``date`` may stand for ``day``); other columns are ignored.
CSV_COLUMNS = ("channel", "day", "date", "amount", "currency")
REQUIRED_COLUMNS = ("channel", "amount")


class SpendImportError(Exception):
    """A problem with the input file or the broker, for the user (no traceback)."""


@dataclass
class Line:
    """One input line as the message the worker will read."""

    number: int
    value: bytes


@dataclass
class Checked:
    """The lines of a file that passed, with their spend, and the problems of those that did not."""

    lines: list[tuple[Line, Spend]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "line N: reason: detail"


def read_lines(path: str) -> Iterator[Line]:
    """The messages of a CSV file with a header row, or of a JSON-lines file (``-``: standard input)."""
    with open_input(path, SpendImportError) as stream:
        first = stream.readline()
        if not first:
            return
        if first.lstrip("\ufeff \t").startswith("{"):
            for number, text in enumerate([first, *stream], start=1):
                if text.strip():
                    yield Line(number, text.strip().encode("utf-8", errors="surrogateescape"))
        else:
            yield from _csv_lines(first, stream)


def _csv_lines(first: str, rest: IO[str]) -> Iterator[Line]:
    reader = csv.DictReader([first.lstrip("\ufeff"), *rest])
    header = [name.strip() for name in reader.fieldnames or ()]
    missing = [c for c in REQUIRED_COLUMNS if c not in header] + ([] if {"day", "date"} & set(header) else ["day"])
    if missing:
        raise SpendImportError(f"line 1: the CSV header must name the columns channel,day,amount,currency; "
                               f"missing {', '.join(missing)} (header: {first.strip()[:200]!r})")
    reader.fieldnames = header
    for row in reader:
        doc: dict[str, Any] = {}
        for name, cell in row.items():
            if name not in CSV_COLUMNS or not isinstance(cell, str) or not cell.strip():
                continue  # an empty cell is a missing field
            cell = cell.strip()
            doc[name] = _number(cell) if name == "amount" else cell
        yield Line(reader.line_num, orjson.dumps(doc))


def _number(cell: str) -> int | float | str:
    """A CSV amount as a JSON number (left as text when it is not one: the check names it)."""
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        value = float(cell)
    except ValueError:
        return cell
    return value if value == value and abs(value) != float("inf") else cell  # NaN, inf: not JSON numbers


def check(lines: Iterator[Line], limits: Limits, *, now_ms: int) -> Checked:
    """Judge every line as the worker will (its key is made from the line: ``<channel>|<day>``)."""
    checked = Checked()
    for line in lines:
        item = check_spend(line.value, limits, now_ms, key=None)
        if isinstance(item, Invalid):
            checked.problems.append(f"line {line.number}: {item.reason.value}: {item.detail}")
        else:
            checked.lines.append((line, item))
    return checked


def publish(checked: Checked, *, bootstrap_servers: list[str], topic: str) -> dict[int, tuple[int, int]]:
    """Send the lines in file order (a later line for the same channel and day corrects an earlier
    one, so order matters); return the offsets sent per partition, ``(first, last)``."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        # one request in flight: a retried send cannot overtake the next one (the latest line must win)
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5,
                                 max_in_flight_requests_per_connection=1)
    except KafkaError as exc:
        raise SpendImportError(f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}") from None
    ranges: dict[int, tuple[int, int]] = {}
    try:
        futures = [producer.send(topic, key=spend.key.encode(), value=line.value) for line, spend in checked.lines]
        producer.flush()
        for f in futures:
            meta = f.get(timeout=60)
            lo, hi = ranges.get(meta.partition, (meta.offset, meta.offset))
            ranges[meta.partition] = (min(lo, meta.offset), max(hi, meta.offset))
    except KafkaError as exc:
        raise SpendImportError(f"publishing to {topic} failed: {exc}") from None
    finally:
        producer.close()
    return ranges


async def wait_handled(ranges: dict[int, tuple[int, int]], offsets: Callable[[], Awaitable[dict[int, int]]], *,
                       timeout: float) -> bool:
    """Wait until the worker has handled every record sent (applied or dead-lettered): its offset
    marks in the spend table reached the last offsets sent. False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        handled = await offsets()
        if all(handled.get(p, -1) >= hi for p, (_, hi) in ranges.items()):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
