"""Cell runner of the ``memory`` and ``speed`` suites: one attention call on random inputs.

Options (:class:`MicrobenchOptions`): ``metrics``, any of ``memory``, ``flops``, ``time``, plus the
measurement options every runner shares (:class:`attnbench.options.MeasureOptions`: memory
fraction, time margin and the timing budget). The call is measured by
:mod:`attnbench.measure.call`, as in every task suite.

Forward cells run under ``torch.no_grad()`` (inference cost); ``fwd+bwd`` cells build the graph
and back-propagate a fixed gradient into the inputs the mechanism is differentiable for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..cells import CellSpec
from ..errors import Unsupported, UserError
from ..interface import AttentionMechanism, ProblemShape, dtype_from_name
from ..measure.call import (AttentionCall, CallBudget, check_feasible, estimate_metrics, known_estimate, measure_call,
                            oom_as_outcome)
from ..options import MEASURABLE, MeasureOptions
from ..registry import mechanism


@dataclass(frozen=True)
class MicrobenchOptions(MeasureOptions):
    #: what to measure of the call
    metrics: list[str] = field(default_factory=lambda: ["memory", "flops"])

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.metrics:
            if name not in MEASURABLE:
                raise UserError(f"option metrics: unknown metric {name!r}; valid: {', '.join(MEASURABLE)}")

    def measured(self) -> frozenset[str]:
        return frozenset(self.metrics)


OPTIONS = MicrobenchOptions


def make_call(module: AttentionMechanism, spec: CellSpec, size: int) -> AttentionCall:
    """Random inputs of one cell (deterministic for the seed) and the call on them."""
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    shape = (spec.batch, spec.channels, size, size)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype).to(device) for _ in range(3))
    grad_out = torch.randn(shape, generator=gen, dtype=dtype).to(device) if spec.mode == "fwd+bwd" else None
    return AttentionCall(module, q, k, v, mode=spec.mode, grad_out=grad_out)


def run(spec: CellSpec) -> dict[str, Any]:
    opts = MicrobenchOptions.of(spec)
    budget = CallBudget.for_cell(spec, opts, opts.measured())
    module = mechanism(spec.mechanism, patch_size=spec.patch_size, default_seed=spec.seed, **spec.params).to(spec.device)
    shape = ProblemShape.square(spec.size, spec.channels, spec.patch_size, spec.batch,
                                dtype_bytes=torch.empty((), dtype=dtype_from_name(spec.dtype)).element_size(),
                                mode=spec.mode)
    metrics = estimate_metrics(module, shape)
    if spec.mode == "fwd+bwd" and not module.differentiable_wrt:
        raise Unsupported(f"{spec.mechanism}: forward only here (no backward on {spec.device}): no fwd+bwd cell", metrics)
    check_feasible(module, shape, budget, metrics)
    with oom_as_outcome(metrics):
        call = make_call(module, spec, spec.size)
        warmup = None
        rate = budget.flops_per_s
        if "time" in opts.metrics and rate and known_estimate(module, shape, metrics).seconds_at(rate) > 5.0 \
                and spec.size >= 32:
            warmup = make_call(module, spec, spec.size // 2)  # same code path, a quarter of the work
    _, measured = measure_call(call, budget, known=metrics, warmup=warmup)
    metrics.update(measured)
    return metrics
