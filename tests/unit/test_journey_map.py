"""Journey map files: the default one loads; broken ones are refused with the file, line and entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.journey_map import MapError, parse_journey_map
from streams.journey_file import MapFileError, load_journey_map
from streams.settings import DEFAULT_MAP


def test_default_map_has_the_documented_touchpoints_in_their_stages():
    journey = load_journey_map(DEFAULT_MAP)
    assert journey.stages == ("awareness", "consideration", "purchase", "retention", "advocacy")
    expected = {
        "ad_click": "awareness", "site_visit": "awareness", "signup": "consideration",
        "product_view": "consideration", "add_to_cart": "purchase", "checkout": "purchase",
        "purchase": "purchase", "onboarding_complete": "retention", "upgrade": "retention",
        "refund": "retention", "review": "advocacy",
        "nps_survey": "", "csat_survey": "",  # surveys have no stage
    }
    assert dict(journey.touchpoints) == expected
    assert dict(journey.surveys) == {"nps_survey": "nps", "csat_survey": "csat"}


def test_survey_touchpoints_are_checked_and_never_steps_of_the_flow(tmp_path: Path):
    f = tmp_path / "journey.yaml"
    f.write_text(
        "stages: [a, b]\n"
        "touchpoints:\n  x: {stage: a}\n  y: {stage: b}\n"
        "  nps: {survey: nps, stage: a}\n  poll: {survey: poll}\n  csat: {survey: csat}\n"
        "flow:\n  - {from: x, to: csat, optimistic: 1m, likely: 2m, pessimistic: 3m}\n"
    )
    with pytest.raises(MapFileError) as err:
        load_journey_map(f)
    text = str(err.value)
    assert "touchpoints.nps.stage: a survey has no stage or value (only survey: nps|csat)" in text
    assert "touchpoints.poll.survey: must be one of nps, csat, got 'poll'" in text
    assert "flow[0]: 'csat' is a survey: surveys are not steps of the flow" in text


def test_a_bad_stage_reference_names_file_line_and_entry(tmp_path: Path):
    f = tmp_path / "journey.yaml"
    f.write_text("stages: [awareness, purchase]\ntouchpoints:\n  visit: {stage: awareness}\n  buy: {stage: buying}\n")
    with pytest.raises(MapFileError) as err:
        load_journey_map(f)
    assert str(err.value) == (
        f"{f}:4: touchpoints.buy.stage: unknown stage 'buying' (stages are: awareness, purchase)"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path):
    f = tmp_path / "journey.yaml"
    f.write_text("stages: [a, a]\ntouchpoints:\n  x: 3\n  'y,z': {stage: a}\ncolour: blue\n")
    with pytest.raises(MapFileError) as err:
        load_journey_map(f)
    lines = str(err.value).splitlines()
    assert any(":1: stages[1]: stage 'a' is listed twice" in line for line in lines)
    assert any(":3: touchpoints.x: must be a mapping with a 'stage'" in line for line in lines)
    assert any(":4: touchpoints.y,z:" in line and "not a valid name" in line for line in lines)
    assert any(":5: colour: unknown entry" in line for line in lines)


def test_unreadable_and_non_yaml_files_are_clear_errors(tmp_path: Path):
    with pytest.raises(MapFileError, match="cannot read the journey map"):
        load_journey_map(tmp_path / "missing.yaml")
    f = tmp_path / "broken.yaml"
    f.write_text("stages: [a\n")
    with pytest.raises(MapFileError, match=r"broken.yaml:\d+: not valid YAML"):
        load_journey_map(f)


def test_empty_document_is_refused():
    with pytest.raises(MapError):
        parse_journey_map(None)


FLOW_MAP = """stages: [a, b]
touchpoints:
  x: {stage: a}
  y: {stage: a}
  z: {stage: b}
flow:
%s
"""


@pytest.mark.parametrize(
    ("flow", "expected"),
    [
        ("  - {from: x, to: y, optimistic: 1h, likely: 10m, pessimistic: 2h}",
         ":7: flow[0]: optimistic 1h is more than most likely 10m"),
        ("  - {from: x, to: nowhere, optimistic: 1m, likely: 2m, pessimistic: 3m}",
         ":7: flow[0].to: unknown touchpoint 'nowhere'"),
        ("  - {from: x, to: y, optimistic: 1m, likely: 2m, pessimistic: 3m}\n"
         "  - {from: y, to: z, optimistic: 1m, likely: 2m, pessimistic: 3m}\n"
         "  - {from: z, to: y, optimistic: 1m, likely: 2m, pessimistic: 3m}",
         "cycle: y -> z -> y"),
        ("  - {from: x, to: y, optimistic: 1m, likely: 2m, pessimistic: 3m}\n"
         "  - {from: z, to: y, optimistic: 1m, likely: 2m, pessimistic: 3m}",
         "more than one start node: x, z"),
        ("  - {from: x, to: y, optimistic: soon, likely: 2m, pessimistic: 3m}",
         ":7: flow[0].optimistic: not a duration: 'soon'"),
    ],
)
def test_an_invalid_flow_is_refused_with_the_entry_and_line(tmp_path: Path, flow: str, expected: str):
    f = tmp_path / "journey.yaml"
    f.write_text(FLOW_MAP % flow)
    with pytest.raises(MapFileError) as err:
        load_journey_map(f)
    assert expected in str(err.value)


def test_stall_probability_is_the_same_as_the_matching_z(tmp_path: Path):
    f = tmp_path / "journey.yaml"
    flow = "  - {from: x, to: z, optimistic: 1m, likely: 2m, pessimistic: 7m}"
    f.write_text(FLOW_MAP % flow + "alerts: {stall_probability: 0.9772}\n")
    by_probability = load_journey_map(f)
    f.write_text(FLOW_MAP % flow + "alerts: {stall_z: 2}\n")
    assert by_probability.stall_after_ms == pytest.approx(load_journey_map(f).stall_after_ms, abs=1000)
    assert load_journey_map(f).stall_after_ms == (280_000, 0)  # TE 2m40s + 2 × σ 1m


def test_the_default_map_scores_after_purchase_and_onboarding_for_upgrades_within_14_days():
    spec = load_journey_map(DEFAULT_MAP).propensity
    assert spec.score_after == ("purchase", "onboarding_complete") and spec.upsell == ("upgrade",)
    assert spec.horizon_ms == 14 * 86_400_000 and spec.alert_threshold == 0.3


def test_a_map_without_a_propensity_section_scores_nothing():
    m = parse_journey_map({"stages": ["a"], "touchpoints": {"x": {"stage": "a"}}})
    assert m.propensity.score_after == ()


def test_a_bad_propensity_section_names_each_entry():
    doc = {
        "stages": ["a"],
        "touchpoints": {"buy": {"stage": "a"}, "up": {"stage": "a"}},
        "propensity": {"score_after": ["buy", "byu"], "upsell": ["buy"], "horizon": "soon",
                       "alert_threshold": 1.5, "window": 3},
    }
    with pytest.raises(MapError) as err:
        parse_journey_map(doc)
    text = str(err.value)
    for expected in (
        "propensity.score_after[1]: unknown touchpoint 'byu'",
        "propensity: a touchpoint cannot be both a scoring point and the upsell: ['buy']",
        "propensity.horizon:",
        "propensity.alert_threshold: must be a probability from 0 to 1, got 1.5",
        "propensity.window: unknown entry",
    ):
        assert expected in text
