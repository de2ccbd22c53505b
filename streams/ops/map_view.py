"""How a journey map looks to a person: a text table (`journey map show`) and an SVG picture."""

from __future__ import annotations

from html import escape

from models.durations import format_duration
from models.journey_map import JourneyMap


def describe(journey: JourneyMap) -> str:
    """Stages, the activities with TE / σ / slack / stall threshold, and the critical path."""
    lines = ["Stages (a customer's stage is the furthest one reached):"]
    for i, stage in enumerate(journey.stages):
        tps = ", ".join(tp for tp, s in journey.touchpoints.items() if s == stage)
        silence = journey.max_silence_s.get(stage)
        gap = f"drop-off after {format_duration(silence)} silent" if silence else "no drop-off alert"
        lines.append(f"  {i + 1}. {stage:<14} {gap:<30} severity {journey.severity.get(stage, 'medium'):<8} {tps}")
    if journey.surveys:
        lines.append("  surveys (no stage): " + ", ".join(f"{tp} ({kind})" for tp, kind in journey.surveys.items()))
    if journey.flow is None:
        lines.append("\nNo flow: stall alerts are off (add `flow:` to the map).")
        return "\n".join(lines)
    lines.append(
        f"\nFlow (TE = (o+4m+p)/6, σ = (p−o)/6; stall alert after TE + {journey.stall_z:g}σ on the critical path):"
    )
    header = f"  {'activity':<40} {'o':>7} {'m':>7} {'p':>7} {'TE':>8} {'σ':>8} {'slack':>8}  stall after"
    lines.append(header)
    for t in journey.flow.activity_timings():
        a = t.activity
        idx = journey.critical_index.get(a.source)
        on_path = t.critical and idx is not None and journey.critical_path[idx + 1 : idx + 2] == (a.target,)
        stall = format_duration(journey.stall_after_ms[idx] / 1000) if on_path and idx is not None else "-"
        mark = "*" if on_path else " "
        lines.append(
            f"{mark} {a.source + ' -> ' + a.target:<40} {format_duration(a.optimistic):>7} "
            f"{format_duration(a.most_likely):>7} {format_duration(a.pessimistic):>7} "
            f"{format_duration(a.expected):>8} {format_duration(a.sigma):>8} {format_duration(t.slack):>8}  {stall}"
        )
    lines.append(
        f"\nCritical path (*): {' -> '.join(journey.critical_path)}  "
        f"(expected {format_duration(journey.flow.duration())} end to end)"
    )
    return "\n".join(lines)


def render_svg(journey: JourneyMap) -> str:
    """The flow as an SVG: touchpoints in columns by depth, the critical path in red."""
    if journey.flow is None:
        raise ValueError("the map has no flow to draw")
    net = journey.flow
    depth: dict[str, int] = {}
    for node in net.nodes:  # topological order: predecessors come first
        depth[node] = max((depth[p] + 1 for p in net.predecessors(node)), default=0)
    columns: dict[int, list[str]] = {}
    for node in net.nodes:
        columns.setdefault(depth[node], []).append(node)
    box_w, box_h, gap_x, gap_y, margin = 170, 44, 120, 50, 30
    pos = {
        node: (margin + d * (box_w + gap_x), margin + 40 + i * (box_h + gap_y))
        for d, nodes in columns.items()
        for i, node in enumerate(nodes)
    }
    width = margin * 2 + len(columns) * (box_w + gap_x)
    height = margin * 2 + 60 + max(len(n) for n in columns.values()) * (box_h + gap_y)
    critical = set(zip(journey.critical_path, journey.critical_path[1:], strict=False))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
        '<marker id="arrow-crit" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#d62728"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{margin}" y="{margin}" font-size="15" font-weight="bold">Journey flow — critical path in red '
        f"(expected {escape(format_duration(net.duration()))})</text>",
    ]
    for t in net.activity_timings():
        a = t.activity
        x1, y1 = pos[a.source][0] + box_w, pos[a.source][1] + box_h / 2
        x2, y2 = pos[a.target][0], pos[a.target][1] + box_h / 2
        crit = (a.source, a.target) in critical
        colour, width_px, marker = ("#d62728", 3, "arrow-crit") if crit else ("#888", 1.5, "arrow")
        out.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" stroke-width="{width_px}" '
            f'marker-end="url(#{marker})"/>'
        )
        labels = [f"TE {format_duration(a.expected)}", f"σ {format_duration(a.sigma)}"]
        if not crit:
            labels.append(f"slack {format_duration(t.slack)}")
        for k, label in enumerate(labels):
            out.append(
                f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 8 - 11 * (len(labels) - 1 - k)}" '
                f'text-anchor="middle" fill="{colour}" font-size="10">{escape(label)}</text>'
            )
    for node, (x, y) in pos.items():
        crit = node in journey.critical_index
        stroke = "#d62728" if crit else "#555"
        out.append(
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="8" fill="#f7f7f7" '
            f'stroke="{stroke}" stroke-width="{2.5 if crit else 1}"/>'
        )
        out.append(
            f'<text x="{x + box_w / 2}" y="{y + 18}" text-anchor="middle" font-weight="bold">{escape(node)}</text>'
        )
        stage = journey.touchpoints.get(node, "")
        out.append(f'<text x="{x + box_w / 2}" y="{y + 34}" text-anchor="middle" fill="#666">{escape(stage)}</text>')
    out.append("</svg>")
    return "\n".join(out)
