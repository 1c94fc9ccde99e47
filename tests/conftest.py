"""Shared fixtures: make tests/ importable by worker processes (for tests/cell_fixtures.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
VIDEO_PAIR = REPO.parent / "shared" / "data" / "video-pair"


@pytest.fixture
def worker_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Lets `python -m attnbench.worker` import tests/cell_fixtures.py."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")])))
    return TESTS


def write_suite(tmp_path: Path, sizes: list[int], timeout: float = 60, mechanisms: tuple[str, ...] = ("full",)) -> Path:
    """A throw-away suite file whose cells run tests/cell_fixtures.py."""
    mech = ", ".join(f'"{m}"' for m in mechanisms)
    path = tmp_path / "fixture.toml"
    path.write_text(f'''
name = "fixture"
description = "cells that misbehave on purpose"
runner = "cell_fixtures:run"
[grid]
mechanisms = [{mech}]
sizes = {sizes}
channels = 1
patch_size = 1
seed = 3
timeout = {timeout}
''')
    return path
