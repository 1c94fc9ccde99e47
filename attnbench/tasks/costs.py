"""Cost of the attention call inside a task, through the one measuring path (:mod:`attnbench.measure.call`).

Why here: every task suite reports the cost of its attention layer beside its quality (the
paper's Fig. 5 and Table 8 axes), measured on the very inputs the task gives the layer, by the same
code, feasibility rule and record fields (time samples, FLOPs by op, uncounted ops, estimates)
as the memory and speed suites, so every suite can be gated the same way.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..interface import AttentionMechanism
from ..measure.call import AttentionCall, CallBudget, check_feasible, estimate_metrics, measure_call


def measure_attention(call: AttentionCall, budget: CallBudget, prefix: str = "",
                      known: Optional[dict[str, Any]] = None) -> tuple[Optional[torch.Tensor], dict[str, Any]]:
    """Estimate, refuse what cannot fit (``infeasible``), then measure one call of a task.

    Returns the call's output (None when only its time was measured) and the metrics, estimates
    included, every key prefixed with ``prefix``.
    """
    shape = call.shape()
    metrics: dict[str, Any] = {**(known or {}), **estimate_metrics(call.module, shape, prefix)}
    check_feasible(call.module, shape, budget, metrics, prefix)
    out, measured = measure_call(call, budget, prefix, known=metrics)
    metrics.update(measured)
    return out, metrics


def build(spec_mechanism: str, patch_size: int, params: dict[str, Any], device: str) -> AttentionMechanism:
    """Build a mechanism through the registry (never by plugin name) and move it to ``device``."""
    from ..registry import mechanism

    return mechanism(spec_mechanism, patch_size=patch_size, **params).to(device)
