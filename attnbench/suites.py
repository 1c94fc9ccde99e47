"""Suites are data: one TOML file each in ``suites/`` (installed as ``attnbench_suites``).

A suite file names its cell runner, a default grid (mechanisms x sizes x modes ...), runner
options, mechanism parameters that depend on size (``[per_size.full] stride = {512 = 10}``),
presets that override any of these, and gate tolerances. ``Suite.cells()`` expands a preset plus
command-line overrides into independent ``CellSpec`` s.
"""
from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, make_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from .cells import CellSpec, GridKey, grid_keys
from .errors import UserError
from .interface import DTYPE_NAMES
from .options import parse
from .registry import resolve
from .specs import split_spec

#: the grid's keys, derived from CellSpec (the one declaration of a cell's fields)
GRID = {g.name: g for g in grid_keys()}


@functools.lru_cache(maxsize=1)
def grid_class() -> type:
    """A dataclass of the grid's keys (axes as lists), for :func:`attnbench.options.parse`; defaults
    are CellSpec's, so a suite lists only what differs from them."""
    def default(g: GridKey) -> Any:
        if g.default is MISSING:
            return field()
        return field(default_factory=lambda: list(g.default)) if g.axis else field(default=g.default)

    return make_dataclass("Grid", [(g.name, list[g.type] if g.axis else g.type, default(g)) for g in GRID.values()],
                          frozen=True)
#: every key a suite file may hold, per level: anything else is a typo (a misspelled ``[optoins]``
#: once ran a timing suite without its options, exit 0), refused naming the key and the valid ones
TOP_KEYS = ("name", "description", "runner", "default_preset", "grid", "options", "per_size", "presets", "gate")
PRESET_KEYS = (*GRID, "options")
GATE_KEYS = ("reference", "tolerances", "alpha")


def _suite_files() -> dict[str, Any]:
    root = resources.files("attnbench_suites")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".toml")}


def suite_names() -> list[str]:
    return sorted(_suite_files())


