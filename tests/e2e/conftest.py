"""Run the `journey` command the way a user does, and capture what they would see."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def journey_command() -> list[str]:
    script = Path(sys.executable).parent / "journey"
    return [str(script)] if script.exists() else [sys.executable, "-m", "streams.cli"]


@pytest.fixture
def journey():
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        return subprocess.run(
            [*journey_command(), *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT
        )

    return run
