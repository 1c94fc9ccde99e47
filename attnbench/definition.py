"""Which definition of a measurement a record was taken under.

A cell's identity (``CellSpec.key``) says *what* was asked (mechanism, shape, options); the
definition says *how* the answer was obtained: the runner's measuring procedure and the mechanism's
algorithm, each a version number its owner bumps when a change alters the figures. Without it,
``--resume`` after such a change would mix old and new measurements in one file, and ``gate``
would call the difference a regression.

Runners declare ``DEFINITION_VERSION`` in their module (default 1); mechanisms declare
``algorithm_version`` on their class (default 1); the instruments every runner shares declare
``attnbench.measure.DEFINITION_VERSION``.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

#: what records written before definitions existed (schema 1) were measured under; a part a
#: record's definition does not name was at this version (parts are added as they get versions)
FIRST_DEFINITION: dict[str, int] = {"runner": 1, "mechanism": 1, "measure": 1}


def runner_version(runner: str) -> int | None:
    """``DEFINITION_VERSION`` of a ``"module:function"`` runner's module (1 when it declares none;
    None when the module cannot be imported: nothing was measured by it)."""
    try:
        module = importlib.import_module(runner.split(":", 1)[0])
    except Exception:  # noqa: BLE001 -- the cell itself reports the import error
        return None
    return int(getattr(module, "DEFINITION_VERSION", 1))


def mechanism_version(mechanism: str) -> int:
    """``algorithm_version`` of the plugin behind a mechanism name (1 when unknown or unloadable:
    an unavailable plugin measures nothing, so its definition cannot have changed)."""
    from .errors import UserError
    from .registry import resolve

    try:
        info, _implied = resolve(mechanism)
    except UserError:
        return 1
    return int(getattr(info.cls, "algorithm_version", 1) or 1)


def of_cell(spec: Any) -> dict[str, int | None]:
    """The definition a cell is measured under now."""
    from .measure import DEFINITION_VERSION as measure_version

    return {"runner": runner_version(spec.runner), "mechanism": mechanism_version(spec.mechanism),
            "measure": measure_version}


def difference(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """"" when two definitions are the same, else what changed (``runner 1 -> 2``)."""
    before, after = {**FIRST_DEFINITION, **(before or {})}, {**FIRST_DEFINITION, **(after or {})}
    changed = [f"{part} {before.get(part)} -> {after.get(part)}" for part in sorted(set(before) | set(after))
               if before.get(part) != after.get(part)]
    return ", ".join(changed)
