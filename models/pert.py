"""The expected journey as a PERT network: touchpoints are nodes, activities lead from one
touchpoint to the next with optimistic / most likely / pessimistic durations (seconds).

Each activity's duration is the classic PERT (beta) estimate: expected time
TE = (o + 4m + p) / 6 and standard deviation σ = (p − o) / 6. The longest chain of TE from the
start is the critical path; the time to reach a touchpoint is taken as normal with the mean and
variance of the longest path to it (the usual PERT approximation).

Ties are everywhere in hand-written maps (two branches of equal length), so every choice between
equal candidates is made by touchpoint name: the same map always gives the same critical path,
whatever the order of its activities.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

from models.durations import format_duration

Path = tuple[str | int, ...]

# Times are sums of TE over a path, so "equal" has to allow for rounding: without it an
# activity whose slack comes out as 1e-13 would silently drop off the critical path.
REL_TOL = 1e-9
ABS_TOL = 1e-6


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


@dataclass(frozen=True, slots=True)
class Activity:
    """One step of the journey, from touchpoint ``source`` to touchpoint ``target``.

    Durations are in seconds with optimistic ≤ most likely ≤ pessimistic; ``PertNetwork.build``
    checks that (an ``Activity`` alone does not, so that all problems of a map can be listed).

    Examples
    --------
    >>> a = Activity("site_visit", "signup", 60, 300, 1200)
    >>> a.expected, a.sigma, a.variance
    (410.0, 190.0, 36100.0)
    """

    source: str
    target: str
    optimistic: float
    most_likely: float
    pessimistic: float

    @property
    def expected(self) -> float:
        """TE = (o + 4m + p) / 6, seconds."""
        o, m, p = self.optimistic, self.most_likely, self.pessimistic
        te = (o + 4 * m + p) / 6
        # Rounding can put TE a hair outside [o, p] (o = m = p = 0.1 gives 0.0999...), which
        # would make a fixed-time activity look faster than its own optimistic time.
        return min(max(te, o), p) if o <= m <= p else te

    @property
    def sigma(self) -> float:
        """σ = (p − o) / 6, seconds."""
        return (self.pessimistic - self.optimistic) / 6

    @property
    def variance(self) -> float:
        """σ², seconds²."""
        return self.sigma**2


@dataclass(frozen=True, slots=True)
class ActivityTiming:
    """An activity's schedule after analysis (seconds from the start)."""

    activity: Activity
    earliest_start: float
    earliest_finish: float
    latest_start: float
    latest_finish: float
    slack: float
    critical: bool


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """A touchpoint's schedule after analysis (seconds from the start).

    ``variance`` is that of the longest path to the node (the one ``earliest`` comes from).
    """

    node: str
    earliest: float
    latest: float
    slack: float
    variance: float
    critical: bool


