"""The journey map: stages in order, the stage of each touchpoint, the expected flow (a PERT
network) and the alert thresholds that gap analysis judges customers against."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from models.durations import parse_duration
from models.pert import Activity, NetworkError, PertNetwork, deadline, z_for_probability

Path = tuple[str | int, ...]

# Names end up inside Redis values and metric labels, so keep them plain.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SEVERITIES = ("low", "medium", "high", "critical")
VALUE_ROLES = ("order", "refund")
#: Survey touchpoints: ``nps`` (``properties.score`` 0-10) and ``csat`` (1-5). They have no stage.
SURVEY_KINDS = {"nps": (0, 10), "csat": (1, 5)}
DEFAULT_STALL_Z = 2.0


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
class PropensitySpec:
    """When to score the upsell propensity and what counts as an upsell.

    ``score_after``: touchpoints after which the customer is scored (a *scoring point*).
    ``upsell``: touchpoints that are the upsell; one within ``horizon_s`` of a scoring point
    makes its label positive. ``alert_threshold``: a score at or above it raises an
    ``upsell_opportunity`` alert (at most once per customer per horizon). Empty
    ``score_after`` turns scoring off.
    """

    score_after: tuple[str, ...] = ()
    upsell: tuple[str, ...] = ()
    horizon_s: float = 14 * 86400
    alert_threshold: float = 0.3

    @property
    def horizon_ms(self) -> int:
        return round(self.horizon_s * 1000)


@dataclass(frozen=True, slots=True)
class JourneyMap:
    """Stages in order, each touchpoint's stage, the expected flow and the alert thresholds.

    ``max_silence_s[stage]`` is the longest a customer may stay silent in that stage before a
    ``drop_off`` alert (None: never). ``critical_path`` lists the touchpoints of the flow's
    critical path in order and ``stall_after_s[i]`` how long after ``critical_path[i]`` the
    next critical touchpoint is due (TE + z·σ of that activity; 0 for the last node).
    """

    stages: tuple[str, ...]
    touchpoints: Mapping[str, str]
    max_silence_s: Mapping[str, float | None] = field(default_factory=dict)
    # touchpoint -> "order" (adds its value to the customer's revenue) or "refund" (subtracts it)
    value_roles: Mapping[str, str] = field(default_factory=dict)
    severity: Mapping[str, str] = field(default_factory=dict)
    flow: PertNetwork | None = None
    stall_z: float = DEFAULT_STALL_Z
    propensity: PropensitySpec = field(default_factory=PropensitySpec)
    # touchpoint -> "nps" or "csat": a survey answer (its stage is "": it never moves the customer's stage)
    surveys: Mapping[str, str] = field(default_factory=dict)
    _rank: Mapping[str, int] = field(init=False, repr=False, compare=False)
    critical_path: tuple[str, ...] = field(init=False, compare=False)
    critical_index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    stall_after_ms: tuple[int, ...] = field(init=False, compare=False)
    max_silence_ms: Mapping[str, int | None] = field(init=False, repr=False, compare=False)
    # the flow's activities around each touchpoint (empty for touchpoints outside the flow)
    flow_sources: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    flow_targets: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def setattr_(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        setattr_("_rank", {s: i for i, s in enumerate(self.stages)})
        path = tuple(self.flow.critical_path()) if self.flow else ()
        after = []
        for node in path:
            nxt = self.flow.critical_next(node) if self.flow else None
            after.append(round(deadline(nxt, z=self.stall_z) * 1000) if nxt else 0)
        setattr_("critical_path", path)
        setattr_("critical_index", {tp: i for i, tp in enumerate(path)})
        setattr_("stall_after_ms", tuple(after))
        nodes = set(self.flow.nodes) if self.flow else set()
        setattr_("flow_sources", {n: self.flow.predecessors(n) for n in nodes} if self.flow else {})
        setattr_("flow_targets", {n: self.flow.successors(n) for n in nodes} if self.flow else {})
        setattr_(
            "max_silence_ms",
            {s: (round(v * 1000) if v else None) for s in self.stages for v in [self.max_silence_s.get(s)]},
        )

    def stage_of(self, touchpoint: str) -> str:
        """The touchpoint's stage ("" for a survey, which moves no one)."""
        return self.touchpoints[touchpoint]

    @property
    def order_rank(self) -> int:
        """Rank of the first stage with an order touchpoint (the purchase stage); stages after it are
        post-purchase (a drop-off there is churn). Without order touchpoints: past the last stage."""
        ranks = [self.rank_of(self.touchpoints[tp]) for tp, role in self.value_roles.items() if role == "order"]
        return min([r for r in ranks if r >= 0], default=len(self.stages))

    def rank(self, stage: str) -> int:
        """Position of a stage in the journey, 0 for the first."""
        return self._rank[stage]

    def rank_of(self, stage: str) -> int:
        """:meth:`rank`, or -1 for a stage this map does not have (removed by a map reload):
        a customer kept in such a stage moves to the stage of their next event."""
        return self._rank.get(stage, -1)


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
    known = {"version", "stages", "touchpoints", "flow", "alerts", "propensity"}
    for key in doc:
        if key not in known:
            problems.append(((str(key),), f"unknown entry (expected one of: {', '.join(sorted(known))})"))

    stages_doc = doc.get("stages")
    stages: list[str] = []
    silence: dict[str, float | None] = {}
    severity: dict[str, str] = {}
    if not isinstance(stages_doc, list) or not stages_doc:
        problems.append((("stages",), "must be a non-empty list of stage names"))
    else:
        for i, entry in enumerate(stages_doc):
            spec = entry if isinstance(entry, Mapping) else {"name": entry}
            stage = spec.get("name")
            if not isinstance(stage, str) or not NAME.match(stage):
                problems.append((("stages", i), f"{stage!r} is not a valid name (letters, digits, _ . -)"))
                continue
            if stage in stages:
                problems.append((("stages", i), f"stage {stage!r} is listed twice"))
                continue
            for key in spec:
                if key not in ("name", "max_silence", "severity"):
                    problems.append((("stages", i, str(key)), "unknown entry (expected name, max_silence, severity)"))
            stages.append(stage)
            silence[stage] = _duration(spec.get("max_silence"), ("stages", i, "max_silence"), problems)
            sev = spec.get("severity", "medium")
            if sev not in SEVERITIES:
                problems.append((("stages", i, "severity"), f"must be one of {', '.join(SEVERITIES)}, got {sev!r}"))
            severity[stage] = sev

    tps_doc = doc.get("touchpoints")
    touchpoints: dict[str, str] = {}
    value_roles: dict[str, str] = {}
    surveys: dict[str, str] = {}
    if not isinstance(tps_doc, Mapping) or not tps_doc:
        problems.append((("touchpoints",), "must be a non-empty mapping of touchpoint name to {stage: ...}"))
    else:
        for name, spec in tps_doc.items():
            path: Path = ("touchpoints", str(name))
            if not isinstance(name, str) or not NAME.match(name):
                problems.append((path, f"{name!r} is not a valid name (letters, digits, _ . -)"))
                continue
            if isinstance(spec, Mapping) and "survey" in spec:
                kind = spec["survey"]
                for key in spec:
                    if key != "survey":
                        problems.append(((*path, str(key)), "a survey has no stage or value (only survey: nps|csat)"))
                if kind not in SURVEY_KINDS:
                    problems.append(((*path, "survey"), f"must be one of {', '.join(SURVEY_KINDS)}, got {kind!r}"))
                    continue
                surveys[str(name)] = kind
                touchpoints[str(name)] = ""
                continue
            if not isinstance(spec, Mapping) or "stage" not in spec:
                problems.append((path, "must be a mapping with a 'stage' (or a 'survey')"))
                continue
            for key in spec:
                if key not in ("stage", "value"):
                    problems.append(((*path, str(key)), "unknown entry (expected stage, value; or survey)"))
            role = spec.get("value")
            if role is not None:
                if role not in VALUE_ROLES:
                    problems.append(((*path, "value"), f"must be one of {', '.join(VALUE_ROLES)}, got {role!r}"))
                else:
                    value_roles[str(name)] = role
            stage = spec["stage"]
            if stage not in stages:
                problems.append((path + ("stage",), f"unknown stage {stage!r} (stages are: {', '.join(stages)})"))
                continue
            touchpoints[str(name)] = stage

    flow = _parse_flow(doc.get("flow"), touchpoints, problems)
    stall_z = _parse_alerts(doc.get("alerts"), problems)
    propensity = _parse_propensity(doc.get("propensity"), touchpoints, problems)
    for i, a in enumerate(flow.activities if flow else ()):
        for end in (a.source, a.target):
            if end in surveys:
                problems.append((("flow", i), f"{end!r} is a survey: surveys are not steps of the flow"))
    if problems:
        raise MapError(problems)
    return JourneyMap(tuple(stages), touchpoints, silence, value_roles, severity, flow, stall_z, propensity, surveys)


