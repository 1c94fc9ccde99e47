"""A benchmark cell: a plain, serialisable spec in, a record out.

Cells are independent of each other, so whatever runs them (local worker processes now; Ray or
Slurm through submitit for a matrix that outgrows one machine) only needs ``CellSpec.to_dict``,
the runner's dotted path, and somewhere to put the returned record.

A cell's identity (what ``--resume``, ``compare`` and ``gate`` join on) is every field except those
declared ``identity=False`` in their metadata: the runner's path, the timeout and the run's
calibrations (the matmul yardstick) may differ between two runs of the same measurement.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

#: what a cell measures of a call: the forward pass alone, or forward then backward (training cost)
MODES = ("fwd", "fwd+bwd")

#: how a cell can end; ``killed``: the worker died from a signal with no evidence of an OOM
STATUSES = ("ok", "oom", "timeout", "killed", "error", "unavailable", "infeasible", "unsupported")
#: statuses that say something about the mechanism on this machine; ``--resume`` keeps them
FINAL_STATUSES = ("ok", "oom", "infeasible", "unavailable", "unsupported")
#: statuses of a cell that failed to give a result; ``--resume`` runs them again, exit status 3
FAILED_STATUSES = ("error", "timeout", "killed", "oom")

_NOT_IDENTITY = {"identity": False}


def _grid(key: str, flag: str, help: str, *, axis: bool = False, minimum: int | float | None = None,
          maximum: int | None = None, odd: bool = False, choices: tuple[str, ...] = (),
          tag: str | None = None) -> dict[str, Any]:
    """Metadata of a field that a suite's ``[grid]`` (and a preset, and ``attnbench run FLAG``) sets.
    ``axis``: the grid holds a list and every value makes its own cells (``sizes``: one cell per size).
    ``tag``: the field changes what every cell measures, so a run that sets it to other than the
    preset's value marks the default results file name with ``-{tag}{value}`` (``memory-table1-C8``)."""
    return {"grid": key, "flag": flag, "help": help, "axis": axis, "minimum": minimum, "maximum": maximum,
            "odd": odd, "choices": choices, "tag": tag}


#: seeds reach torch.manual_seed and the kernels' 64-bit counters
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class CellSpec:
    """One cell. Every fact about a cell's fields is declared here, once: which fields make its
    identity, which a suite's grid sets (name, command-line flag, range), their types and defaults.
    Suites, the schema, the report and the CLI derive theirs from :func:`grid_keys` and
    :func:`record_fields`."""

    suite: str
    #: ``"package.module:function"`` taking a CellSpec and returning a metrics dict
    runner: str = field(metadata=_NOT_IDENTITY)
    mechanism: str = field(metadata=_grid("mechanisms", "--mechanisms", "comma-separated names/specs, e.g. "
                                          "full,flash,psal-3,full[stride=2]", axis=True))
    params: dict[str, Any] = field(default_factory=dict)
    size: int = field(default=64, metadata=_grid("sizes", "--sizes", "comma-separated input sizes (H = W), e.g. 64,128",
                                                 axis=True, minimum=1))
    channels: int = field(default=16, metadata=_grid("channels", "--channels", "channels of q and k", minimum=1,
                                                       tag="C"))
    patch_size: int = field(default=7, metadata=_grid("patch_size", "--patch-size", "odd patch side p of the "
                                                      "similarity, at most the image size", minimum=1, odd=True, tag="p"))
    batch: int = field(default=1, metadata=_grid("batch", "--batch", "batch size", minimum=1, tag="B"))
    mode: str = field(default=MODES[0], metadata=_grid("modes", "--mode", "fwd, fwd+bwd, or both", axis=True,
                                                       choices=MODES))
    device: str = field(default="cpu", metadata=_grid("device", "--device", "cpu, cuda or cuda:N", tag=""))
    dtype: str = field(default="float32", metadata=_grid("dtype", "--dtype", "float32, float64, float16, bfloat16", tag=""))
    seed: int = field(default=0, metadata=_grid("seed", "--seed", "seed of inputs and stochastic mechanisms",
                                                minimum=0, maximum=MAX_SEED, tag="seed"))
    #: suite-specific settings (metrics to take, timing budget, task preset...), checked against
    #: the runner's ``OPTIONS`` dataclass when the suite is expanded
    options: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    timeout_s: float = field(default=600.0, metadata={**_NOT_IDENTITY, **_grid(
        "timeout", "--timeout", "seconds per cell before it is recorded as timeout", minimum=0)})
    #: values the run measures once before dispatch because the runner declares it needs them
    #: (``flops_per_s``: the matmul yardstick); they differ run to run, so they are not identity
    calibration: dict[str, Any] = field(default_factory=dict, metadata=_NOT_IDENTITY)
    #: the run this cell belongs to (attnbench.context.RunContext as a dict): where to save example
    #: images, the run's image cache, whether set-up was tried; neither identity nor recorded
    context: dict[str, Any] = field(default_factory=dict, metadata=_NOT_IDENTITY)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CellSpec":
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """The fields that make two cells the same measurement (used by ``--resume``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("identity", True)}

    @property
    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        name = f"{self.mechanism}[{extra}]" if extra else self.mechanism
        return f"{name} {self.size}px C{self.channels} B{self.batch} {self.mode} {self.device}/{self.dtype}"


@dataclass(frozen=True)
class GridKey:
    """A field of :class:`CellSpec` as a suite's grid and the command line see it."""

    name: str  # key in [grid] and presets ("sizes")
    field: str  # the CellSpec field ("size")
    type: type  # of one value
    axis: bool  # the grid holds a list of values
    default: Any  # CellSpec's default ([default] for an axis); MISSING: the suite must say
    flag: str
    help: str
    minimum: int | float | None = None
    maximum: int | None = None
    odd: bool = False
    choices: tuple[str, ...] = ()
    tag: str | None = None


def grid_keys() -> tuple[GridKey, ...]:
    """The grid's keys, in CellSpec's order, derived from its fields' metadata."""
    import typing

    hints = typing.get_type_hints(CellSpec)
    keys = []
    for f in fields(CellSpec):
        meta = f.metadata
        if "grid" not in meta:
            continue
        default: Any = f.default if f.default is not MISSING else MISSING
        if meta["axis"] and default is not MISSING:
            default = [default]
        keys.append(GridKey(meta["grid"], f.name, hints[f.name], meta["axis"], default, meta["flag"], meta["help"],
                            meta["minimum"], meta["maximum"], meta["odd"], meta["choices"], meta["tag"]))
    return tuple(keys)


#: fields of CellSpec that a record does not keep (how the cell was run, not what it measured)
NOT_RECORDED = ("runner", "timeout_s", "context")


def record_fields() -> dict[str, type]:
    """The CellSpec fields every record carries, with their types (the schema checks them)."""
    import typing

    hints = typing.get_type_hints(CellSpec)
    return {f.name: typing.get_origin(hints[f.name]) or hints[f.name] for f in fields(CellSpec)
            if f.name not in NOT_RECORDED}


def identity_fields() -> tuple[str, ...]:
    """The fields that make two records the same measurement (what ``key`` hashes)."""
    return tuple(f.name for f in fields(CellSpec) if f.metadata.get("identity", True))
