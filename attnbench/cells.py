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
from dataclasses import asdict, dataclass, field, fields
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


@dataclass(frozen=True)
class CellSpec:
    suite: str
    #: ``"package.module:function"`` taking a CellSpec and returning a metrics dict
    runner: str = field(metadata=_NOT_IDENTITY)
    mechanism: str
    params: dict[str, Any] = field(default_factory=dict)
    size: int = 64
    channels: int = 16
    patch_size: int = 7
    batch: int = 1
    mode: str = "fwd"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    #: suite-specific settings (metrics to take, timing budget, task preset...), checked against
    #: the runner's ``OPTIONS`` dataclass when the suite is expanded
    options: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    timeout_s: float = field(default=600.0, metadata=_NOT_IDENTITY)
    #: values the run measures once before dispatch because the runner declares it needs them
    #: (``flops_per_s``: the matmul yardstick); they differ run to run, so they are not identity
    calibration: dict[str, Any] = field(default_factory=dict, metadata=_NOT_IDENTITY)

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
