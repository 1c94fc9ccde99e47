"""Executors run cells somewhere and hand back their records as the cells finish.

The contract every executor meets (local worker processes, Ray tasks, Slurm jobs via submitit):

* ``run_cells(specs)`` yields one record per spec, in completion order (not submission order),
  and never raises for a failure of one cell: a crash, OOM, timeout or kill becomes that cell's
  record. Specs and records are plain JSON (``CellSpec.to_dict`` / ``schema.make_record``).
* ``close()`` is idempotent and leaves nothing running: outstanding cells are cancelled and
  their worker processes killed. The run loop calls it on normal exit, SIGINT and SIGTERM.
* Each executor class declares its own command-line options (``add_arguments``) and is built
  from the parsed arguments (``from_args``), so adding an engine never edits ``attnbench run``.

Executors are registered by name in :data:`EXECUTORS` (``--executor NAME``); the engine's
package is imported only when that executor is chosen.
"""
from __future__ import annotations

import argparse
import importlib
from typing import Any, Iterable, Iterator, Protocol, runtime_checkable

from ..cells import CellSpec
from ..errors import UserError


@runtime_checkable
class Executor(Protocol):
    #: the name given to ``--executor``
    name: str

    def run_cells(self, specs: Iterable[CellSpec]) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


#: ``--executor`` name -> "module:Class" (imported lazily: Ray and submitit are optional extras)
EXECUTORS: dict[str, str] = {
    "local": "attnbench.executors.local:LocalProcessExecutor",
    "ray": "attnbench.executors.ray_executor:RayExecutor",
    "slurm": "attnbench.executors.slurm:SlurmExecutor",
}


def executor_class(name: str) -> type:
    try:
        path = EXECUTORS[name]
    except KeyError:
        raise UserError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}") from None
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor`` plus every registered executor's own options (in its own argument group)."""
    parser.add_argument("--executor", default="local", choices=list(EXECUTORS),
                        help="where cells run: local worker processes (default), a Ray cluster, Slurm via submitit")
    for name in EXECUTORS:
        try:
            cls = executor_class(name)
        except ImportError:
            continue
        adder = getattr(cls, "add_arguments", None)
        if adder is not None:
            adder(parser.add_argument_group(f"--executor {name}"))


def make_executor(args: argparse.Namespace) -> Executor:
    """Build the executor named by ``args.executor`` from the parsed command line."""
    cls = executor_class(getattr(args, "executor", None) or "local")
    return cls.from_args(args)
