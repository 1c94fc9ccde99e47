"""Typed runner options: each cell runner declares a dataclass ``OPTIONS``; suites are checked against it.

Why: a suite file's ``[options]`` (and a preset's) used to be an untyped bag read with
``opts.get(key, default)`` where used, so a typo was silently ignored and defaults differed between
runners. Now a runner module declares ``OPTIONS = SomeOptions`` (a frozen dataclass); the suite
loader parses every cell's options with :func:`parse` before any worker starts (an unknown key or a
wrong type is a one-line :class:`UserError` naming the key and the valid ones), and the runner
reads them with ``SomeOptions.of(spec)``. The raw dict stays in the cell (its identity), defaults
are filled only when read, so records and keys of existing runs do not change.

Options shared by every runner that measures an attention call live in :class:`MeasureOptions`
(one default each); image tasks add :class:`ImageOptions` (``data``: the ``--data`` folder).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, Sequence, TypeVar

from .errors import UserError

T = TypeVar("T")

#: what the harness measures of an attention call (``metrics`` option of the micro-benchmarks)
MEASURABLE = ("memory", "flops", "time")


@dataclass(frozen=True)
class RunnerOptions:
    """Base of every runner's options: parsing and the run-time calibrations it needs."""

    @classmethod
    def of(cls: type[T], spec: Any) -> T:
        """The options of a cell (``spec.options``), parsed and with defaults filled."""
        return parse(cls, spec.options, f"suite {spec.suite!r}")

    def calibrations(self) -> tuple[str, ...]:
        """Names of values the run must measure once before dispatch (see ``runloop.calibrate``)."""
        return ()

    @classmethod
    def __post_init__(self) -> None:
        """Checks of the option values (each subclass adds its own and calls super())."""

    @classmethod
    def uses_images(cls) -> bool:
        """Whether the runner reads images, i.e. accepts ``--data``."""
        return any(f.name == "data" for f in fields(cls))

    def images_needed(self) -> int:
        """How many image pairs a cell reads from ``--data`` (checked before any worker starts)."""
        return 1

    def check_sizes(self, sizes: Sequence[int]) -> None:
        """Options that depend on the image size have a value at each of ``sizes`` (the sizes the
        cells run at; checked with the suite, before any cell)."""

    def check_machine(self) -> None:
        """What the runner needs of this machine besides its options (a writable cache ...): checked
        in the parent before any cell, so that it fails once with its cause, not in every cell."""

    def records_time(self) -> bool:
        """Whether the cell records a time: then no other cell may run beside it (``--jobs`` > 1 is
        refused, a cluster gives it a node), since neighbours disturb the figure. The one rule for
        every suite, derived from the options, never from a list of suite names."""
        return False


@dataclass(frozen=True)
class MeasureOptions(RunnerOptions):
    """How the one attention call of a cell is measured (:mod:`attnbench.measure.call`)."""

    #: share of the available memory a call may be estimated to need (inputs subtracted) before
    #: the cell is recorded ``infeasible`` instead of run
    memory_fraction: float = 0.85
    #: a call whose FLOP estimate at the run's matmul rate exceeds ``time_margin`` x timeout is
    #: ``infeasible`` (too slow); None: no time check (and no yardstick measured)
    time_margin: Optional[float] = None
    #: timing (torch.utils.benchmark): minimum measured time of short calls, total time budget of
    #: long calls, and the repeats taken whatever the budget
    min_run_time: float = 0.5
    time_budget_s: float = 10.0
    min_repeats: int = 3

    def calibrations(self) -> tuple[str, ...]:
        """The matmul yardstick for the time feasibility check; both yardsticks (matmul FLOP/s and
        triad bytes/s) when the runner times calls, whose achieved rates are shown as % of them."""
        if self.records_time():
            return ("flops_per_s", "bytes_per_s")
        return ("flops_per_s",) if self.time_margin is not None else ()

    def measured(self) -> frozenset[str]:
        """What the cell measures of its attention call (:data:`MEASURABLE`; ``CallBudget.metrics``)."""
        return frozenset({"memory", "flops"})

    def records_time(self) -> bool:
        return "time" in self.measured()

    @classmethod
    def subset_of(cls, spec: Any) -> "MeasureOptions":
        """Only the measurement options of a cell (for helpers shared by runners with other options)."""
        names = {f.name for f in fields(MeasureOptions)}
        return parse(MeasureOptions, {k: v for k, v in spec.options.items() if k in names}, f"suite {spec.suite!r}")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.memory_fraction <= 1:
            raise UserError(f"option memory_fraction must be in (0, 1], got {self.memory_fraction}")
        for name in ("time_margin", "min_run_time", "time_budget_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"option {name} must be a positive number, got {value}")
        if self.min_repeats < 1:
            raise UserError(f"option min_repeats must be >= 1, got {self.min_repeats}")


@dataclass(frozen=True)
class ImageOptions(RunnerOptions):
    """Runners that read image pairs: embedded ones, or the user's folder given by ``--data``."""

    #: folder of the user's image pairs (set by ``--data``; README: "Your own images")
    data: Optional[str] = None
    #: camera-shift range [min, max] of the embedded motion pairs, fractions of the frame (None:
    #: tasks.embedded.DEFAULT_MOTION); ignored with ``data``
    motion: Optional[list[float]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.motion is not None:
            from .tasks.embedded import check_motion  # the one place the valid range is stated

            check_motion(self.motion)


# ----------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (a plain type, ``list[...]``, a union), or a UserError saying what ``where`` must be."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            plural = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}.get(item)
            raise UserError(f"{where} must be a list of {plural or _type_name(item)}, got {value!r}")
        return [coerce(v, item, where) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    return value


def parse(cls: type[T], raw: Mapping[str, Any], where: str = "options", kind: str = "option") -> T:
    """``cls(**raw)`` with every key known, every required one given and every value of its declared
    type, else a UserError naming the key (``kind``: what a key is called in messages)."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: {kind}s must be a table of key = value, got {raw!r}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown {kind} {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    missing = [name for name, f in known.items() if name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: {kind} {missing[0]!r} is required")
    hints = typing.get_type_hints(cls)
    values = {name: coerce(value, hints[name], f"{where}: {kind} {name}") for name, value in raw.items()}
    return cls(**values)


def runner_options(runner: str) -> Optional[type[RunnerOptions]]:
    """The ``OPTIONS`` dataclass a runner module declares (None when it declares none)."""
    module, _, _func = runner.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"suite runner {runner!r} cannot be loaded: {exc}") from None
    cls = getattr(mod, "OPTIONS", None)
    return cls if cls is not None and dataclasses.is_dataclass(cls) else None
