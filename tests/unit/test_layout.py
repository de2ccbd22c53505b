"""The tree is the architecture: models <- service <- state/kafka/http/ops <- tooling, enforced.

- ``models/`` is the pure domain core: no Kafka, Faust, Redis, HTTP or ``streams`` import.
- ``streams/service`` works against ports: it never imports an adapter (state, kafka, http, ops).
- the adapters (``state``, ``http``, ``ops``) import the service and the core, never each other;
  ``streams/kafka`` wires them together (the composition root of the worker).
- the product never imports ``streams/devtools``; only the command line (``streams/cli.py``)
  puts product and tooling together.
- no import cycle between packages, not even under ``TYPE_CHECKING`` or inside a function.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[2]
IO_LIBRARIES = {"faust", "kafka", "aiokafka", "redis", "aiohttp", "httpx", "requests", "urllib", "socket", "streams"}
CONFIG = {"streams.settings", "streams.journey_file"}
# package -> the packages (or modules) it may import, besides itself, the standard library and third parties
ALLOWED = {
    "streams.service": {"models", *CONFIG},
    "streams.state": {"models", "streams.service", *CONFIG},
    "streams.http": {"models", "streams.service", *CONFIG},
    "streams.ops": {"models", "streams.service", *CONFIG},
    "streams.kafka": {"models", "streams.service", "streams.state", "streams.http", "streams.ops", *CONFIG},
    "streams.devtools": {"models", "streams.service", "streams.state", "streams.kafka", "streams.http",
                         "streams.ops", *CONFIG},
}


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{a.name}" for a in node.names]  # the name may be a submodule
    return names


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "models":
        return "models"
    if len(parts) >= 2 and parts[0] == "streams":
        return ".".join(parts[:2])
    return parts[0]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def product_modules() -> list[Path]:
    return sorted([*(ROOT / "models").rglob("*.py"), *(ROOT / "streams").rglob("*.py")])


def test_models_imports_no_io_libraries():
    offenders = [
        f"{path.name}: {n}"
        for path in sorted((ROOT / "models").rglob("*.py"))
        for n in imports_of(path)
        if n.split(".")[0] in IO_LIBRARIES
    ]
    assert offenders == []


def test_each_package_imports_only_what_is_below_it():
    offenders = []
    for path in product_modules():
        me = package_of(module_name(path))
        if me not in ALLOWED:
            continue
        for name in imports_of(path):
            if not name.startswith(("models", "streams")):
                continue
            target = package_of(name)
            if target != me and target not in ALLOWED[me] and name not in ALLOWED[me]:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_the_product_never_imports_tooling():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in product_modules()
        if package_of(module_name(path)) not in ("streams.devtools", "streams.cli")
        for name in imports_of(path)
        if name.startswith("streams.devtools")
    ]
    assert offenders == []


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = defaultdict(set)
    modules = {module_name(p) for p in product_modules()}
    for path in product_modules():
        me = module_name(path)
        for name in imports_of(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me and not me.startswith(name + "."):
                graph[me].add(name)
    cycles = []

    def visit(node: str, stack: list[str], seen: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*stack, nxt], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert cycles == []
