"""What a run hands each of its cells besides the cell itself: one typed message, not environment
variables.

Why: a cell may run in a forked worker, a fresh interpreter, a Ray task or a Slurm job; the
CellSpec is what every executor already carries to it, so the run's context travels inside the
spec (``CellSpec.context``, not part of the cell's identity nor of its record) and the worker makes
it current before the runner starts. Runners and plugins read :func:`current`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class RunContext:
    """The run a cell belongs to, as far as the cell needs to know it."""

    #: where task runners save the cell's example output images (None: the run keeps none)
    examples_dir: str | None = None
    #: a folder of --data images already decoded and resized per cell size, shared by the run's
    #: cells so that a huge image is resized once per run, not once per cell
    resized_images: str | None = None
    #: the run's parent already tried the mechanisms' one-time preparation (PSAL's build): a worker
    #: that finds it failed falls back at once instead of trying again
    prepared: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "RunContext":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


_current = RunContext()


def current() -> RunContext:
    """The context of the cell this process is running (defaults outside a run)."""
    return _current


def activate(context: RunContext) -> None:
    """Make ``context`` current (the worker, before it calls the cell's runner)."""
    global _current
    _current = context
