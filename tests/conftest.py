"""Everything outside ``tests/unit`` runs against the real stack: it is marked ``integration``,
so ``pytest -m "not integration"`` runs the unit tests and the doctests alone, in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

_REAL_STACK = tuple(str(Path(__file__).parent / d) for d in ("integration", "e2e"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(_REAL_STACK):
            item.add_marker(pytest.mark.integration)
