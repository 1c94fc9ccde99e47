"""Executors run cells somewhere and hand back their records as the cells finish.

The contract every executor meets (local worker processes, Ray tasks, Slurm jobs via submitit):

* ``run_cells(specs)`` yields one record per spec, in completion order (not submission order),
  and never raises for a failure of one cell: a crash, OOM, timeout or kill becomes that cell's
  record. Specs and records are plain JSON (``CellSpec.to_dict`` / ``schema.make_record``).
* ``close()`` is idempotent and leaves nothing running: outstanding cells are cancelled and
  their worker processes killed. The run loop calls it on normal exit, SIGINT and SIGTERM.
* Each executor class declares its own command-line options (``add_arguments``) and is built
  from the parsed arguments (``from_args``), so adding an engine never edits ``attnbench run``;
  an option of another executor than the chosen one is an error (:func:`check_executor_options`).

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


class _Recorded:
    """An argument group that notes the options an executor declares (shared ones included, even
    when the other executor's group already holds them): ``(dest, flag, default)``."""

    def __init__(self, group: argparse._ArgumentGroup):  # noqa: SLF001 -- argparse's own type
        self.group = group
        self.options: list[tuple[str, str, Any]] = []

    def add_argument(self, *flags: str, **kwargs: Any) -> Any:
        long = next((f for f in flags if f.startswith("--")), flags[0])
        self.options.append((kwargs.get("dest") or long.lstrip("-").replace("-", "_"), long, kwargs.get("default")))
        return self.group.add_argument(*flags, **kwargs)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor`` plus every registered executor's own options (in its own argument group)."""
    parser.add_argument("--executor", default="local", choices=list(EXECUTORS),
                        help="where cells run: local worker processes (default), a Ray cluster, Slurm via submitit; "
                             "an option of another executor than the one chosen is an error")
    owned: dict[str, list[tuple[str, str, Any]]] = {}
    for name in EXECUTORS:
        try:
            cls = executor_class(name)
        except ImportError:
            continue
        adder = getattr(cls, "add_arguments", None)
        if adder is not None:
            group = _Recorded(parser.add_argument_group(f"--executor {name}"))
            adder(group)
            owned[name] = group.options
    parser.set_defaults(_executor_options=owned)


def check_executor_options(args: argparse.Namespace) -> None:
    """An option of another executor (``--partition`` with the local one, ``--jobs`` with Slurm),
    set to other than its default, is a UserError: it would be silently ignored."""
    chosen = getattr(args, "executor", None) or "local"
    owned: dict[str, list[tuple[str, str, Any]]] = getattr(args, "_executor_options", None) or {}
    mine = {dest for dest, _, _ in owned.get(chosen, [])}
    for name, options in owned.items():
        for dest, flag, default in options:
            if dest not in mine and getattr(args, dest, default) != default:
                owners = [n for n, opts in owned.items() if any(d == dest for d, _, _ in opts)]
                raise UserError(f"{flag} is an option of --executor {' or '.join(owners)}, not of --executor {chosen} "
                                "(it would be ignored); drop it or choose that executor")


def make_executor(args: argparse.Namespace) -> Executor:
    """Build the executor named by ``args.executor`` from the parsed command line."""
    check_executor_options(args)
    cls = executor_class(getattr(args, "executor", None) or "local")
    return cls.from_args(args)
