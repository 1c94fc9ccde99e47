"""Hostile attention layers, one class: each ``kind`` is one way a plugin can return a false result
(a wrong shape, dtype or device, non-finite values, an input handed back or changed in place), which
the harness must record as ``error``. Used by the measuring path's tests and the run's."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from attnbench import registry
from attnbench.interface import AttentionMechanism, CostEstimate, ProblemShape


class Hostile(AttentionMechanism):
    """An 'attention' that misbehaves as its ``kind`` says (``honest``: it does not)."""

    similarities = ("l2", "dot")
    devices = ("cpu",)
    differentiable_wrt = ("q", "k", "v")
    summary = "misbehaves on purpose"
    complexity = "O(n)"
    kind = "honest"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Any = None) -> torch.Tensor:
        wrong = {"shape": lambda: torch.zeros(3), "dtype": lambda: v.double(),
                 "meta": lambda: torch.empty(v.shape[:2] + q.shape[2:], dtype=v.dtype, device="meta"),
                 "returns_q": lambda: q, "returns_view": lambda: q[:, : v.shape[1]]}
        if self.kind in wrong:
            return wrong[self.kind]()
        if self.kind in ("nan", "inf"):
            out = v.clone()
            out[0, 0, 0, 0] = float(self.kind)
            return out
        if self.kind == "scales_q":
            q.mul_(2.0)  # each call: the timed inputs grow to Inf
        if self.kind == "scales_and_restores":
            q.mul_(2.0)
            q.div_(2.0)
        if self.kind == "writes_data":
            q.data.mul_(2.0)  # .data keeps no version counter: only the contents tell
        return v.clone() + 0.0 * q.mean()

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        return CostEstimate(memory_bytes=1000, flops=1000)


def hostile(kind: str, name: str = "hostile") -> type[Hostile]:
    """The layer class that misbehaves as ``kind``, registered under ``name`` by :func:`register`."""
    return type(f"Hostile_{kind}", (Hostile,), {"kind": kind, "name": name})


def register(monkeypatch: pytest.MonkeyPatch, cls: type[AttentionMechanism]) -> None:
    """Make ``cls`` a plugin under its ``name`` for this test, as an installed entry point would be."""
    table = {**registry.plugins(), cls.name: registry.PluginInfo(cls.name, f"tests:{cls.__name__}", "tests", "0", cls)}
    monkeypatch.setattr(registry, "plugins", lambda: table)
