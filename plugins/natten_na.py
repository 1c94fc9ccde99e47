"""NATTEN's 2D neighbourhood attention (``natten.na2d``) on patch vectors: the library users reach
for when they want local attention on images.

On a GPU NATTEN runs its fused CUDA kernels; on a CPU its Flex backend (FlexAttention with a
neighbourhood block mask), uncompiled: NATTEN 0.21 compiles Flex only for fp16/bf16, and its
uncompiled path materialises the scores (the estimate says so; large maps are infeasible).
NATTEN's Flex backend takes head dims that are powers of two in [8, 512]: the patch vectors are
zero-padded to the next power of two, and a patch dimension above 511 (e.g. p = 7, C = 16) is
refused with that reason.

How the shared rules map onto NATTEN, which knows only equal token grids and no masks:
* tokens live on one H x W grid (the larger of the query and key images); a query (y, x) sees the
  ``window`` x ``window`` tokens around (y, x) (NATTEN shifts windows inside the grid at the
  border, so every query sees a full window of positions);
* the token at key pixel (y, x) carries the key patch centred there; where that patch fails the
  border rule or touches the hole (or the pixel is outside the key image) the token is *invalid*:
  one extra dimension gives it a score of -1e20 (weight exactly 0) and its value is 0, so a query
  whose window holds no usable key returns 0, as in ``local``;
* scores are exact l2 / dot through augmented vectors, as ``flash`` builds them.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import Unsupported, UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.patches import key_patches, query_patches, usable_keys

#: the score of an invalid token (before the temperature): its softmax weight is exactly 0
INVALID_SCORE = 1e20
#: the widest head NATTEN's Flex backend takes
MAX_HEAD_DIM = 512
#: bytes per (query, token) pair on the CPU's uncompiled Flex path: the mask evaluated on every
#: pair, then the score, masked-score and softmax arrays; measured (allocator peak / n^2, p = 5,
#: C = 16): 33.0 at 32 x 32, 27.7 at 48, 26.5 at 64, 25.7 at 96
EAGER_BYTES_PER_PAIR = 26


@functools.lru_cache(maxsize=1)
def natten_availability() -> Availability:
    found = Availability.importable("natten", "na2d", "natten 0.21 (pip install attnbench[peers])")
    if not found.ok:
        return found
    import natten

    version = getattr(natten, "__version__", "")
    if not version.startswith("0.21"):
        return Availability(False, f"natten {version} installed; the plugin is written for 0.21.x")
    return found


class NattenAttention(AttentionMechanism):
    """2D neighbourhood attention (``natten.na2d``), window ``window`` x ``window`` (odd, clipped to the map).

    Cost: O(w^2 n d) compute; memory O(n d) with NATTEN's fused kernels (CUDA), O(n^2) on the
    CPU's uncompiled Flex path. float32 only (NATTEN's Flex backend: fp32/fp16/bf16); forward
    only (no Flex backward on CPU).
    """

    summary = "NATTEN 2D neighbourhood attention (na2d) on patch vectors, Flex backend on CPU"
    complexity = "O(w^2 n)"
    supports_mask = True

    dtypes = (torch.float32,)
    #: FlexAttention (NATTEN's CPU backend) has no backward on CPU; forward-only here
    differentiable_wrt = ()

    def __init__(self, *, window: int = 49, **base: Any):
        super().__init__(**base)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise UnsupportedRequest(f"natten: window must be a positive odd integer, got {window!r}")
        self.window = window

    @classmethod
    def availability(cls) -> Availability:
        return natten_availability()

    def declared_backend(self, device: str) -> str:
        """CPU: NATTEN's Flex backend, uncompiled (``flex-fna``, asked for by name); GPU: the fused
        kernel NATTEN picks for the card (its own choice, not asked for)."""
        return "natten-flex-fna-eager" if not device.startswith("cuda") else "natten-cuda-auto"

    def params(self) -> dict[str, Any]:
        return {**super().params(), "window": self.window}

    def head_dim(self, channels: int) -> int:
        """Token width: p^2 C + 1 rounded up to a power of two >= 8 (NATTEN's Flex backend)."""
        return max(8, 1 << (self.patch_size**2 * channels).bit_length())

    def tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor]):
        """(q', k', v') token grids (B, H, W, 1, D) and the scale (see the module docstring)."""
        p, r = self.patch_size, self.patch_size // 2
        B, _, hq, wq = q.shape
        hk, wk = k.shape[2], k.shape[3]
        H, W = max(hq, hk), max(wq, wk)
        qp = query_patches(q, p)  # (B, nq, d)
        kp = key_patches(k, p)  # (B, n_grid, d)
        usable = usable_keys(key_mask, p)
        if self.similarity == "l2":
            centre = kp.mean(dim=1, keepdim=True)  # float32 cancellation, as flash
            kp = kp - centre
            qp = qp - centre
            q_aug = F.pad(qp, (0, 1), value=-0.5)
            k_last = torch.linalg.vector_norm(kp, dim=-1, keepdim=True).square()
            scale = 2.0 / self.temperature
            invalid_last = 2.0 * INVALID_SCORE
        else:
            q_aug = F.pad(qp, (0, 1), value=1.0)
            k_last = torch.zeros_like(kp[..., :1])
            scale = 1.0 / self.temperature
            invalid_last = -INVALID_SCORE
        D = self.head_dim(q.shape[1])
        if D > MAX_HEAD_DIM:  # the cell's shape, not the user's request: a final `unsupported`
            raise Unsupported(f"natten: NATTEN's Flex backend takes head dims <= {MAX_HEAD_DIM}; patch vectors of "
                              f"p^2 C + 1 = {kp.shape[-1] + 1} need {D}")
        k_aug = F.pad(torch.cat([kp, k_last], -1), (0, D - kp.shape[-1] - 1))
        q_aug = F.pad(q_aug, (0, D - q_aug.shape[-1]))
        gh, gw = hk - 2 * r, wk - 2 * r
        vals = v[:, :, r : hk - r, r : wk - r].flatten(2).transpose(1, 2)  # (B, n_grid, Cv)
        invalid = torch.zeros(D, dtype=k_aug.dtype, device=k_aug.device)
        invalid[kp.shape[-1]] = invalid_last
        if usable is not None:
            keep = usable[..., None]
            k_aug = torch.where(keep, k_aug, invalid)
            vals = torch.where(keep, vals, torch.zeros_like(vals))
        v_pad = F.pad(vals, (0, D - vals.shape[-1]))
        # place the valid grid at key pixels (r.., r..) of an H x W grid of invalid tokens
        k_grid = invalid.expand(B, H, W, D).clone()
        k_grid[:, r : r + gh, r : r + gw] = k_aug.view(B, gh, gw, D)
        v_grid = v_pad.new_zeros(B, H, W, D)
        v_grid[:, r : r + gh, r : r + gw] = v_pad.view(B, gh, gw, D)
        q_grid = F.pad(q_aug.view(B, hq, wq, D), (0, 0, 0, W - wq, 0, H - hq))
        return q_grid[:, :, :, None], k_grid[:, :, :, None], v_grid[:, :, :, None], scale

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        import natten

        q_t, k_t, v_t, scale = self.tokens(q, k, v, key_mask)
        H, W = q_t.shape[1], q_t.shape[2]
        window = min(self.window, H - (1 - H % 2), W - (1 - W % 2))  # odd, inside the grid
        backend = "flex-fna" if q.device.type == "cpu" else None
        out = natten.na2d(q_t, k_t, v_t, kernel_size=window, scale=scale, backend=backend)
        hq, wq = q.shape[2], q.shape[3]
        return out[:, :hq, :wq, 0, : v.shape[1]].permute(0, 3, 1, 2).contiguous()

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        """Patch vectors (queries, keys, augmented and gridded copies), values and output on the token
        grid, and the CPU path's per-pair arrays (``EAGER_BYTES_PER_PAIR``)."""
        b, nq, cv = shape.batch, shape.n_queries, shape.value_channels
        H, W = max(shape.query_hw[0], shape.key_hw[0]), max(shape.query_hw[1], shape.key_hw[1])
        n = H * W
        D = self.head_dim(shape.channels)
        w = min(self.window, H, W)
        elements = b * (2 * nq * D + 3 * shape.n_valid_keys * D + 4 * n * D)
        flops = 2 * b * n * w * w * 2 * D
        if shape.backward:
            elements += b * 4 * n * D
            flops = int(3.5 * flops)
        eager = b * n * n * EAGER_BYTES_PER_PAIR * (2 if shape.backward else 1)  # the CPU Flex path (no fused kernel)
        return CostEstimate(memory_bytes=int(elements * shape.dtype_bytes + eager), flops=int(flops), formula=self.complexity,
                            notes=f"{H} x {W} token grid, window {w}, width {D}")
