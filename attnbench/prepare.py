"""One-time preparation of mechanisms before a run dispatches its cells (e.g. PSAL's kernel build).

Why: a one-time cost paid inside a cell (a JIT build of 30-60 s) eats that cell's timeout, and a
worker killed mid-build used to leave a lock that hung every later cell. A mechanism class may
define a classmethod ``prepare() -> str`` (a one-line message); ``attnbench run`` calls it once
per plugin, in a child process of its own session with a timeout (``python -m attnbench.prepare
NAME``), so that a hang is killed with everything it started (compilers included) and reported
in one line. Workers then run with ``RunContext.prepared`` set (attnbench.context) and never retry what failed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Callable, Iterable

from .cells import CellSpec

DEFAULT_TIMEOUT_S = 900.0


def plugins_to_prepare(cells: Iterable[CellSpec]) -> list[str]:
    """Plugin names (registry entries) of the cells' mechanisms whose class defines ``prepare``."""
    from .registry import resolve

    names: list[str] = []
    for cell in cells:
        info, _ = resolve(cell.mechanism)
        if info.cls is not None and callable(getattr(info.cls, "prepare", None)) and info.availability.ok \
                and info.name not in names:
            names.append(info.name)
    return names


def prepare_command(name: str) -> list[str]:
    """The child that prepares one plugin (a function, so tests can put a stand-in there)."""
    return [sys.executable, "-m", "attnbench.prepare", name]


def prepare_plugins(names: list[str], timeout_s: float, note: Callable[[str], None]) -> dict[str, str]:
    """Run each plugin's ``prepare`` in a child with a timeout; return plugin -> why it failed."""
    failed: dict[str, str] = {}
    for name in names:
        note(f"preparing {name} (one-time set-up, e.g. a kernel build; up to {timeout_s:g} s)...")
        proc = subprocess.Popen(prepare_command(name), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            failed[name] = f"preparation of {name} did not finish within {timeout_s:g} s (raise --prepare-timeout)"
            continue
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it started (compilers) goes with it
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        lines = [l for l in (output or "").strip().splitlines() if l.strip()]
        if proc.returncode != 0:
            failed[name] = f"preparation of {name} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}"
        elif lines:
            note(f"{name}: {lines[-1]}")
    for name, why in failed.items():
        note(why)
    return failed


def main(argv: list[str] | None = None) -> int:
    from .registry import resolve

    for name in (sys.argv[1:] if argv is None else argv):
        info, _ = resolve(name)
        try:
            message = info.cls.prepare()  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 -- reported as one line by the parent
            print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
            return 1
        print(message or "ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
