"""Performer (Choromanski et al. 2021) through performer-pytorch's ``FastAttention``.

Approximates softmax(q.k / T) with M positive random features (FAVOR+), the paper's Performer
baseline with M = d log d. The random projection is drawn from ``seed`` in a forked RNG, so
two instances with one seed agree exactly and the global RNG state is left alone.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.patches import fold_queries, key_centre_values, key_patches, query_patches, usable_keys


def default_features(d: int) -> int:
    """M = d log d (natural log), performer-pytorch's and the PSAL paper's default."""
    return int(d * math.log(d))


class PerformerAttention(AttentionMechanism):
    """FAVOR+ softmax-kernel attention over patch vectors (d = p^2 C), dot product only.

    ``nb_features`` (M, default d log d) random features; the projection (M x d) is drawn on
    first use for each d under ``seed`` (CPU generator, then moved), independent of global RNG.
    The library's kernel approximates exp(q.k / sqrt(d)); inputs are scaled by (sqrt(d)/T)^(1/2)
    so that it approximates exp(q.k / T). Cross-attention and batches work as the library does
    ((B, 1, n, d) tensors). A key mask is honoured by dropping the masked keys of each batch
    element (one library call per element). Cost (E bytes/element): the query and key features
    are n x M each, built through same-sized temporaries: forward ~ E [2 B (nq + nk) M + 4 M d]
    (the last term: the projection, drawn on first use), forward+backward ~ E [3 B (nq + nk) M
    + 4 M d]; FLOPs 2 B M d (nq + nk) to project (2x with backward: no gradient for the
    projection) + 2 B M (Cv + 1) (nq + nk) for the linear attention (3x with backward); O(n M d).
    """

    summary = "Performer (FAVOR+ random features, performer-pytorch FastAttention), M = d log d"
    complexity = "O(n M d)"
    similarities = ("dot",)
    supports_mask = True

    def __init__(self, *, similarity: str = "dot", nb_features: Optional[int] = None, seed: int = 0, **base: Any):
        super().__init__(similarity=similarity, **base)
        if nb_features is not None and (not isinstance(nb_features, int) or nb_features < 1):
            raise UnsupportedRequest(f"performer: nb_features must be a positive integer, got {nb_features!r}")
        if not isinstance(seed, int):
            raise UnsupportedRequest(f"performer: seed must be an integer, got {seed!r}")
        self.nb_features = nb_features
        self.seed = seed
        self._kernels: dict[int, torch.nn.Module] = {}

    @classmethod
    def availability(cls) -> Availability:
        return Availability.importable("performer_pytorch", "FastAttention", "performer-pytorch")

    def params(self) -> dict[str, Any]:
        return {**super().params(), "nb_features": self.nb_features, "seed": self.seed}

    def features(self, d: int) -> int:
        return self.nb_features or default_features(d)

    def kernel(self, d: int, device: torch.device) -> torch.nn.Module:
        """The FastAttention for patch width d, its projection drawn from ``seed`` in a forked RNG."""
        if d not in self._kernels:
            from performer_pytorch import FastAttention

            cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed)
                self._kernels[d] = FastAttention(dim_heads=d, nb_features=self.features(d))
        return self._kernels[d].to(device)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        p = self.patch_size
        qp, kp, vals = query_patches(q, p), key_patches(k, p), key_centre_values(v, p)
        d = qp.shape[-1]
        fast = self.kernel(d, q.device)
        scale = (math.sqrt(d) / self.temperature) ** 0.5
        qs, ks = (qp * scale).unsqueeze(1), (kp * scale).unsqueeze(1)
        usable = usable_keys(key_mask, p)
        if usable is None:
            out = fast(qs, ks, vals.unsqueeze(1))[:, 0]
        else:
            rows = []
            for i in range(q.shape[0]):
                keep = usable[i]
                if not bool(keep.any()):
                    rows.append(qp.new_zeros(qp.shape[1], vals.shape[-1]))
                    continue
                rows.append(fast(qs[i : i + 1], ks[i : i + 1, :, keep], vals[i : i + 1, keep].unsqueeze(1))[0, 0])
            out = torch.stack(rows)
        return fold_queries(out, (q.shape[2], q.shape[3]))

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        b, nq, nk, d, cv = shape.batch, shape.n_queries, shape.n_valid_keys, shape.patch_dim, shape.value_channels
        m = self.features(d)
        projection = 4 * m * d  # drawn on first use: QR blocks, the matrix, its batch copy
        features = 2 * b * m * d * (nq + nk)  # projecting patches (no gradient for the projection)
        linear = 2 * b * m * (cv + 1) * (nq + nk)
        if shape.backward:
            elements = b * 3 * (nq + nk) * m + projection
            flops = 2 * features + 3 * linear
        else:
            elements = b * 2 * (nq + nk) * m + projection
            flops = features + linear
        return CostEstimate(int(elements * shape.dtype_bytes), int(flops), "O(n M d)", f"M = {m} random features")
