"""models/ stays a pure domain core: no Kafka, Faust, Redis or HTTP imports."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"faust", "kafka", "aiokafka", "redis", "aiohttp", "httpx", "requests", "urllib", "socket", "streams"}


def test_models_imports_no_io_libraries():
    offenders = []
    for path in sorted((Path(__file__).parents[2] / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