def _duration(value: object, path: Path, problems: list[tuple[Path, str]]) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        problems.append((path, str(exc)))
        return None


def _parse_flow(doc: object, touchpoints: Mapping[str, str], problems: list[tuple[Path, str]]) -> PertNetwork | None:
    if doc is None:
        return None
    if not isinstance(doc, list) or not doc:
        problems.append((("flow",), "must be a list of activities {from, to, optimistic, likely, pessimistic}"))
        return None
    activities: list[Activity] = []
    ok = True
    for i, spec in enumerate(doc):
        path: Path = ("flow", i)
        if not isinstance(spec, Mapping):
            problems.append((path, "must be a mapping {from, to, optimistic, likely, pessimistic}"))
            ok = False
            continue
        for key in spec:
            if key not in ("from", "to", "optimistic", "likely", "pessimistic"):
                expected = "from, to, optimistic, likely, pessimistic"
                problems.append(((*path, str(key)), f"unknown entry (expected {expected})"))
                ok = False
        ends = []
        for key in ("from", "to"):
            name = spec.get(key)
            if name not in touchpoints:
                problems.append(((*path, key), f"unknown touchpoint {name!r} (not under touchpoints:)"))
                ok = False
            ends.append(str(name))
        times = []
        for key in ("optimistic", "likely", "pessimistic"):
            if key not in spec:
                problems.append(((*path, key), "missing (a duration such as 90s, 2h, 3d)"))
                ok = False
                continue
            times.append(_duration(spec[key], (*path, key), problems))
        if ok and None not in times and len(times) == 3:
            activities.append(Activity(ends[0], ends[1], *times))  # type: ignore[arg-type]
    if not ok:
        return None
    try:
        return PertNetwork.build(activities)
    except NetworkError as exc:
        problems.extend(exc.problems)
        return None


