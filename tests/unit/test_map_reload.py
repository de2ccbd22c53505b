"""The worker picks up an edited journey map without a restart, and keeps the old one if the edit is broken."""

from __future__ import annotations

import os
from pathlib import Path

from streams.app import Worker
from streams.journey_file import load_journey_map
from streams.settings import DEFAULT_MAP, Settings


def test_an_edited_map_is_used_and_a_broken_edit_is_ignored(tmp_path: Path, caplog):
    path = tmp_path / "journey.yaml"
    path.write_text(DEFAULT_MAP.read_text())
    worker = Worker(Settings(map=path, home=tmp_path), load_journey_map(path))
    assert worker.reload_map_if_changed() is False  # unchanged

    path.write_text(DEFAULT_MAP.read_text().replace("stall_z: 2.0", "stall_z: 3.0"))
    os.utime(path, (1, 1))
    assert worker.reload_map_if_changed() is True
    assert worker.journey.stall_z == 3.0 and worker.store.journey is worker.journey

    path.write_text("stages: [oops\n")
    os.utime(path, (2, 2))
    assert worker.reload_map_if_changed() is False
    assert worker.journey.stall_z == 3.0  # the last good map stays
    assert "invalid; keeping the previous one" in caplog.text