@dataclass
class Suite:
    name: str
    description: str
    runner: str
    grid: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    per_size: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_preset: str = "default"
    gate: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def preset_names(self) -> list[str]:
        return sorted({"default", *self.presets})

    def resolved(self, preset: Optional[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(preset name, grid, options) after applying the preset over the defaults."""
        name = preset or self.default_preset
        if name != "default" and name not in self.presets:
            raise UserError(f"suite {self.name!r} has no preset {name!r}; valid: {', '.join(self.preset_names())}")
        grid = {g.name: list(g.default) if g.axis else g.default for g in GRID.values() if g.default is not MISSING}
        grid.update(self.grid)  # CellSpec's defaults, then the suite's grid, then the preset
        options = dict(self.options)
        for key, value in self.presets.get(name, {}).items():
            if key == "options":
                options.update(value)
            else:
                grid[key] = value
        return name, grid, options

    def check_options(self) -> None:
        """Parse the options of the defaults and of every preset (not only the one run) against the
        runner's ``OPTIONS``, and the mechanism names of ``[per_size]``: a typo anywhere in the file
        is found whichever preset is asked for."""
        for mechanism in self.per_size:
            resolve(mechanism)  # a misspelled [per_size.NAME] lists the valid names
        for name in self.preset_names():
            _, grid, options = self.resolved(name)
            sizes = grid.get("sizes") if isinstance(grid.get("sizes"), list) else []  # not a list: validate_grid says so
            check_options(self.runner, options, f"suite {self.name!r}" + (f" preset {name!r}" if name != "default" else ""),
                          sizes)

    def cells(self, preset: Optional[str] = None, **overrides: Any) -> list[CellSpec]:
        """Expand the grid (size-major, so cheap cells come first) into cell specs."""
        self.check_options()
        preset_name, grid, options = self.resolved(preset)
        options.update(overrides.pop("options", None) or {})
        grid.update({k: v for k, v in overrides.items() if v is not None})
        grid = validate_grid(grid, self.name)
        check_options(self.runner, options, f"suite {self.name!r}" + (f" preset {preset_name!r}" if preset_name != "default" else ""),
                      grid["sizes"])  # --sizes included
        specs = []
        for size in grid["sizes"]:
            for spec_text in grid["mechanisms"]:
                name, params = split_spec(spec_text)
                for key, by_size in self.per_size.get(name, {}).items():
                    if str(size) in by_size and key not in params:
                        params[key] = by_size[str(size)]
                for mode in grid["modes"]:
                    fixed = {g.field: grid[g.name] for g in GRID.values() if not g.axis}
                    specs.append(CellSpec(suite=self.name, runner=self.runner, mechanism=name, params=params,
                                          size=size, mode=mode, options=options, preset=preset_name, **fixed))
        return specs


def check_options(runner: str, options: dict[str, Any], where: str, sizes: Sequence[int] = ()) -> None:
    """Parse the options against the runner's ``OPTIONS`` dataclass (unknown key, wrong type: UserError)
    and check the ones keyed by size against the ``sizes`` the cells run at."""
    from .options import parse, runner_options

    cls = runner_options(runner)
    if cls is not None:
        parsed = parse(cls, options, where)
        try:
            parsed.check_sizes(sizes)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None


def _check_range(g: GridKey, value: Any, suite: str) -> None:
    what = g.flag.lstrip("-").replace("-", " ")
    if g.minimum is not None and not (value > g.minimum if g.type is float else value >= g.minimum):
        kind = "a positive, finite number of seconds" if g.type is float else (
            "a positive integer" if g.minimum == 1 else f"an integer >= {g.minimum}")
        raise UserError(f"suite {suite!r}: {what} must be {kind}, got {value!r}")
    if g.maximum is not None and value > g.maximum:
        raise UserError(f"suite {suite!r}: {what} must be at most {g.maximum}, got {value!r}")
    if g.odd and value % 2 == 0:
        raise UserError(f"{what} must be odd (patches are centred), got {value}")
    if g.choices and value not in g.choices:
        raise UserError(f"unknown {what} {value!r}; valid: {', '.join(g.choices)}")


def validate_grid(grid: dict[str, Any], suite: str) -> dict[str, Any]:
    """Check every grid value (types through options.parse, ranges from CellSpec's declarations,
    then what needs torch or the registry), so bad input fails before any cell runs."""
    out = asdict(parse(grid_class(), grid, f"suite {suite!r}: grid", kind="grid key"))
    for g in GRID.values():
        for value in (out[g.name] if g.axis else [out[g.name]]):
            _check_range(g, value, suite)
    if out["sizes"] and out["patch_size"] > min(out["sizes"]):
        raise UserError(f"patch size {out['patch_size']} is larger than the image ({min(out['sizes'])} px); "
                        "use a smaller --patch-size or larger --sizes")
    if out["dtype"] not in DTYPE_NAMES:
        raise UserError(f"unknown dtype {out['dtype']!r}; valid: {', '.join(DTYPE_NAMES)}")
    check_device(out["device"])
    if not out["mechanisms"]:
        raise UserError("no mechanisms selected")
    for spec_text in out["mechanisms"]:
        resolve(split_spec(spec_text)[0])  # raises UserError listing valid names
    return out


def check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} is not available here (no CUDA device); valid: cpu")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} is not there; valid: cpu, " + ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count())))
        return
    raise UserError(f"unknown device {device!r}; valid: cpu, cuda")


def load(name_or_path: str) -> Suite:
    """Load a suite by name (``memory``) or by path to a TOML file."""
    files = _suite_files()
    if name_or_path in files:
        source, text = f"suites/{name_or_path}.toml", files[name_or_path].read_text(encoding="utf-8")
    elif name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if path.exists() and not path.is_file():
            raise UserError(f"cannot read suite file {path}: not a regular file")
        try:
            if path.stat().st_size > 1 << 20:
                raise UserError(f"cannot read suite file {path}: larger than 1 MiB, not a suite file")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read suite file {path}: {exc}") from None
        source = str(path)
    else:
        raise UserError(f"unknown suite {name_or_path!r}; valid: {', '.join(suite_names())} (or a path to a .toml file)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"suite file {source} is not valid TOML: {exc}") from None
    check_keys(data, source)
    try:
        return Suite(
            name=data["name"],
            description=data.get("description", ""),
            runner=data["runner"],
            grid=dict(data.get("grid", {})),
            options=dict(data.get("options", {})),
            per_size={m: {k: {str(s): v for s, v in by.items()} for k, by in t.items()} for m, t in data.get("per_size", {}).items()},
            presets=dict(data.get("presets", {})),
            default_preset=data.get("default_preset", "default"),
            gate=dict(data.get("gate", {})),
            source=source,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"suite file {source} is malformed (missing or wrong {exc}); see suites/memory.toml for the format") from None


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a table, got {value!r}"[:300])
    return value


def _known(table: Any, valid: tuple[str, ...], where: str) -> dict[str, Any]:
    """``table`` as a dict whose every key is in ``valid`` (else a one-line UserError naming it)."""
    _table(table, where)
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(valid)}")
    return table


def check_keys(data: dict[str, Any], source: str) -> None:
    """Every key of a suite file, at every level, is one attnbench knows: top level, ``[grid]``,
    ``[presets.*]``, ``[gate]`` and its tolerances (metric names of :mod:`attnbench.metrics`).
    Option names are the runner's (checked by :meth:`Suite.check_options`)."""
    from .metrics import CATALOGUE

    where = f"suite file {source}"
    _known(data, TOP_KEYS, where)
    _known(data.get("grid", {}), tuple(GRID), f"{where} [grid]")
    _table(data.get("options", {}), f"{where} [options]")
    presets = _table(data.get("presets", {}), f"{where} [presets]")
    for name, preset in presets.items():
        _known(preset, PRESET_KEYS, f"{where} [presets.{name}]")
        _table(preset.get("options", {}), f"{where} [presets.{name}.options]")
    default = data.get("default_preset", "default")
    if default != "default" and default not in presets:
        raise UserError(f"{where}: default_preset {default!r} is not a preset; valid: {', '.join(['default', *presets])}")
    gate = _known(data.get("gate", {}), GATE_KEYS, f"{where} [gate]")
    tolerances = _known(gate.get("tolerances", {}), tuple(CATALOGUE), f"{where} [gate.tolerances]")
    for metric, value in tolerances.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(f"{where} [gate.tolerances]: {metric} must be a relative change >= 0, e.g. 0.05, got {value!r}")
    for mechanism, by_param in _table(data.get("per_size", {}), f"{where} [per_size]").items():
        _table(by_param, f"{where} [per_size.{mechanism}]")  # its names: Suite.check_options
