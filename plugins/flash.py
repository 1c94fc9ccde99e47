"""Exact dense attention at O(n) memory through fused kernels: the modern baseline the paper lacks.

Patches are unfolded into vectors (d = p^2 C) and handed to a flash-style kernel, which never
materialises the nq x nk matrix. The l2 similarity is made exact with one extra dimension:
with inputs centred on the key mean (l2 distances do not change, float32 cancellation does),
``q' = [q, -1/2]``, ``k' = [k, ||k||^2]`` and scale ``2/T`` give ``(2 q.k - ||k||^2) / T``,
which differs from ``-||q - k||^2 / T`` by a per-query constant that the softmax ignores.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.patches import fold_queries, key_centre_values, key_patches, query_patches, usable_keys


def dense_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch_size: int, similarity: str, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Patch vectors ready for a fused kernel: q' (B, nq, D), k' (B, nk, D), v' (B, nk, D), scale.

    D = d + 1 for l2 (the augmented dimension), d for dot; v' is the key-centre value padded with
    zeros to D because the CPU flash kernel needs equal head dims (it falls back to the O(n^2)
    math path otherwise).
    """
    qp = query_patches(q, patch_size)
    kp = key_patches(k, patch_size)
    if similarity == "l2":
        centre = kp.mean(dim=1, keepdim=True)
        kc = kp - centre
        del kp
        k_aug = torch.cat([kc, torch.linalg.vector_norm(kc, dim=-1, keepdim=True).square()], dim=-1)
        del kc
        q_aug = F.pad(qp - centre, (0, 1), value=-0.5)
        scale = 2.0 / temperature
    else:
        q_aug, k_aug = qp.contiguous(), kp.contiguous()
        scale = 1.0 / temperature
    del qp
    vals = key_centre_values(v, patch_size)
    v_pad = F.pad(vals, (0, k_aug.shape[-1] - vals.shape[-1]))
    return q_aug, k_aug, v_pad, scale


#: CUDA's fused SDPA kernels need the head dimension aligned (the memory-efficient kernel takes
#: float32 at a multiple of 8); zero columns change no dot product
_CUDA_HEAD_ALIGN = 8


