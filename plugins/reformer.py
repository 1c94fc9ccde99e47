"""Reformer (Kitaev et al. 2020) through reformer-pytorch's ``LSHAttention``: hashing instead of all pairs.

Vectors are hashed with random rotations, sorted by bucket, and attend only within their chunk
and the previous one. The library is shared-QK: one sequence serves as queries and keys.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.patches import fold_queries, key_centre_values, key_patches, query_patches, usable_keys


def rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG state a seeded call must save and restore."""
    return [device.index or 0] if device.type == "cuda" else []


class ReformerAttention(AttentionMechanism):
    """LSH attention over patch vectors (d = p^2 C), dot product only.

    Cross-attention is done as reformer-pytorch does it (``LSHSelfAttention`` with ``keys``):
    query and key patch vectors are concatenated into one sequence of nq + nk vectors and
    ``query_len = nq`` keeps the query outputs. The sequence is zero-padded to a multiple of
    2 x ``bucket_size`` (padding excluded through ``input_mask``, like masked keys). The library
    needs v as wide as qk, so values are zero-padded to d. Consequences, documented rather than
    hidden: queries also act as keys (their value is 0, so attending to a similar query pulls the
    output towards 0), keys are unit-normalised by the library (scores are q.k / (|k| T)), and a
    bucket may hold no key at all (then the query attends to other queries or, failing that, to
    itself). Random rotations are drawn from ``seed`` in a forked RNG on every call, so the layer
    is deterministic and two instances with one seed agree.

    Cost with L = nq + nk padded, h = ``n_hashes``, c = ``bucket_size``, E bytes/element: the
    sorted, normalised and look-one-back copies of the d-wide qk and v vectors for every hash
    round (~ 9 h L d, measured) plus chunk scores h L 2c: forward ~ E B h L (9 d + 2 c);
    backward adds ~ E B 3 L d. FLOPs 2 B h L 2c (2 d) for scores and weighted sums (3x with
    backward) + 2 B L d h L/(2c) for the rotations (2x).
    """

    summary = "Reformer LSH attention (reformer-pytorch LSHAttention, shared-QK, cross-attention via query_len)"
    complexity = "O(n log n)"
    similarities = ("dot",)
    supports_mask = True

    def __init__(
        self, *, similarity: str = "dot", bucket_size: int = 64, n_hashes: int = 8, seed: int = 0, **base: Any
    ):
        super().__init__(similarity=similarity, **base)
        for name, value in (("bucket_size", bucket_size), ("n_hashes", n_hashes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UnsupportedRequest(f"reformer: {name} must be a positive integer, got {value!r}")
        if not isinstance(seed, int):
            raise UnsupportedRequest(f"reformer: seed must be an integer, got {seed!r}")
        self.bucket_size = bucket_size
        self.n_hashes = n_hashes
        self.seed = seed

    @classmethod
    def availability(cls) -> Availability:
        return Availability.importable("reformer_pytorch", "LSHAttention", "reformer-pytorch")

    def params(self) -> dict[str, Any]:
        return {**super().params(), "bucket_size": self.bucket_size, "n_hashes": self.n_hashes, "seed": self.seed}

    def padded_length(self, n: int) -> int:
        """nq + nk rounded up to the library's multiple of 2 x bucket_size."""
        step = 2 * self.bucket_size
        return -(-n // step) * step

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        from reformer_pytorch import LSHAttention

        p = self.patch_size
        qp, kp, vals = query_patches(q, p), key_patches(k, p), key_centre_values(v, p)
        b, nq, d = qp.shape
        nk = kp.shape[1]
        length = self.padded_length(nq + nk)
        # The library normalises keys (so scaling the shared sequence only scales queries) and
        # multiplies scores by d^-1/2: a factor sqrt(d)/T gives scores q.k / (|k| T).
        qk = F.pad(torch.cat([qp, kp], dim=1) * (math.sqrt(d) / self.temperature), (0, 0, 0, length - nq - nk))
        values = F.pad(vals, (0, d - vals.shape[-1], nq, length - nq - nk))
        present = torch.zeros(b, length, dtype=torch.bool, device=q.device)
        present[:, : nq + nk] = True
        usable = usable_keys(key_mask, p)
        if usable is not None:
            present[:, nq : nq + nk] = usable
        lsh = LSHAttention(bucket_size=self.bucket_size, n_hashes=self.n_hashes, causal=False)
        with torch.random.fork_rng(devices=rng_devices(q.device)):
            torch.manual_seed(self.seed)
            out, _, _ = lsh(qk, values, query_len=nq, input_mask=present)
        return fold_queries(out[:, :, : v.shape[1]], (q.shape[2], q.shape[3]))

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        b, d = shape.batch, shape.patch_dim
        length = self.padded_length(shape.n_queries + shape.n_valid_keys)
        h, c = self.n_hashes, self.bucket_size
        forward = b * h * length * (9 * d + 2 * c)
        attention = 2 * b * h * length * 2 * c * 2 * d
        rotations = 2 * b * length * d * h * (length // c // 2)
        if shape.backward:
            memory, flops = forward + 3 * b * length * d, 3 * attention + 2 * rotations
        else:
            memory, flops = forward, attention + rotations
        return CostEstimate(int(memory * shape.dtype_bytes), int(flops), "O(n log n)", f"sequence of {length}, {h} hashes")