def _format_path(path: Path) -> str:
    # Same rendering as models.journey_map.format_path, which imports this module.
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class NetworkError(ValueError):
    """An invalid network; ``problems`` lists every (entry path, message).

    Paths are those of the journey map file: ``("flow", i)`` for the i-th activity and
    ``("flow",)`` for problems of the network as a whole.
    """

    def __init__(self, problems: list[tuple[Path, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{_format_path(p)}: {m}" for p, m in problems))


def _secs(x: float) -> str:
    # Written back the way a map author writes durations (1h, 90s), when it is a plain number.
    if not math.isfinite(x) or x < 0:
        return f"{x}s"
    return format_duration(x) if float(x).is_integer() else f"{x}s"


def _validate(activities: tuple[Activity, ...], start: str | None) -> tuple[list[tuple[Path, str]], str | None]:
    """Every problem of the activities, and the start node (None when there is no usable one)."""
    problems: list[tuple[Path, str]] = []
    if not activities:
        return [(("flow",), "no activities: the flow needs at least one")], None
    first: dict[tuple[str, str], int] = {}
    for i, a in enumerate(activities):
        path: Path = ("flow", i)
        times = (a.optimistic, a.most_likely, a.pessimistic)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in times):
            problems.append((path, f"durations must be finite numbers of seconds, got {times!r}"))
        else:
            o, m, p = times
            if min(times) < 0:
                problems.append((path, f"durations must not be negative, got {_secs(o)}, {_secs(m)}, {_secs(p)}"))
            if o > m:
                problems.append(
                    (
                        path,
                        f"optimistic {_secs(o)} is more than most likely {_secs(m)} "
                        "(need optimistic <= most likely <= pessimistic)",
                    )
                )
            if m > p:
                problems.append(
                    (
                        path,
                        f"most likely {_secs(m)} is more than pessimistic {_secs(p)} "
                        "(need optimistic <= most likely <= pessimistic)",
                    )
                )
        if not (isinstance(a.source, str) and a.source and isinstance(a.target, str) and a.target):
            problems.append((path, f"touchpoint names must be non-empty strings, got {a.source!r} -> {a.target!r}"))
            continue
        if a.source == a.target:
            problems.append((path, f"activity from {a.source!r} to itself (a touchpoint cannot follow itself)"))
            continue
        key = (a.source, a.target)
        if key in first:
            problems.append((path, f"duplicate activity {a.source!r} -> {a.target!r} (first at flow[{first[key]}])"))
            continue
        first[key] = i

    # The graph problems are judged on the well-formed edges only, so that one bad entry is
    # reported once rather than again as a cycle or an unreachable node.
    if not first:
        return problems, None
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for s, t in first:
        succ.setdefault(s, []).append(t)
        succ.setdefault(t, [])
        pred.setdefault(t, []).append(s)
        pred.setdefault(s, [])
    for lists in (succ, pred):
        for names in lists.values():
            names.sort()
    nodes = sorted(succ)

    order = _topological(nodes, succ, pred)
    if len(order) < len(nodes):
        placed = set(order)
        rest = [n for n in nodes if n not in placed]
        cycles = [_cycle(comp, succ) for comp in _components(rest, succ, pred) if len(comp) > 1]
        for cycle in sorted(cycles):
            problems.append((("flow",), "cycle: " + " -> ".join((*cycle, cycle[0]))))

    sources = [n for n in nodes if not pred[n]]
    chosen: str | None = None
    if start is not None:
        if start not in succ:
            problems.append((("flow",), f"start {start!r} is not a touchpoint of the flow"))
        else:
            chosen = start
            if pred[start]:
                froms = ", ".join(pred[start])
                problems.append((("flow",), f"start {start!r} has activities leading to it (from {froms})"))
    elif len(sources) == 1:
        chosen = sources[0]
    elif not sources:
        problems.append((("flow",), "no start node: every touchpoint has an activity leading to it"))
    else:
        problems.append(
            (
                ("flow",),
                f"more than one start node: {', '.join(sources)} "
                "(exactly one touchpoint must have no activity leading to it)",
            )
        )
    if chosen is not None:
        seen = {chosen}
        todo = [chosen]
        while todo:
            for nxt in succ[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        unreachable = [n for n in nodes if n not in seen]
        if unreachable:
            problems.append((("flow",), f"unreachable from start {chosen!r}: {', '.join(unreachable)}"))
    return problems, chosen


def _topological(nodes: list[str], succ: Mapping[str, list[str]], pred: Mapping[str, list[str]]) -> list[str]:
    """Kahn's algorithm, smallest name first among the ready nodes; leaves out nodes on or after a cycle."""
    indegree = {n: len(pred[n]) for n in nodes}
    ready = [n for n in nodes if not indegree[n]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for nxt in succ[node]:
            indegree[nxt] -= 1
            if not indegree[nxt]:
                heapq.heappush(ready, nxt)
    return order


def _components(nodes: list[str], succ: Mapping[str, list[str]], pred: Mapping[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of the subgraph on ``nodes`` (Kosaraju, iterative)."""
    inside = set(nodes)
    finished: list[str] = []
    seen: set[str] = set()
    for root in nodes:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(succ[root]))]
        while stack:
            node, it = stack[-1]
            for nxt in it:
                if nxt in inside and nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, iter(succ[nxt])))
                    break
            else:
                stack.pop()
                finished.append(node)
    comps: list[list[str]] = []
    assigned: set[str] = set()
    for root in reversed(finished):
        if root in assigned:
            continue
        assigned.add(root)
        comp, todo = [], [root]
        while todo:
            node = todo.pop()
            comp.append(node)
            for prev in pred[node]:
                if prev in inside and prev not in assigned:
                    assigned.add(prev)
                    todo.append(prev)
        comps.append(sorted(comp))
    return comps


def _cycle(comp: list[str], succ: Mapping[str, list[str]]) -> tuple[str, ...]:
    """A shortest cycle through the smallest name of a strongly connected component."""
    inside = set(comp)
    root = comp[0]
    back: dict[str, str] = {}
    frontier = [root]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in succ[node]:
                if nxt == root:
                    cycle = [node]
                    while cycle[-1] != root:
                        cycle.append(back[cycle[-1]])
                    return tuple(reversed(cycle))
                if nxt in inside and nxt not in back:
                    back[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError("a strongly connected component of two or more nodes has a cycle")  # pragma: no cover


@dataclass(frozen=True)
class PertNetwork:
    """A validated PERT network and its schedule.

    Build it with ``PertNetwork.build``; constructing it directly validates the same way.
    Times are seconds from the start touchpoint.

    Examples
    --------
    Two ways from ``a`` to ``d``; the one through ``c`` is longer.

    >>> net = PertNetwork.build([
    ...     Activity("a", "b", 1, 2, 3), Activity("b", "d", 1, 2, 3),
    ...     Activity("a", "c", 2, 5, 8), Activity("c", "d", 1, 4, 7),
    ... ])
    >>> net.nodes
    ('a', 'b', 'c', 'd')
    >>> net.critical_path(), net.duration()
    (('a', 'c', 'd'), 9.0)
    >>> t = net.node_timings()["b"]
    >>> t.earliest, t.latest, t.slack, t.critical
    (2.0, 7.0, 5.0, False)
    >>> net.probability_by("d", 9.0)
    0.5
    >>> round(net.probability_by("d", 9.0 + 2 * math.sqrt(2)), 4)
    0.9772
    >>> net.critical_next("a")
    Activity(source='a', target='c', optimistic=2, most_likely=5, pessimistic=8)
    """

    activities: tuple[Activity, ...]
    start: str
    _nodes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _out: Mapping[str, tuple[Activity, ...]] = field(init=False, repr=False, compare=False)
    _in: Mapping[str, tuple[Activity, ...]] = field(init=False, repr=False, compare=False)
    _node_timings: Mapping[str, NodeTiming] = field(init=False, repr=False, compare=False)
    _activity_timings: tuple[ActivityTiming, ...] = field(init=False, repr=False, compare=False)
    _critical_path: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _critical_next: Mapping[str, Activity] = field(init=False, repr=False, compare=False)
    _duration: float = field(init=False, repr=False, compare=False)

    @classmethod
    def build(cls, activities: Iterable[Activity], *, start: str | None = None) -> PertNetwork:
        """Validate the activities and analyse the network.

        Parameters
        ----------
        activities
            The activities, in the order of the map file (problem paths use their index).
        start
            The start touchpoint; by default the single touchpoint no activity leads to.

        Raises
        ------
        NetworkError
            Listing every problem: bad durations, self-loops, duplicate activities, cycles,
            no or several start nodes, touchpoints unreachable from the start.

        Examples
        --------
        >>> PertNetwork.build([Activity("s", "a", 1, 2, 3), Activity("a", "b", 1, 2, 3), Activity("b", "a", 1, 2, 3)])
        Traceback (most recent call last):
        ...
        models.pert.NetworkError: flow: cycle: a -> b -> a
        >>> PertNetwork.build([Activity("a", "b", 3, 2, 1)])
        Traceback (most recent call last):
        ...
        models.pert.NetworkError: flow[0]: optimistic 3s is more than most likely 2s (need ...);
        flow[0]: most likely 2s is more than pessimistic 1s (need ...)
        """
        acts = tuple(activities)
        problems, chosen = _validate(acts, start)
        if problems:
            raise NetworkError(problems)
        assert chosen is not None
        return cls(acts, chosen)

    def __post_init__(self) -> None:
        def setattr_(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        acts = tuple(self.activities)
        setattr_("activities", acts)
        problems, _ = _validate(acts, self.start)
        if problems:
            raise NetworkError(problems)

        out: dict[str, list[Activity]] = {}
        inc: dict[str, list[Activity]] = {}
        for a in acts:
            out.setdefault(a.source, []).append(a)
            out.setdefault(a.target, [])
            inc.setdefault(a.target, []).append(a)
            inc.setdefault(a.source, [])
        setattr_("_out", {n: tuple(sorted(v, key=lambda a: a.target)) for n, v in out.items()})
        setattr_("_in", {n: tuple(sorted(v, key=lambda a: a.source)) for n, v in inc.items()})
        names = sorted(out)
        succ = {n: [a.target for a in self._out[n]] for n in names}
        order = _topological(names, succ, {n: [a.source for a in self._in[n]] for n in names})
        setattr_("_nodes", tuple(order))

        # Forward pass. Among arrivals that tie for the latest, the one giving the smallest path
        # by names wins: so each node's longest path, and the variance taken from it, is the
        # lexicographically smallest one, and the critical path's prefixes are exactly those
        # paths (probability_by agrees with critical_path()).
        earliest: dict[str, float] = {self.start: 0.0}
        variance: dict[str, float] = {self.start: 0.0}
        best: dict[str, tuple[str, ...]] = {self.start: (self.start,)}
        for v in order[1:]:
            arrivals = [(earliest[a.source] + a.expected, a) for a in self._in[v]]
            top = max(t for t, _ in arrivals)
            # Compare whole paths to v, not the paths to the predecessors: ("a",) < ("a", "b")
            # but ("a", "v") > ("a", "b", "v").
            via = min((a for t, a in arrivals if _close(t, top)), key=lambda a: (*best[a.source], v))
            earliest[v] = top
            variance[v] = variance[via.source] + via.variance
            best[v] = (*best[via.source], v)

        # Backward pass: every sink is due at the project end, the latest sink's earliest.
        sinks = [n for n in order if not self._out[n]]
        end = max(earliest[s] for s in sinks)
        latest: dict[str, float] = {}
        for u in reversed(order):
            leaving = self._out[u]
            latest[u] = min(latest[a.target] - a.expected for a in leaving) if leaving else end

        # Critical = the longest path through it is (nearly) as long as the longest path. Judged at
        # the scale of the whole journey, like the paths themselves: a slack of 2e-4 s on a
        # 2-day path is rounding, not a second-best route.
        def on_longest(earliest_finish: float, latest_finish: float) -> bool:
            return _close(earliest_finish + (end - latest_finish), end)

        timings: dict[str, NodeTiming] = {}
        for n in order:
            critical = on_longest(earliest[n], latest[n])
            # Snap near-zero slack to exactly zero so "critical" and "slack == 0" agree.
            lf = earliest[n] if critical else latest[n]
            timings[n] = NodeTiming(n, earliest[n], lf, lf - earliest[n], variance[n], critical)
        setattr_("_node_timings", timings)

        acts_t = []
        for a in acts:
            es = earliest[a.source]
            lf = latest[a.target]
            ls = lf - a.expected
            critical = on_longest(es + a.expected, lf)
            if critical:
                ls, lf = es, es + a.expected
            acts_t.append(ActivityTiming(a, es, es + a.expected, ls, lf, ls - es, critical))
        setattr_("_activity_timings", tuple(acts_t))

        last = min((s for s in sinks if _close(earliest[s], end)), key=lambda s: best[s])
        path = best[last]
        edge = {(a.source, a.target): a for a in acts}
        setattr_("_critical_path", path)
        setattr_("_critical_next", {u: edge[u, v] for u, v in zip(path, path[1:], strict=False)})
        setattr_("_duration", end)

    @property
    def nodes(self) -> tuple[str, ...]:
        """All touchpoints in topological order, ties broken by name (the start first)."""
        return self._nodes

    def successors(self, node: str) -> tuple[str, ...]:
        """The touchpoints one activity after ``node``, by name.

        Raises
        ------
        KeyError
            When ``node`` is not in the network (so are all methods taking a node).
        """
        return tuple(a.target for a in self._outgoing(node))

    def predecessors(self, node: str) -> tuple[str, ...]:
        """The touchpoints one activity before ``node``, by name."""
        if node not in self._in:
            raise KeyError(node)
        return tuple(a.source for a in self._in[node])

    def _outgoing(self, node: str) -> tuple[Activity, ...]:
        if node not in self._out:
            raise KeyError(node)
        return self._out[node]

    def _timing(self, node: str) -> NodeTiming:
        if node not in self._node_timings:
            raise KeyError(node)
        return self._node_timings[node]

    def node_timings(self) -> dict[str, NodeTiming]:
        """Each touchpoint's earliest / latest time, slack and variance, in topological order."""
        return dict(self._node_timings)

    def activity_timings(self) -> list[ActivityTiming]:
        """Each activity's schedule, in the order of ``activities``."""
        return list(self._activity_timings)

    def critical_path(self) -> tuple[str, ...]:
        """The touchpoints of the critical path, from the start to the sink reached last.

        All its activities have zero slack. When several paths are equally long, it is the
        smallest of them compared touchpoint by touchpoint by name.
        """
        return self._critical_path

    def critical_next(self, node: str) -> Activity | None:
        """The critical-path activity leaving ``node``; None off the critical path and at its end."""
        return self._critical_next.get(node)

    def duration(self) -> float:
        """Expected duration of the whole journey: TE summed along the critical path, seconds."""
        return self._duration

    def probability_by(self, node: str, t: float) -> float:
        """Probability of reaching ``node`` within ``t`` seconds of the start.

        Normal with the node's earliest time as mean and the variance of its longest path;
        with no variance at all, the node is reached exactly at its earliest time.
        """
        timing = self._timing(node)
        if timing.variance <= 0:
            return 1.0 if t >= timing.earliest else 0.0
        return NormalDist(timing.earliest, math.sqrt(timing.variance)).cdf(t)

    def time_for_probability(self, node: str, q: float) -> float:
        """The time by which ``node`` is reached with probability ``q`` (inverse of ``probability_by``).

        Examples
        --------
        >>> net = PertNetwork.build([Activity("a", "b", 0, 60, 120)])
        >>> net.time_for_probability("b", 0.5), round(net.time_for_probability("b", 0.8413), 1)
        (60.0, 80.0)
        """
        timing = self._timing(node)
        return timing.earliest + z_for_probability(q) * math.sqrt(timing.variance)


def deadline(activity: Activity, *, z: float = 2.0) -> float:
    """The stall threshold of an activity: TE + z·σ seconds, never below zero.

    Examples
    --------
    >>> deadline(Activity("add_to_cart", "checkout", 30, 120, 390))
    270.0
    >>> deadline(Activity("a", "b", 0, 1, 2), z=-10)
    0.0
    """
    return max(0.0, activity.expected + z * activity.sigma)


def z_for_probability(q: float) -> float:
    """The standard normal quantile of ``q``: z such that P(Z ≤ z) = q.

    Raises
    ------
    ValueError
        When ``q`` is not strictly between 0 and 1.

    Examples
    --------
    >>> round(z_for_probability(0.977), 3)
    1.995
    >>> z_for_probability(1)
    Traceback (most recent call last):
    ...
    ValueError: a probability strictly between 0 and 1 is needed, got 1
    """
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q < 1:
        raise ValueError(f"a probability strictly between 0 and 1 is needed, got {q!r}")
    return NormalDist().inv_cdf(q)
