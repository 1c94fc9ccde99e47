"""A benchmark cell: a plain, serialisable spec in, a record out.

Cells are independent of each other, so whatever runs them (local worker processes now; Ray or
Slurm through submitit for a matrix that outgrows one machine) only needs ``CellSpec.to_dict``,
the runner's dotted path, and somewhere to put the returned record.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("ok", "oom", "timeout", "error", "unavailable", "infeasible")


#: options the run measures and adds before the cells start (the matmul yardstick that decides
#: which cells are too slow): they differ run to run, so they are not part of a cell's identity
RUN_MEASURED_OPTIONS: tuple[str, ...] = ("flops_per_s",)


@dataclass(frozen=True)
class CellSpec:
    suite: str
    #: ``"package.module:function"`` taking a CellSpec and returning a metrics dict
    runner: str
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
    #: suite-specific settings (metrics to take, timing budget, task preset...)
    options: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    timeout_s: float = 600.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CellSpec":
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """The fields that make two cells the same measurement (used by ``--resume``)."""
        d = self.to_dict()
        for volatile in ("timeout_s", "runner"):
            d.pop(volatile)
        d["options"] = {k: v for k, v in d["options"].items() if k not in RUN_MEASURED_OPTIONS}
        return d

    @property
    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        name = f"{self.mechanism}[{extra}]" if extra else self.mechanism
        return f"{name} {self.size}px C{self.channels} B{self.batch} {self.mode} {self.device}/{self.dtype}"