def _parse_alerts(doc: object, problems: list[tuple[Path, str]]) -> float:
    if doc is None:
        return DEFAULT_STALL_Z
    if not isinstance(doc, Mapping):
        problems.append((("alerts",), "must be a mapping (stall_z or stall_probability)"))
        return DEFAULT_STALL_Z
    for key in doc:
        if key not in ("stall_z", "stall_probability"):
            problems.append((("alerts", str(key)), "unknown entry (expected stall_z or stall_probability)"))
    if "stall_z" in doc and "stall_probability" in doc:
        problems.append((("alerts",), "give stall_z or stall_probability, not both"))
    if "stall_probability" in doc:
        q = doc["stall_probability"]
        if not isinstance(q, int | float) or not 0 < q < 1:
            problems.append((("alerts", "stall_probability"), f"must be a probability between 0 and 1, got {q!r}"))
            return DEFAULT_STALL_Z
        return z_for_probability(float(q))
    z = doc.get("stall_z", DEFAULT_STALL_Z)
    if isinstance(z, bool) or not isinstance(z, int | float) or z < 0:
        problems.append((("alerts", "stall_z"), f"must be a number >= 0, got {z!r}"))
        return DEFAULT_STALL_Z
    return float(z)


def _parse_propensity(doc: object, touchpoints: Mapping[str, str], problems: list[tuple[Path, str]]) -> PropensitySpec:
    if doc is None:
        return PropensitySpec()
    if not isinstance(doc, Mapping):
        problems.append((("propensity",), "must be a mapping (score_after, upsell, horizon, alert_threshold)"))
        return PropensitySpec()
    allowed = ("score_after", "upsell", "horizon", "alert_threshold")
    for key in doc:
        if key not in allowed:
            problems.append((("propensity", str(key)), f"unknown entry (expected one of: {', '.join(allowed)})"))
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("score_after", "upsell"):
        names = doc.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append((("propensity", key), "must be a list of touchpoint names"))
            names = []
        for i, name in enumerate(names):
            if name not in touchpoints:
                problems.append((("propensity", key, i), f"unknown touchpoint {name!r}"))
        lists[key] = tuple(n for n in names if n in touchpoints)
    if lists["score_after"] and not lists["upsell"]:
        problems.append((("propensity", "upsell"), "name at least one upsell touchpoint to learn from"))
    overlap = set(lists["score_after"]) & set(lists["upsell"])
    if overlap:
        problems.append(
            (("propensity",), f"a touchpoint cannot be both a scoring point and the upsell: {sorted(overlap)}")
        )
    horizon = _duration(doc.get("horizon", "14d"), ("propensity", "horizon"), problems)
    if horizon is not None and horizon <= 0:
        problems.append((("propensity", "horizon"), "must be longer than zero"))
    threshold = doc.get("alert_threshold", 0.3)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        problems.append((("propensity", "alert_threshold"), f"must be a probability from 0 to 1, got {threshold!r}"))
        threshold = 0.3
    return PropensitySpec(lists["score_after"], lists["upsell"], horizon or 14 * 86400, float(threshold))
