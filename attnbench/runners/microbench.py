"""Cell runner of the ``memory`` and ``speed`` suites: one attention call on random inputs.

Options (from the suite file): ``metrics`` -- any of ``memory``, ``flops``, ``time``;
``min_run_time``, ``time_budget_s`` (timing); ``memory_fraction`` (share of available memory a
cell may be predicted to use before it is recorded as infeasible); ``time_margin`` (a cell whose
FLOP estimate at the calibrated matmul rate exceeds ``time_margin`` x timeout is infeasible);
``flops_per_s`` (that rate, measured by ``attnbench run`` once per run).

Forward cells run under ``torch.no_grad()`` (inference cost); ``fwd+bwd`` cells build the graph
and back-propagate a fixed gradient into the inputs the mechanism is differentiable for.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..cells import CellSpec
from ..errors import Infeasible, OutOfMemory
from ..interface import AttentionMechanism, ProblemShape, dtype_from_name
from ..measure.flops import count_flops
from ..measure.memory import available_memory_bytes, is_oom, measure_peak
from ..measure.timing import time_call
from ..registry import mechanism

GB = 1024**3


def make_call(module: AttentionMechanism, spec: CellSpec, size: int) -> Callable[[], Any]:
    """Inputs of one cell and a closure running the mechanism on them (fwd or fwd+bwd)."""
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    shape = (spec.batch, spec.channels, size, size)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype).to(device) for _ in range(3))
    if spec.mode == "fwd":
        def forward() -> torch.Tensor:
            with torch.no_grad():
                return module(q, k, v)
        return forward
    leaves = {"q": q, "k": k, "v": v}
    for name in module.differentiable_wrt:
        leaves[name].requires_grad_(True)
    grad_out = torch.randn((spec.batch, spec.channels, size, size), generator=gen, dtype=dtype).to(device)

    def forward_backward() -> torch.Tensor:
        for name in module.differentiable_wrt:
            leaves[name].grad = None
        out = module(q, k, v)
        torch.autograd.backward(out, grad_out)
        return out
    return forward_backward


def run(spec: CellSpec) -> dict[str, Any]:
    opts = spec.options
    wanted = set(opts.get("metrics", ["memory", "flops"]))
    module = mechanism(spec.mechanism, patch_size=spec.patch_size, default_seed=spec.seed, **spec.params).to(spec.device)
    dtype = dtype_from_name(spec.dtype)
    shape = ProblemShape.square(spec.size, spec.channels, spec.patch_size, spec.batch,
                                dtype_bytes=torch.empty((), dtype=dtype).element_size(), mode=spec.mode)
    estimate = module.estimate(shape)
    metrics: dict[str, Any] = {
        "estimated_memory_bytes": int(estimate.memory_bytes),
        "estimated_flops": int(estimate.flops),
        "complexity": estimate.formula or module.complexity,
        "resolved_params": module.params(),
    }
    if getattr(module, "backend", None):
        metrics["backend"] = module.backend

    input_bytes = 4 * shape.batch * shape.channels * spec.size**2 * shape.dtype_bytes
    budget = available_memory_bytes(spec.device) * float(opts.get("memory_fraction", 0.85)) - input_bytes
    if estimate.memory_bytes > budget:
        raise Infeasible(f"estimated {estimate.memory_bytes / GB:.2f} GB > {max(budget, 0) / GB:.2f} GB available", metrics)
    rate = opts.get("flops_per_s")
    if rate and estimate.flops / rate > float(opts.get("time_margin", 3.0)) * spec.timeout_s:
        raise Infeasible(f"estimated {estimate.flops / rate:.0f} s at {rate / 1e9:.0f} GFLOP/s > "
                         f"{opts.get('time_margin', 3.0)} x timeout {spec.timeout_s:g} s", metrics)

    try:
        call = make_call(module, spec, spec.size)
        if wanted & {"memory", "flops"}:
            (_, flops), peak = measure_peak(lambda: count_flops(call), spec.device)
            if "memory" in wanted:
                metrics["peak_memory_bytes"] = int(peak)
            if "flops" in wanted:
                metrics["flops"] = flops.total
                metrics["flops_by_op"] = flops.by_op
                metrics["uncounted_ops"] = flops.uncounted
        if "time" in wanted:
            warmup = None
            if rate and estimate.flops / rate > 5.0 and spec.size >= 32:
                warmup = make_call(module, spec, spec.size // 2)  # same code path, a quarter of the work
            timing = time_call(call, spec.device, min_run_time=float(opts.get("min_run_time", 1.0)),
                               budget_s=float(opts.get("time_budget_s", 30.0)),
                               min_repeats=int(opts.get("min_repeats", 3)), warmup=warmup,
                               label=spec.label)
            metrics.update(timing.metrics())
    except Exception as exc:
        if is_oom(exc):
            raise OutOfMemory(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", metrics) from exc
        exc.metrics = metrics  # type: ignore[attr-defined]  # keep the estimates in the record
        raise
    return metrics
