"""Cell runner of the ``reconstruction`` suite (paper Tables 2-3).

Frame A is rebuilt from frame B: queries are the patches of A, keys the patches of B, values the
pixels of B (RGB in [0, 1]); the score is the l2 error (mean squared error over pixels and
channels) of the reconstruction to A, averaged over ``options.pairs`` pairs (embedded pairs, or
``--data``). No training: the attention is the whole model, so the error measures how well each
mechanism finds a matching patch far away. The cost of the attention call on the first pair
(peak memory, FLOPs, time, and the plugin's estimates) is recorded beside the quality.

Options: ``pairs`` (default 4), ``temperature`` (softmax temperature; default: the mechanism's
own, 1.0, as the paper), ``timing`` (default true), ``min_run_time``, ``time_budget_s``,
``memory_fraction`` (share of available memory a cell may be estimated to need).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..cells import CellSpec
from ..errors import UnsupportedRequest
from ..interface import dtype_from_name
from ..measure.call import AttentionCall, CallBudget
from ..options import ImageOptions, MeasureOptions
from ..tasks.costs import build, measure_attention
from ..tasks.data import task_pairs
from ..tasks.images import to_tensor
from ..tasks.pairs import square_pair
from ..tasks.examples import save_examples
from ..tasks.metrics import l2


@dataclass(frozen=True)
class ReconstructionOptions(MeasureOptions, ImageOptions):
    #: frame pairs averaged over (the paper: 30)
    pairs: int = 4
    #: softmax temperature; None: the mechanism's own (1.0, as the paper)
    temperature: Optional[float] = None
    #: time the attention call (besides its memory and FLOPs)
    timing: bool = True

    def images_needed(self) -> int:
        return self.pairs

    def measured(self) -> frozenset[str]:
        return frozenset({"memory", "flops", *(["time"] if self.timing else [])})


OPTIONS = ReconstructionOptions


def check_task_spec(spec: CellSpec, task: str) -> None:
    """The image tasks work on RGB frames and measure inference."""
    if spec.channels != 3:
        raise UnsupportedRequest(f"{task} works on RGB images: channels must be 3, got {spec.channels}")
    if spec.mode != "fwd":
        raise UnsupportedRequest(f"{task} measures inference (mode fwd); the memory suite measures fwd+bwd")


def mechanism_params(spec: CellSpec) -> dict[str, Any]:
    """The cell's mechanism parameters plus the suite's temperature, unless the spec sets one."""
    params = dict(spec.params)
    if "temperature" in spec.options and "temperature" not in params:
        params["temperature"] = float(spec.options["temperature"])
    return params


def run(spec: CellSpec) -> dict[str, Any]:
    check_task_spec(spec, "reconstruction")
    opts = ReconstructionOptions.of(spec)
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    module = build(spec.mechanism, spec.patch_size, mechanism_params(spec), spec.device)
    pairs = [square_pair(p, spec.size) for p in task_pairs(spec.options, opts.pairs, spec.seed, size=spec.size)]
    batches = [pairs[i : i + spec.batch] for i in range(0, len(pairs), spec.batch)]

    def tensors(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        a = to_tensor([p.a for p in batch]).to(device, dtype)
        b = to_tensor([p.b for p in batch]).to(device, dtype)
        return a, b

    a0, b0 = tensors(batches[0])
    budget = CallBudget.for_cell(spec, opts, opts.measured())
    _, metrics = measure_attention(AttentionCall(module, a0, b0, b0), budget)
    errors: list[float] = []
    for batch in batches:
        a, b = tensors(batch)
        with torch.no_grad():
            out = module(a, b, b).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        errors.extend(l2(o, p.a) for o, p in zip(out, batch))
        if batch is batches[0]:
            save_examples(spec, out[0], {"reference": batch[0].b, "target": batch[0].a})
    metrics["l2"] = float(np.mean(errors))
    metrics["l2_per_pair"] = [round(e, 6) for e in errors]
    metrics["pairs"] = [p.name for p in pairs]
    return metrics
