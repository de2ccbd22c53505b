"""The journey definition: stages in order and the stage each touchpoint belongs to."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

Path = tuple[str | int, ...]

# Names end up inside Redis values and metric labels, so keep them plain.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class MapError(ValueError):
    """An invalid journey map; ``problems`` lists every (entry path, message)."""

    def __init__(self, problems: list[tuple[Path, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_path(p)}: {m}" for p, m in problems))


def format_path(path: Path) -> str:
    """Render an entry path the way a user reads the file.

    Examples
    --------
    >>> format_path(("touchpoints", "purchase", "stage"))
    'touchpoints.purchase.stage'
    >>> format_path(("stages", 2))
    'stages[2]'
    """
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class JourneyMap:
    """Stages in order and, for each touchpoint, its stage."""

    stages: tuple[str, ...]
    touchpoints: Mapping[str, str]
    _rank: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rank", {s: i for i, s in enumerate(self.stages)})

    def stage_of(self, touchpoint: str) -> str:
        return self.touchpoints[touchpoint]

    def rank(self, stage: str) -> int:
        """Position of a stage in the journey, 0 for the first."""
        return self._rank[stage]


def parse_journey_map(doc: object) -> JourneyMap:
    """Validate a parsed map document (as loaded from YAML) and build the map.

    Parameters
    ----------
    doc
        The document: ``{"stages": [...], "touchpoints": {name: {"stage": ...}}}``.

    Raises
    ------
    MapError
        Listing every problem with the path of the entry it concerns.

    Examples
    --------
    >>> m = parse_journey_map({"stages": ["awareness", "purchase"],
    ...                        "touchpoints": {"visit": {"stage": "awareness"},
    ...                                        "buy": {"stage": "purchase"}}})
    >>> m.rank(m.stage_of("buy"))
    1
    >>> parse_journey_map({"stages": ["a"], "touchpoints": {"x": {"stage": "b"}}})
    Traceback (most recent call last):
    ...
    models.journey_map.MapError: touchpoints.x.stage: unknown stage 'b' (stages are: a)
    """
    problems: list[tuple[Path, str]] = []
    if not isinstance(doc, Mapping):
        raise MapError([((), "the map must be a mapping with 'stages' and 'touchpoints'")])
    known = {"version", "stages", "touchpoints"}
    for key in doc:
        if key not in known:
            problems.append(((str(key),), f"unknown entry (expected one of: {', '.join(sorted(known))})"))

    stages_doc = doc.get("stages")
    stages: list[str] = []
    if not isinstance(stages_doc, list) or not stages_doc:
        problems.append((("stages",), "must be a non-empty list of stage names"))
    else:
        for i, stage in enumerate(stages_doc):
            if not isinstance(stage, str) or not NAME.match(stage):
                problems.append((("stages", i), f"{stage!r} is not a valid name (letters, digits, _ . -)"))
            elif stage in stages:
                problems.append((("stages", i), f"stage {stage!r} is listed twice"))
            else:
                stages.append(stage)

    tps_doc = doc.get("touchpoints")
    touchpoints: dict[str, str] = {}
    if not isinstance(tps_doc, Mapping) or not tps_doc:
        problems.append((("touchpoints",), "must be a non-empty mapping of touchpoint name to {stage: ...}"))
    else:
        for name, spec in tps_doc.items():
            path: Path = ("touchpoints", str(name))
            if not isinstance(name, str) or not NAME.match(name):
                problems.append((path, f"{name!r} is not a valid name (letters, digits, _ . -)"))
                continue
            if not isinstance(spec, Mapping) or "stage" not in spec:
                problems.append((path, "must be a mapping with a 'stage'"))
                continue
            stage = spec["stage"]
            if stage not in stages:
                problems.append((path + ("stage",), f"unknown stage {stage!r} (stages are: {', '.join(stages)})"))
                continue
            touchpoints[str(name)] = stage
    if problems:
        raise MapError(problems)
    return JourneyMap(tuple(stages), touchpoints)
