"""An example third-party attnbench plugin: uniform (mean) attention over the usable keys."""
from __future__ import annotations

from typing import Optional

import torch

from attnbench import AttentionMechanism, CostEstimate, ProblemShape
from attnbench.patches import key_centre_values, usable_keys

__version__ = "0.1.0"


class MeanAttention(AttentionMechanism):
    """Every query gets the mean value at the usable key centres (softmax with T -> infinity).

    A floor for quality suites. Similarities are accepted for interface compatibility but do not
    change the result (all scores are divided by an infinite temperature). Keys follow
    attnbench's border rule (only centres whose whole patch is inside the key image) and the
    ``key_mask`` rule (keys whose patch touches the hole are dropped); with no usable key the
    output is 0. Memory: the (B, nk, Cv) centre values and the (B, Cv, Hq, Wq) output; FLOPs:
    one sum over keys per value channel (B nk Cv) and nothing per query.
    """

    summary = "Uniform attention: the mean value over usable keys (example third-party plugin)"
    complexity = "O(n)"
    differentiable_wrt = ("v",)
    supports_mask = True

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        vals = key_centre_values(v, self.patch_size)  # (B, nk, Cv)
        usable = usable_keys(key_mask, self.patch_size)
        if usable is None:
            mean = vals.mean(dim=1)
        else:
            weights = usable.to(vals.dtype).unsqueeze(-1)
            mean = (vals * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return mean[:, :, None, None].expand(-1, -1, q.shape[2], q.shape[3]).contiguous()

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        b, cv = shape.batch, shape.value_channels
        elements = b * shape.n_valid_keys * cv + b * cv * shape.n_queries + 2 * b * cv
        if shape.backward:
            elements += b * cv * shape.n_queries + b * cv * shape.key_hw[0] * shape.key_hw[1]
        return CostEstimate(
            memory_bytes=int(elements * shape.dtype_bytes),
            flops=int(b * shape.n_valid_keys * cv * (2 if shape.backward else 1)),
            formula="O(n)",
            notes="mean of the key-centre values",
        )
