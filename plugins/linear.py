"""Kernelised attention in O(n): Katharopoulos et al.'s linear attention and Shen et al.'s efficient attention.

Both replace softmax(q.k) by a product of feature maps so that keys and values are summarised
once (a d x Cv matrix) and never compared to every query; both only make sense with the dot
product, and neither has a temperature (the feature maps fix the scale), so l2 and T != 1 are
rejected rather than silently reinterpreted.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.patches import fold_queries, key_centre_values, key_patches, query_patches, usable_keys


class _KernelisedAttention(AttentionMechanism):
    """Shared checks of the feature-map mechanisms: dot product only, no temperature."""

    similarities = ("dot",)
    supports_mask = True

    def __init__(self, *, similarity: str = "dot", **base: Any):
        super().__init__(similarity=similarity, **base)
        if self.temperature != 1.0:
            raise UnsupportedRequest(f"{self.name or type(self).__name__}: no temperature in its formula; use temperature=1")


def elu_feature(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020, Eq. 7); the +1 is in place (elu's gradient reads its input)."""
    return F.elu(x).add_(1.0)


class LinearAttention(_KernelisedAttention):
    """Katharopoulos et al. 2020: out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j).

    Patch vectors (d = p^2 C) go through phi = elu + 1; masked keys are dropped from both sums;
    a query with no usable key gets 0. Cost (E bytes/element): forward peak ~ E B 2 max(nq, nk) d
    (patches and their features), forward+backward ~ E B 2 (nq + nk) d saved
    (patches and features) plus their gradients ~ E B (nq + nk) d. FLOPs (2 per multiply-add):
    2 B d (nk Cv + nq Cv + nq) forward, 3x with backward; O(n d Cv).
    """

    summary = "Linear attention (Katharopoulos et al. 2020): feature map elu(x)+1, O(n d Cv)"
    complexity = "O(n)"

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        p = self.patch_size
        phi_k = elu_feature(key_patches(k, p))
        usable = usable_keys(key_mask, p)
        if usable is not None:
            phi_k = phi_k * usable[..., None].to(phi_k.dtype)
        kv = torch.bmm(phi_k.transpose(1, 2), key_centre_values(v, p))  # (B, d, Cv)
        k_sum = phi_k.sum(dim=1).unsqueeze(-1)  # (B, d, 1)
        del phi_k
        phi_q = elu_feature(query_patches(q, p))
        numerator = torch.bmm(phi_q, kv)
        denominator = torch.bmm(phi_q, k_sum)
        out = numerator / denominator.clamp_min(torch.finfo(q.dtype).tiny)
        return fold_queries(out, (q.shape[2], q.shape[3]))

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        b, nq, nk, d, cv = shape.batch, shape.n_queries, shape.n_valid_keys, shape.patch_dim, shape.value_channels
        if shape.backward:
            elements = b * (3 * (nq + nk) * d + 3 * nq * cv)
            flops = 3 * 2 * b * d * (nk * cv + nq * cv + nq)
        else:
            elements = b * (2 * max(nq, nk) * d + 3 * nq * cv)
            flops = 2 * b * d * (nk * cv + nq * cv + nq)
        return CostEstimate(int(elements * shape.dtype_bytes), int(flops), "O(n d Cv)", "elu+1 features of the patch vectors")


class EfficientAttention(_KernelisedAttention):
    """Shen et al. 2021 "efficient attention" through linear-attention-transformer's ``linear_attn``.

    softmax over each query's features, softmax over keys for each feature, then
    softmax_n(k)^T v summarised once. The library reshapes its output to q's shape, so values are
    zero-padded to the patch width d and the first Cv channels kept; masked keys are passed as its
    ``kv_mask``. Cost: forward peak ~ E B (3 nk d + 2 nq d) (patches, softmaxes, padded values),
    forward+backward ~ E B (3 (nq + nk) d + 2 nq d); FLOPs 2 B d^2 (nk + nq) forward (d x d
    context because of the padding), 3x with backward.
    """

    summary = "Efficient attention (Shen et al. 2021) via linear-attention-transformer's linear_attn, O(n d^2)"
    complexity = "O(n)"

    @classmethod
    def availability(cls) -> Availability:
        return Availability.importable("linear_attention_transformer.linear_attention_transformer", "linear_attn", "linear-attention-transformer")

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        from linear_attention_transformer.linear_attention_transformer import linear_attn

        p = self.patch_size
        kp = key_patches(k, p)
        qp = query_patches(q, p)
        vals = key_centre_values(v, p)
        v_pad = F.pad(vals, (0, kp.shape[-1] - vals.shape[-1]))
        usable = usable_keys(key_mask, p)
        # linear_attn fills masked keys in place: give it a tensor of our own, never a view of k
        k_in = kp.unsqueeze(1) if usable is None else kp.unsqueeze(1).clone()
        out = linear_attn(qp.unsqueeze(1), k_in, v_pad.unsqueeze(1), kv_mask=usable)
        return fold_queries(out[:, 0, :, : v.shape[1]], (q.shape[2], q.shape[3]))

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        b, nq, nk, d = shape.batch, shape.n_queries, shape.n_valid_keys, shape.patch_dim
        if shape.backward:
            elements = b * (3 * (nq + nk) * d + 2 * nq * d)
            flops = 3 * 2 * b * d * d * (nk + nq)
        else:
            elements = b * (3 * nk * d + 3 * nq * d)
            flops = 2 * b * d * d * (nk + nq)
        return CostEstimate(int(elements * shape.dtype_bytes), int(flops), "O(n d^2)", "values padded to the patch width d")