def _fused_cuda_sdpa(q_aug: torch.Tensor, k_aug: torch.Tensor, v_pad: torch.Tensor, mask: Optional[torch.Tensor],
                     scale: float) -> torch.Tensor:
    """SDPA on CUDA restricted to the fused kernels (flash, memory-efficient).

    Left to itself, SDPA silently falls back to its math kernel, which materialises the nq x nk
    matrix (seen on an H200: 37.7 GB at 256 px for float32 patch vectors of width 785, where the
    fused kernel needs 0.8 GB): a "flash" figure measured that way would be Full's. Restricted,
    a problem no fused kernel takes is an error that says why, never a mislabelled measurement.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    width = q_aug.shape[-1]
    padded = -(-width // _CUDA_HEAD_ALIGN) * _CUDA_HEAD_ALIGN
    if padded != width:
        q_aug, k_aug, v_pad = (F.pad(t, (0, padded - width)) for t in (q_aug, k_aug, v_pad))
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(
                q_aug.unsqueeze(1), k_aug.unsqueeze(1), v_pad.unsqueeze(1), attn_mask=mask, scale=scale
            )
    except RuntimeError as exc:
        if "No available kernel" not in str(exc):
            raise
        raise UnsupportedRequest(
            f"flash: no fused SDPA kernel takes {q_aug.dtype} patch vectors of width {padded} on this GPU "
            "(the math fallback would be O(n^2) memory, i.e. Full)"
        ) from None


class FlashAttention(AttentionMechanism):
    """Exact softmax attention over patch vectors with ``torch.nn.functional.scaled_dot_product_attention``.

    Inputs are 4-D ``(B, 1, n, D)`` so that PyTorch picks its flash kernel (on CPU and GPU); a
    key mask is passed as a broadcast boolean ``(B, 1, 1, nk)`` mask, which the CPU flash kernel
    takes without materialising an nq x nk tensor, and a query with no usable key gets 0.

    Cost (D = d + 1 for l2, d for dot; E = bytes per element): forward peak ~ the augmented
    query and key copies being built, then q', k', v', output: ~ E B (2 nq D + 2 nk D + nq Cv)
    plus the kernel's per-thread blocks; forward+backward adds the gradients of q', k', v' and
    the output (and, for l2, the centred keys kept for the norm's gradient):
    ~ E B (4 nq D + 4 nk D [+ nk d]). FLOPs (SDPA convention, 2 per multiply-add):
    2 B nq nk (D + D) forward, 2.5x that more for the backward (FlopCounterMode's SDPA formula).
    """

    summary = "Flash attention (SDPA fused kernel): exact softmax over patch vectors at O(n) memory"
    complexity = "O(n) memory, O(n^2) time"
    supports_mask = True

    @classmethod
    def exact_params(cls, shape: ProblemShape, usable_keys: int) -> Optional[dict[str, Any]]:
        return {}

    def declared_backend(self, device: str) -> str:
        """CPU: SDPA's flash kernel (equal head dims make SDPA pick it); CUDA: either fused kernel
        (:func:`_fused_cuda_sdpa`). The profiled call's SDPA op is checked against it."""
        return "sdpa-fused" if device.startswith("cuda") else "sdpa-flash"

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        q_aug, k_aug, v_pad, scale = dense_inputs(q, k, v, self.patch_size, self.similarity, self.temperature)
        mask = None
        if key_mask is not None:
            mask = usable_keys(key_mask, self.patch_size)[:, None, None, :]
        if q.device.type == "cuda":
            out = _fused_cuda_sdpa(q_aug, k_aug, v_pad, mask, scale)
        else:
            out = F.scaled_dot_product_attention(
                q_aug.unsqueeze(1), k_aug.unsqueeze(1), v_pad.unsqueeze(1), attn_mask=mask, scale=scale
            )
        return fold_queries(out[:, 0, :, : v.shape[1]], (q.shape[2], q.shape[3]))

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        return dense_kernel_estimate(shape, self.similarity)


def dense_kernel_estimate(shape: ProblemShape, similarity: str) -> CostEstimate:
    """Peak memory and FLOPs of a fused exact-attention kernel over patch vectors (see FlashAttention)."""
    b, nq, nk, cv = shape.batch, shape.n_queries, shape.n_valid_keys, shape.value_channels
    width = shape.patch_dim + (1 if similarity == "l2" else 0)
    kernel_blocks = 3 * 256 * width  # the kernel's query/key blocks and scratch, independent of n
    if shape.backward:
        saved_norm_input = nk * shape.patch_dim if similarity == "l2" else 0
        elements = b * (4 * nq * width + 4 * nk * width + saved_norm_input + 2 * nq * cv) + kernel_blocks
        flops = int(3.5 * 2 * b * nq * nk * 2 * width)
    else:
        elements = b * (2 * nq * width + 2 * nk * width + nq * cv) + kernel_blocks
        flops = 2 * b * nq * nk * 2 * width
    return CostEstimate(
        memory_bytes=int(elements * shape.dtype_bytes),
        flops=int(flops),
        formula="O(n d)",
        notes=f"patch vectors of width {width}; no {nq} x {nk} matrix is stored",
    )


@functools.lru_cache(maxsize=1)
def xformers_availability() -> Availability:
    """Try one tiny ``memory_efficient_attention`` call, with xformers' long messages captured."""
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    logger = logging.getLogger("xformers")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import xformers.ops as xops
            except Exception as exc:  # missing or broken install
                return Availability(False, f"xformers cannot be imported: {type(exc).__name__}: {exc}".splitlines()[0])
            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.float16 if device == "cuda" else torch.float32
            tiny = torch.zeros(1, 8, 1, 8, device=device, dtype=dtype)
            try:
                xops.memory_efficient_attention(tiny, tiny, tiny)
            except Exception as exc:
                return Availability(False, xformers_failure_reason(exc, captured.getvalue(), device))
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    return Availability(True)


def xformers_failure_reason(exc: Exception, log: str, device: str) -> str:
    """One short line from xformers' multi-line error and load log: why it cannot run here."""
    built_for = [line.strip() for line in log.splitlines() if line.strip().startswith("PyTorch ")]
    if "can't load C++" in log:
        return "xformers C++/CUDA ops do not load" + (f": built for {built_for[0]}" if built_for else "")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(": ")
    return f"xformers memory_efficient_attention fails on {device}: {first}"


class XFormersAttention(FlashAttention):
    """The same exact patch-vector attention through ``xformers.ops.memory_efficient_attention``.

    xformers takes ``(B, n, heads, D)``; one head. Reported unavailable (with xformers' own
    reason) wherever its operators do not load, e.g. a wheel built for another torch; no key mask
    (a dense ``(B, 1, nq, nk)`` bias would defeat the point).
    """

    summary = "Flash attention through xformers.ops.memory_efficient_attention (exact, O(n) memory)"
    supports_mask = False
    dtypes = (torch.float16, torch.bfloat16, torch.float32)

    @classmethod
    def availability(cls) -> Availability:
        return xformers_availability()

    def declared_backend(self, device: str) -> str:
        return "xformers"

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        import xformers.ops as xops

        q_aug, k_aug, v_pad, scale = dense_inputs(q, k, v, self.patch_size, self.similarity, self.temperature)
        out = xops.memory_efficient_attention(q_aug[:, :, None], k_aug[:, :, None], v_pad[:, :, None], scale=scale)
        return fold_queries(out[:, :, 0, : v.shape[1]], (q.shape[2], q.shape[3]))
