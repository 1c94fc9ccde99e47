"""What many test modules need, once: the CLI run in-process or as a process, the one-line exit-2
check every "bad input" test makes, availability skips, and results files written from records."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import pytest

from attnbench.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*argv: str) -> int:
    """``attnbench ARGV`` in this process; its exit status (output through capsys)."""
    return main(list(argv))


def cli_process(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m attnbench ARGV`` as its own process, stdout and stderr piped (not a terminal)."""
    full_env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "attnbench", *argv], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


def one_line_exit_2(code: int, capsys: pytest.CaptureFixture, needle: str = "") -> str:
    """Bad input's promise: exit 2 and one line on stderr that says what is wrong, no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def skip_unless_available(name: str) -> None:
    """Skip the test, saying why, when the mechanism (or variant) ``name`` cannot run here."""
    from attnbench.registry import plugins

    info = next(i for i in plugins().values() if name in i.variants)
    if not info.availability.ok:
        pytest.skip(f"{name}: {info.availability}")


def write_records(records: Iterable[dict[str, Any]], path: Path) -> Path:
    """A results file holding ``records`` (JSON Lines), for the readers' tests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return path


def wait_until(condition: Any, timeout: float, poll: float = 0.05) -> bool:
    """Wait for ``condition()`` to hold (polling, never a fixed sleep), at most ``timeout`` seconds;
    whether it held."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
