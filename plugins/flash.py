"""Exact dense attention at O(n) memory through fused kernels: the modern baseline the paper lacks.

Patches are unfolded into vectors (d = p^2 C) and handed to a flash-style kernel, which never
materialises the nq x nk matrix. The l2 similarity is made exact with one extra dimension:
with inputs centred on the key mean (l2 distances do not change, float32 cancellation does),
``q' = [q, -1/2]``, ``k' = [k, ||k||^2]`` and scale ``2/T`` give ``(2 q.k - ||k||^2) / T``,
which differs from ``-||q - k||^2 / T`` by a per-query constant that the softmax ignores.

``flash`` lets SDPA pick among its fused kernels (never the O(n^2) math one); ``sdpa-flash``,
``sdpa-efficient``, ``sdpa-cudnn`` and ``sdpa-math`` force one SDPA backend each, so a figure
names the kernel that produced it: where the forced backend cannot take the cell (a device it
does not exist on, a dtype or head width it refuses) the cell is ``unsupported`` with SDPA's
reason, never another kernel's measurement.
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

from attnbench.errors import Unsupported, UnsupportedRequest
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


def _align_for_cuda(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zero-pad the head dimension to the fused CUDA kernels' alignment (no dot product changes)."""
    width = tensors[0].shape[-1]
    padded = -(-width // _CUDA_HEAD_ALIGN) * _CUDA_HEAD_ALIGN
    return tensors if padded == width else tuple(F.pad(t, (0, padded - width)) for t in tensors)


def _fused_cuda_sdpa(q_aug: torch.Tensor, k_aug: torch.Tensor, v_pad: torch.Tensor, mask: Optional[torch.Tensor],
                     scale: float) -> torch.Tensor:
    """SDPA on CUDA, on (B, 1, n, D) inputs, restricted to the fused kernels (flash, memory-efficient).

    Left to itself, SDPA silently falls back to its math kernel, which materialises the nq x nk
    matrix (seen on an H200: 37.7 GB at 256 px for float32 patch vectors of width 785, where the
    fused kernel needs 0.8 GB): a "flash" figure measured that way would be Full's. Restricted,
    a problem no fused kernel takes is ``unsupported`` with why, never a mislabelled measurement.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q_aug, k_aug, v_pad = _align_for_cuda(q_aug, k_aug, v_pad)
    padded = q_aug.shape[-1]
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(q_aug, k_aug, v_pad, attn_mask=mask, scale=scale)
    except RuntimeError as exc:
        if "No available kernel" not in str(exc):
            raise
        raise Unsupported(
            f"flash: no fused SDPA kernel takes {q_aug.dtype} patch vectors of width {padded} on this GPU "
            "(the math fallback would be O(n^2) memory, i.e. Full)"
        ) from None


#: SDPA backends a name can force: suffix -> (torch.nn.attention.SDPBackend member, device types
#: it exists on). The CPU has its own flash kernel and the math one; efficient and cuDNN are CUDA's.
SDPA_BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "flash": ("FLASH_ATTENTION", ("cpu", "cuda")),
    "efficient": ("EFFICIENT_ATTENTION", ("cuda",)),
    "cudnn": ("CUDNN_ATTENTION", ("cuda",)),
    "math": ("MATH", ("cpu", "cuda")),
}
#: what torch raises when the allowed backends cannot take a call (CUDA's wording, the CPU's)
_NO_KERNEL = ("No available kernel", "No viable backend")


def forced_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                backend: str, who: str) -> torch.Tensor:
    """``scaled_dot_product_attention`` on 4-D inputs with exactly one backend allowed.

    Raises :class:`~attnbench.errors.Unsupported` (the cell's final answer) when that backend does
    not exist on the device or refuses the inputs, with SDPA's own reasons (the warnings it emits
    while refusing), so no other kernel can stand in for the one named.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member, devices = SDPA_BACKENDS[backend]
    device = q.device.type
    if device not in devices:
        raise Unsupported(f"{who}: SDPA's {backend} backend exists on {' and '.join(devices)} only, not {device}")
    if device == "cuda" and backend != "math":
        q, k, v = _align_for_cuda(q, k, v)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([getattr(SDPBackend, member)]):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        except RuntimeError as exc:
            if not any(text in str(exc) for text in _NO_KERNEL):
                raise
            reasons = [str(w.message).split(" (Triggered internally")[0] for w in caught]
            why = "; ".join(r for r in reasons if r and not r.rstrip().endswith("because:"))
            raise Unsupported(f"{who}: SDPA's {backend} backend does not take {str(q.dtype).replace('torch.', '')} "
                              f"inputs of head width {q.shape[-1]} on {device}" + (f": {why}"[:400] if why else ""))
    for w in caught:  # the call's other warnings still reach the caller
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


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
        out = self.sdpa(q_aug.unsqueeze(1), k_aug.unsqueeze(1), v_pad.unsqueeze(1), mask, scale)
        return fold_queries(out[:, 0, :, : v.shape[1]], (q.shape[2], q.shape[3]))

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
             scale: float) -> torch.Tensor:
        """The kernel call on (B, 1, n, D) inputs: SDPA's choice among its fused kernels."""
        if q.device.type == "cuda":
            return _fused_cuda_sdpa(q, k, v, mask, scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        return dense_kernel_estimate(shape, self.similarity)


class SDPABackendAttention(FlashAttention):
    """The same exact patch-vector attention with one SDPA backend forced (``sdpa-<backend>``).

    ``sdpa-flash`` (the CPU's flash kernel, or CUDA's: fp16/bf16, head width <= 256),
    ``sdpa-efficient`` (CUDA's memory-efficient kernel: what ``flash`` runs for float32 on a GPU),
    ``sdpa-cudnn`` (CUDA's cuDNN kernel) and ``sdpa-math`` (the O(n^2) reference kernel, the one a
    silent fallback would run); plain ``sdpa`` is ``sdpa-math``. A backend that cannot take the
    cell makes it ``unsupported`` with SDPA's reason (:func:`forced_sdpa`). Cost: as ``flash``
    for the fused backends; math adds the nq x nk scores and their softmax (and, for the backward,
    their gradient).
    """

    summary = "SDPA with one backend forced (sdpa-flash, -efficient, -cudnn, -math); unsupported where it cannot run"
    complexity = "O(n) memory (fused backends), O(n^2) (math); O(n^2) time"
    variants = tuple(f"sdpa-{name}" for name in SDPA_BACKENDS)

    def __init__(self, *, backend: str = "math", **base: Any):
        super().__init__(**base)
        if backend not in SDPA_BACKENDS:
            raise UnsupportedRequest(f"sdpa: backend must be one of {', '.join(SDPA_BACKENDS)}, got {backend!r}")
        #: the SDPA backend every call is forced onto (recorded as the cell's ``backend``)
        self.backend = backend

    @classmethod
    def parse_variant(cls, suffix: str) -> dict[str, Any]:
        if suffix in SDPA_BACKENDS:
            return {"backend": suffix}
        raise ValueError(suffix)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "backend": self.backend}

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
             scale: float) -> torch.Tensor:
        return forced_sdpa(q, k, v, mask, scale, self.backend, f"sdpa-{self.backend}")

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        fused = dense_kernel_estimate(shape, self.similarity)
        if self.backend != "math":
            return fused
        matrix = shape.batch * shape.n_queries * shape.n_valid_keys
        held = (3 if shape.backward else 2) * matrix  # scores, softmax (and their gradient)
        return CostEstimate(memory_bytes=int(fused.memory_bytes + held * shape.dtype_bytes), flops=fused.flops,
                            formula="O(n^2)", notes=f"{shape.n_queries} x {shape.n_valid_keys} scores held")


#: share of the matmul yardstick a fused kernel's forward + backward reaches, measured on CPU
#: (`speed --preset peers`, p = 5, C = 16): 22 % at 64 px, 21 % at 128 px of a median
#: yardstick, ~16 % of the best-of one; the forward alone reaches 75-82 % (no share stated)
BACKWARD_MATMUL_SHARE = 0.15


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
        matmul_share=BACKWARD_MATMUL_SHARE if shape.backward else None,
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
