"""Full attention: the paper's exact baseline, materialising the nq x nk patch-similarity matrix.

Its O(n^2) memory is the reason PSAL exists, so this implementation keeps no more copies of the
matrix than autograd needs (scores are formed and scaled in place), making its measured memory
the honest cost of the method rather than of a careless implementation.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, CostEstimate, ProblemShape
from attnbench.patches import fold_queries, query_patches, usable_keys, valid_key_grid


def strided_key_grid(key_hw: tuple[int, int], patch_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of the valid-key grid kept when subsampling it with ``stride``."""
    gh, gw = valid_key_grid(key_hw, patch_size)
    return -(-gh // stride), -(-gw // stride)


def strided_keys(
    k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor], patch_size: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Key patches (B, nk, d), centre values (B, nk, Cv) and usable flags (B, nk) on the strided grid.

    Keys are the valid centres ``r, r + stride, ...`` in both directions (stride 1 = all of them).
    """
    r = patch_size // 2
    kp = F.unfold(k, patch_size, stride=stride).transpose(1, 2)
    hk, wk = k.shape[2], k.shape[3]
    vals = v[:, :, r : hk - r : stride, r : wk - r : stride].flatten(2).transpose(1, 2)
    usable = None
    if key_mask is not None:
        gh, gw = valid_key_grid((hk, wk), patch_size)
        usable = usable_keys(key_mask, patch_size).view(-1, gh, gw)[:, ::stride, ::stride].reshape(k.shape[0], -1)
    return kp, vals, usable


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record this call (decides if in-place shortcuts are allowed)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def masked_softmax_attend(
    scores: torch.Tensor, vals: torch.Tensor, excluded: Optional[torch.Tensor], track_grad: bool
) -> torch.Tensor:
    """softmax over the last axis of ``scores`` (already divided by T), then weights @ ``vals``.

    Any leading batch dimensions are allowed (``torch.matmul`` semantics).

    ``excluded`` (broadcastable to scores, True = never attend) is filled with -inf. A query left
    with no key at all gets output 0 rather than NaN. Without autograd the softmax runs in place,
    so the similarity matrix exists once.
    """
    empty_rows = None
    if excluded is not None:
        scores.masked_fill_(excluded, float("-inf"))
        empty_rows = torch.isneginf(scores.amax(-1, keepdim=True))
        if bool(empty_rows.any()):
            scores.masked_fill_(empty_rows, 0.0)
        else:
            empty_rows = None
    if track_grad:
        weights = torch.softmax(scores, dim=-1)
    else:
        weights = scores.sub_(scores.amax(-1, keepdim=True)).exp_()
        weights.div_(weights.sum(-1, keepdim=True))
    del scores
    out = torch.matmul(weights, vals)
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out


def centre_on_keys(qp: torch.Tensor, kp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the mean key patch from queries and keys: l2 distances are unchanged, while
    2 q.k - ||q||^2 - ||k||^2 no longer cancels large numbers in float32."""
    centre = kp.mean(dim=1, keepdim=True)
    return qp - centre, kp - centre


def patch_scores(qp: torch.Tensor, kp: torch.Tensor, similarity: str, temperature: float) -> torch.Tensor:
    """(B, nq, d), (B, nk, d) -> scores / T (B, nq, nk), built in one buffer.

    ``l2`` is -||q - k||^2 = 2 q.k - ||q||^2 - ||k||^2 (one ``baddbmm`` and one in-place
    subtraction; centre the inputs first with :func:`centre_on_keys`), unlike :func:`attnbench.patches.similarity_matrix` which holds three matrices.
    """
    if similarity == "dot":
        scores = torch.bmm(qp, kp.transpose(1, 2))
    else:
        k_sq = torch.linalg.vector_norm(kp, dim=-1).square().unsqueeze(1)
        scores = torch.baddbmm(k_sq, qp, kp.transpose(1, 2), beta=-1.0, alpha=2.0)
        scores.sub_(torch.linalg.vector_norm(qp, dim=-1, keepdim=True).square())
    if temperature != 1.0:
        scores.mul_(1.0 / temperature)
    return scores


class FullAttention(AttentionMechanism):
    """Exact softmax attention over all valid key patches (optionally a strided subset).

    ``stride`` subsamples the valid-centre key grid by that step in both directions (the paper's
    remedy that lets Full fit at high resolution); ``stride=1`` uses every key.

    Cost, with nk the number of (strided) keys, d = p^2 C, S = B nq nk bytes-per-element:
    forward peak ~ S (scores, softmax done in place) + patch matrices P = B (nq + nk) d (or 2 P
    while l2 centres the patches, on small maps);
    forward+backward ~ max(3 S + P, S + 3 P) with P = B (nq + nk) d: either the saved weights,
    their gradient and the score gradient beside the saved patches, or (small maps) the patches
    and two gradients of them beside one matrix.
    FLOPs (matrix products, 2 per multiply-add): 2 B nq nk (d + Cv) forward, 3x that with backward.
    """

    summary = "Full attention: exact softmax over the whole nq x nk patch-similarity matrix (paper's Full)"
    complexity = "O(n^2)"
    supports_mask = True

    def __init__(self, *, stride: int = 1, **base: Any):
        super().__init__(**base)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise UnsupportedRequest(f"full: stride must be a positive integer, got {stride!r}")
        self.stride = stride

    @classmethod
    def exact_params(cls, shape: ProblemShape, usable_keys: int) -> Optional[dict[str, Any]]:
        return {"stride": 1}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "stride": self.stride}

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        qp = query_patches(q, self.patch_size)
        kp, vals, usable = strided_keys(k, v, key_mask, self.patch_size, self.stride)
        if self.similarity == "l2":
            qp, kp = centre_on_keys(qp, kp)
        scores = patch_scores(qp, kp, self.similarity, self.temperature)
        excluded = None if usable is None else ~usable[:, None, :]
        out = masked_softmax_attend(scores, vals, excluded, needs_grad(q, k, v))
        return fold_queries(out, (q.shape[2], q.shape[3]))

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        gh, gw = strided_key_grid(shape.key_hw, shape.patch_size, self.stride)
        nk, nq, d, cv, b = gh * gw, shape.n_queries, shape.patch_dim, shape.value_channels, shape.batch
        matrix = b * nq * nk
        patches = b * (nq + nk) * d
        small = b * (2 * nq * cv + nk * cv + 2 * nq + nk)
        if shape.backward:
            elements = max(3 * matrix + patches, matrix + 3 * patches) + 2 * small
            flops = 3 * 2 * b * nq * nk * (d + cv)
        else:
            centring = 2 * patches if self.similarity == "l2" else 0  # patches and their centred copies
            elements = max(matrix + patches, centring) + small
            flops = 2 * b * nq * nk * (d + cv)
        return CostEstimate(
            memory_bytes=int(elements * shape.dtype_bytes),
            flops=int(flops),
            formula="O(n^2)",
            notes=f"{nq} x {nk} similarity matrix" + (f" (key stride {self.stride})" if self.stride > 1 else ""),
        )
