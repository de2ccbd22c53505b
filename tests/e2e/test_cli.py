"""The CLI answers user mistakes with a clear message and an exit code, never a traceback."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import orjson

ROOT = Path(__file__).parents[2]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_default_map_checks_ok_and_shows_its_stages(journey):
    check = journey("map", "check")
    assert check.returncode == 0, check.stderr
    assert "OK (5 stages, 13 touchpoints, 10 activities)" in check.stdout
    show = journey("map", "show")
    assert "1. awareness" in show.stdout and "ad_click, site_visit" in show.stdout
    assert "surveys (no stage): nps_survey (nps), csat_survey (csat)" in show.stdout
    assert "Critical path (*): ad_click -> site_visit -> signup -> add_to_cart" in show.stdout
    shown = orjson.loads(journey("map", "show", "--json").stdout)
    assert shown["critical_path"][:3] == ["ad_click", "site_visit", "signup"] and len(shown["activities"]) == 10


def test_map_schema_prints_the_contract_of_your_map_and_settings(journey, tmp_path: Path):
    import jsonschema

    shop = tmp_path / "shop.yaml"
    shop.write_text("stages: [browse, buy]\ntouchpoints:\n  visit: {stage: browse}\n"
                    "  order: {stage: buy, value: order}\n")
    result = journey("map", "schema", str(shop), env={"JOURNEY_CURRENCY": "USD", "JOURNEY_FX_RATES": "EUR=1.1",
                                                      "JOURNEY_MAX_VALUE": "500"})
    assert result.returncode == 0, result.stderr
    schema = orjson.loads(result.stdout)
    check = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    base = {"event_id": "e1", "customer_id": "c1", "timestamp": "2026-11-24T07:20:00Z"}
    assert check.is_valid({**base, "touchpoint": "visit"})
    assert check.is_valid({**base, "touchpoint": "order", "value": 450.0, "currency": "USD"})
    assert not check.is_valid({**base, "touchpoint": "purchase"})  # not a touchpoint of this map
    assert not check.is_valid({**base, "touchpoint": "order"})  # an order needs its value
    assert not check.is_valid({**base, "touchpoint": "order", "value": 501.0})  # above JOURNEY_MAX_VALUE
    assert not check.is_valid({**base, "touchpoint": "order", "value": 10.0, "currency": "GBP"})  # no rate
    # 460 EUR is 506 USD: above the maximum once converted
    assert not check.is_valid({**base, "touchpoint": "order", "value": 460.0, "currency": "EUR"})
    assert check.is_valid({**base, "touchpoint": "order", "value": 450.0, "currency": "EUR"})  # 495 USD


def test_every_command_and_flag_has_help_text():
    import argparse

    from streams.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "journey")
    assert missing == []


def test_a_broken_map_is_refused_naming_the_line_and_entry(journey, tmp_path: Path):
    bad = tmp_path / "journey.yaml"
    bad.write_text("stages: [awareness]\ntouchpoints:\n  visit: {stage: awarenes}\n")
    result = journey("map", "check", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3: touchpoints.visit.stage: unknown stage 'awarenes'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_worker_refuses_to_start_on_an_invalid_map(journey, tmp_path: Path):
    bad = tmp_path / "journey.yaml"
    bad.write_text("stages: [a, b]\ntouchpoints: {}\n")
    result = journey("worker", env={"JOURNEY_MAP": str(bad)}, timeout=60)
    assert result.returncode == 2
    assert "touchpoints: must be a non-empty mapping" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_worker_says_what_to_do_when_redis_is_not_there(journey):
    result = journey("worker", env={"JOURNEY_REDIS_URL": f"redis://127.0.0.1:{unused_port()}/0"}, timeout=60)
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr and "journey stack up" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_worker_refuses_to_serve_beyond_this_machine_without_a_token(journey):
    result = journey("worker", env={"JOURNEY_WEB_HOST": "0.0.0.0", "JOURNEY_API_TOKEN": ""}, timeout=60)  # noqa: S104
    assert result.returncode == 2
    assert "JOURNEY_API_TOKEN is not set" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_setting_names_the_variable(journey):
    result = journey("map", "show", env={"JOURNEY_WEB_PORT": "lots"})
    assert result.returncode == 2
    assert "JOURNEY_WEB_PORT" in result.stderr and "Traceback" not in result.stderr


def test_bad_arguments_get_usage_not_a_traceback(journey):
    result = journey("simulate", "--customers", "many")
    assert result.returncode == 2
    assert "not a whole number: 'many'" in result.stderr and "Traceback" not in result.stderr


def test_looking_up_an_unknown_customer_says_so(journey):
    result = journey("customer", "no-such-customer-anywhere", env={"JOURNEY_REDIS_PREFIX": "jt:test:empty"})
    assert result.returncode == 1
    assert "no customer 'no-such-customer-anywhere'" in result.stderr


def test_backfill_dry_run_says_what_would_be_dead_lettered(journey, tmp_path: Path):
    history = tmp_path / "history.csv"
    history.write_text(
        "event_id,customer_id,touchpoint,timestamp,value\n"
        "e1,c1,site_visit,1994-03-01T12:00:00Z,\n"
        "e2,c1,purchase,1994-03-02T12:00:00Z,19.90\n"
        "e3,c2,teleport,1994-03-02T12:00:00Z,\n"
        "e4,c2,purchase,1994-03-03T12:00:00Z,\n"
    )
    result = journey("backfill", str(history), "--dry-run")
    assert result.returncode == 1, result.stderr
    assert "4 lines: 2 would be applied, 2 dead-lettered (1 missing_field, 1 unknown_touchpoint)" in result.stdout
    assert "line 4: unknown_touchpoint" in result.stdout and "line 5: missing_field" in result.stdout
    missing = journey("backfill", str(tmp_path / "nope.jsonl"), "--dry-run")
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr


def test_docker_compose_file_is_valid():
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is not installed (scripts/test.sh installs Debian's package)"
    result = subprocess.run([compose, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = subprocess.run([compose, "config", "--services"], cwd=ROOT, capture_output=True, text=True).stdout
    assert {"kafka", "redis", "worker", "prometheus", "grafana"} <= set(services.split())
    for path in ("deploy/prometheus.yml", "deploy/grafana/dashboards/journey-tracker.json"):
        assert (ROOT / path).exists(), path
