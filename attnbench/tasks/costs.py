"""Cost of the attention call inside a task: estimate, feasibility, measured memory/FLOPs/time.

Why here: every task suite reports the cost of its attention layer beside its quality (the
paper's Fig. 5 and Table 8 axes), measured on the very inputs the task gives the layer, with the
harness's own helpers (:mod:`attnbench.measure`) so the figures compare with the memory suite's.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..errors import Infeasible, OutOfMemory
from ..interface import AttentionMechanism, ProblemShape
from ..measure.flops import count_flops
from ..measure.memory import available_memory_bytes, is_oom, measure_peak
from ..measure.timing import time_call

GB = 1024**3


def problem_shape(module: AttentionMechanism, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mode: str = "fwd") -> ProblemShape:
    return ProblemShape.of(q, k, v, module.patch_size, mode=mode)


def estimate_metrics(module: AttentionMechanism, shape: ProblemShape, prefix: str = "") -> dict[str, Any]:
    est = module.estimate(shape)
    return {f"{prefix}estimated_memory_bytes": int(est.memory_bytes), f"{prefix}estimated_flops": int(est.flops)}


def check_feasible(module: AttentionMechanism, shape: ProblemShape, device: str, memory_fraction: float = 0.85,
                   known: Optional[dict[str, Any]] = None) -> None:
    """Raise Infeasible (with the estimate in the record) when the call cannot fit in memory."""
    est = module.estimate(shape)
    budget = available_memory_bytes(device) * memory_fraction
    if est.memory_bytes > budget:
        metrics = {**(known or {}), "estimated_memory_bytes": int(est.memory_bytes), "estimated_flops": int(est.flops)}
        raise Infeasible(f"{module.registry_name if hasattr(module, 'registry_name') else module.name}: estimated "
                         f"{est.memory_bytes / GB:.2f} GB > {budget / GB:.2f} GB available", metrics)


def measure_call(call: Callable[[], Any], device: str, prefix: str = "", timing: bool = False,
                 min_run_time: float = 0.5, time_budget_s: float = 10.0,
                 known: Optional[dict[str, Any]] = None) -> tuple[Any, dict[str, Any]]:
    """``(call(), metrics)``: peak memory and FLOPs of one call (and its time when ``timing``).

    An out-of-memory error becomes OutOfMemory, keeping ``known`` (the estimates) in the record.
    """
    metrics: dict[str, Any] = {}
    try:
        (result, flops), peak = measure_peak(lambda: count_flops(call), device)
        metrics[f"{prefix}peak_memory_bytes"] = int(peak)
        metrics[f"{prefix}flops"] = int(flops.total)
        if flops.uncounted:
            metrics[f"{prefix}uncounted_ops"] = flops.uncounted
        if timing:
            t = time_call(call, device, min_run_time=min_run_time, budget_s=time_budget_s, min_repeats=3)
            metrics[f"{prefix}time_median_s"] = t.median_s
            metrics[f"{prefix}time_iqr_s"] = t.iqr_s
            metrics[f"{prefix}time_repeats"] = t.repeats
    except Exception as exc:
        if is_oom(exc):
            raise OutOfMemory(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", {**(known or {}), **metrics}) from exc
        raise
    return result, metrics


def build(spec_mechanism: str, patch_size: int, params: dict[str, Any], device: str) -> AttentionMechanism:
    """Build a mechanism through the registry (never by plugin name) and move it to ``device``."""
    from ..registry import mechanism

    return mechanism(spec_mechanism, patch_size=patch_size, **params).to(device)
