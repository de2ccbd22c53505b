"""The worker picks up an edited journey map without a restart, and keeps the old one if the edit is broken."""

from __future__ import annotations

import os
from pathlib import Path

from streams.journey_file import load_journey_map
from streams.service.pipeline import Pipeline
from streams.settings import DEFAULT_MAP, Settings
from streams.state.memory_store import MemoryStore
from tests.unit.support import ListDeadLetters


def test_an_edited_map_is_used_and_a_broken_edit_is_ignored(tmp_path: Path, caplog):
    path = tmp_path / "journey.yaml"
    path.write_text(DEFAULT_MAP.read_text())
    store = MemoryStore()
    pipeline = Pipeline(Settings(map=path, home=tmp_path), load_journey_map(path), store=store,  # type: ignore[arg-type]
                        models=None, clv_store=None, dead_letters=ListDeadLetters(), control=None,  # type: ignore[arg-type]
                        retryable=(OSError,))
    assert pipeline.reload_map_if_changed() is False  # unchanged

    path.write_text(DEFAULT_MAP.read_text().replace("stall_z: 2.0", "stall_z: 3.0"))
    os.utime(path, (1, 1))
    assert pipeline.reload_map_if_changed() is True
    assert pipeline.journey.stall_z == 3.0 and pipeline.handler.rules.journey is pipeline.journey

    path.write_text("stages: [oops\n")
    os.utime(path, (2, 2))
    assert pipeline.reload_map_if_changed() is False
    assert pipeline.journey.stall_z == 3.0  # the last good map stays
    assert "invalid; keeping the previous one" in caplog.text
