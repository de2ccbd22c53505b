"""The published JSON Schema is the contract: it and the worker judge every message alike.

Every simulator record (valid, duplicate, late and malformed) and every hostile kind of the fuzz
suite is judged twice: by the shipped schema with a standard validator (formats checked), and by
the worker's own decoder (``streams.service.handler.decode``: the event contract plus the money
rules). They must agree on valid/invalid for every message whose refusal is about content. The only
refusals a schema cannot state are about circumstances: the payload's size in bytes and an event
time ahead of the worker's clock (``models/schema.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from models.events import Invalid, Reason
from models.partition import Rules
from models.schema import event_schema
from streams.devtools import fuzz
from streams.devtools.simulate import simulate
from streams.journey_file import load_journey_map
from streams.service.handler import Limits, decode
from streams.service.ports import SourceRecord
from streams.settings import DEFAULT_MAP, Settings

SHIPPED = Path(__file__).parents[2] / "models/schemas/touchpoint-event.schema.json"
NOW_MS = 1_795_504_800_000  # 2026-11-24
CIRCUMSTANCES = {Reason.PAYLOAD_TOO_LARGE, Reason.TIMESTAMP_IN_FUTURE}
JOURNEY = load_journey_map(DEFAULT_MAP)
RULES = Rules(JOURNEY)
LIMITS = Limits()


def worker_accepts(value: bytes | None) -> tuple[bool, Reason | None]:
    verdict = decode(SourceRecord(b"k", value, "touchpoints", 0, 0), RULES, LIMITS, NOW_MS)
    return (False, verdict.reason) if isinstance(verdict, Invalid) else (True, None)


def schema_accepts(validator: jsonschema.Validator, value: bytes | None) -> bool:
    if value is None:
        return False  # a tombstone is no JSON document at all
    try:
        doc = json.loads(value.decode("utf-8"), parse_constant=_refuse)  # a standard JSON parser
    except (UnicodeDecodeError, ValueError):
        return False
    return validator.is_valid(doc)


def _refuse(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    schema = json.loads(SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_the_shipped_schema_is_the_one_generated_for_the_built_in_map_and_the_default_limits():
    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    # The handler's defaults are the settings' defaults (so the shipped file describes a default worker).
    assert (LIMITS.max_payload_bytes, LIMITS.currency, LIMITS.max_value) == (
        defaults["max_payload_bytes"], defaults["currency"], defaults["max_value"])
    assert defaults["fx_rates"] == "" and LIMITS.rates == {}
    assert LIMITS.min_event_ms == 0 and defaults["min_event_time"] == "1970-01-01T00:00:00Z"
    generated = event_schema(JOURNEY, currency="EUR", rates={}, max_value=10_000_000.0, min_event_ms=0)
    assert json.loads(SHIPPED.read_text()) == json.loads(orjson.dumps(generated))


def test_every_simulator_record_is_judged_alike(validator):
    records = list(simulate(customers=400, seed=11, now_ms=NOW_MS, malformed_share=0.05)[1])
    kinds = {r.kind for r in records}
    assert {"event", "malformed", "duplicate", "late"} <= kinds
    disagreements = []
    for r in records:
        ok, reason = worker_accepts(r.value)
        if reason in CIRCUMSTANCES:
            continue
        if schema_accepts(validator, r.value) != ok:
            disagreements.append((r.kind, reason, r.value[:200]))
        if r.kind in ("event", "duplicate", "late"):
            assert ok, (r.kind, reason, r.value[:200])  # what the simulator calls valid, the worker applies
    assert disagreements == []


def test_every_hostile_kind_is_refused_by_both_with_the_stated_reason(validator):
    messages = [*fuzz.hostile_messages(len(fuzz.KINDS) * 5, seed=5, now_ms=NOW_MS, customers=["c1", "c-2", "ç3"]),
                *fuzz.rare_messages(seed=5, now_ms=NOW_MS, customers=["c1"])]
    assert {m.kind for m in messages} == set(fuzz.KINDS) | set(fuzz.RARE)
    wrong_reason, schema_accepts_it = [], []
    for m in messages:
        ok, reason = worker_accepts(m.value)
        if ok or reason is not m.reason:
            wrong_reason.append((m.kind, reason, m.reason))
        if m.reason not in CIRCUMSTANCES and schema_accepts(validator, m.value):
            schema_accepts_it.append(m.kind)
    assert wrong_reason == []
    assert schema_accepts_it == []


@pytest.mark.parametrize("doc", [
    # corners the contract states explicitly, accepted by both
    {"timestamp": 0},                                   # the epoch itself (history from 1970 is fine)
    {"timestamp": "1994-03-01T12:00:00.123456789+05:30"},  # nanosecond digits, an odd zone
    {"timestamp": 1_795_504_800_000.0},                 # a whole number written as a float
    {"customer_id": "Zoë 日本 🙂"},                       # any printable Unicode
    {"touchpoint": "purchase", "value": 0},
    {"touchpoint": "purchase", "value": 10_000_000, "currency": None},
    {"touchpoint": "review", "currency": "XTS"},        # a currency without an amount is ignored
    {"channel": None, "properties": None},
])
def test_valid_corners_are_accepted_by_both(validator, doc):
    body = {"event_id": "e1", "customer_id": "c1", "touchpoint": "site_visit", "timestamp": NOW_MS - 1000, **doc}
    raw = orjson.dumps(body)
    assert worker_accepts(raw) == (True, None)
    assert schema_accepts(validator, raw)
