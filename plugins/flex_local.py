"""2D neighbourhood attention through PyTorch's FlexAttention, on patch vectors like ``flash``.

Why: FlexAttention is how PyTorch users write local attention today: a block-sparse mask
(``create_block_mask``) skips the key blocks outside every query's window, and ``torch.compile``
turns the call into one fused kernel (Triton on GPUs, Inductor's C++ template on CPUs). The
window rule is ``local``'s (a w x w window of key centres around the query, truncated at the
border, scaled to the key grid for cross-attention; a query whose window holds no usable key
returns 0); the inputs are ``flash``'s augmented patch vectors, so the scores are exact l2 / dot.
"""
from __future__ import annotations

import functools
import shutil
from typing import Any, Callable, Optional

import torch

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, Availability, CostEstimate, ProblemShape
from attnbench.patches import fold_queries, usable_keys, valid_key_grid

from .flash import dense_inputs

#: key/query block side of the block mask (FlexAttention's default)
BLOCK = 128
#: share of the matmul yardstick the compiled kernel reaches, measured on CPU (Inductor's C++ flex
#: template): 25 % at 64 and 24 % at 128 px (`speed --preset peers`), under 18 % at 512 px (a call
#: > 240 s for 10.9 TFLOP at 250 GFLOP/s); on a GPU a bound only, small beside its matmul rate
MATMUL_SHARE = 0.15


@functools.lru_cache(maxsize=1)
def flex_availability() -> Availability:
    return Availability.importable("torch.nn.attention.flex_attention", "flex_attention", "torch >= 2.5")


@functools.lru_cache(maxsize=1)
def can_compile() -> bool:
    """torch.compile of flex_attention needs dynamo and, on CPU, a C++ compiler for Inductor."""
    try:
        import torch._dynamo

        return bool(torch._dynamo.is_dynamo_supported()) and (shutil.which("c++") or shutil.which("g++")) is not None
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class FlexLocal(AttentionMechanism):
    """Neighbourhood attention (window ``window`` x ``window`` key centres) with a FlexAttention block mask.

    ``compile``: None (default, "auto") = compiled where the platform allows (see
    :func:`can_compile`) for maps of at least ``compile_min_queries`` queries (default 32 x 32;
    smaller ones run eager: compiling takes a minute per shape, eager costs little there), True =
    always compiled (or an error), False = eager (FlexAttention's reference path, which
    materialises the scores). ``compiled_for(n_queries)`` is the rule; ``last_compiled`` says
    which path the last call took.
    Cost: O(w^2 n d) compute in blocks of ``BLOCK`` queries x keys (the blocks touching a
    window), O(n d) memory: patch vectors and the block mask's O((n / BLOCK)^2) tables.
    """

    summary = "2D neighbourhood attention (w x w window) as a FlexAttention block mask, torch.compile'd"
    complexity = "O(w^2 n)"
    supports_mask = True
    #: FlexAttention has no backward on CPU (torch 2.13), compiled or not: forward-only here
    differentiable_wrt = ()

    def __init__(self, *, window: int = 50, compile: Optional[bool] = None, compile_min_queries: int = 1024, **base: Any):
        super().__init__(**base)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise UnsupportedRequest(f"flex-local: window must be a positive integer, got {window!r}")
        if compile not in (None, True, False):
            raise UnsupportedRequest(f"flex-local: compile must be true, false or left out, got {compile!r}")
        if compile and not can_compile():
            raise UnsupportedRequest("flex-local: torch.compile is not available here (dynamo or a C++ compiler missing)")
        if isinstance(compile_min_queries, bool) or not isinstance(compile_min_queries, int) or compile_min_queries < 0:
            raise UnsupportedRequest(f"flex-local: compile_min_queries must be an integer >= 0, got {compile_min_queries!r}")
        self.window = window
        self.compile = compile
        self.compile_min_queries = compile_min_queries
        #: whether the platform can compile (resolved once, here)
        self.can_compile = can_compile() if compile is None else compile
        #: whether the last call ran through torch.compile (None before the first call)
        self.last_compiled: Optional[bool] = None

    def compiled_for(self, n_queries: int) -> bool:
        """Whether a call with ``n_queries`` queries runs compiled."""
        if self.compile is not None:
            return self.compile
        return self.can_compile and n_queries >= self.compile_min_queries

    @classmethod
    def availability(cls) -> Availability:
        return flex_availability()

    def declared_backend(self, device: str) -> str:
        """``flex-compiled`` or ``flex-eager``: the path the last call took (``flex`` before any call)."""
        if self.last_compiled is None:
            return "flex"
        return "flex-compiled" if self.last_compiled else "flex-eager"

    def params(self) -> dict[str, Any]:
        return {**super().params(), "window": self.window, "compile": "auto" if self.compile is None else self.compile,
                "compile_min_queries": self.compile_min_queries, "platform_compiles": self.can_compile}

    def block_mask(self, batch: int, query_hw: tuple[int, int], key_hw: tuple[int, int],
                   usable: Optional[torch.Tensor], device: torch.device, compiled: bool):
        """The block mask of the window rule (and of the hole when ``usable`` (B, n_grid) is given)."""
        from torch.nn.attention.flex_attention import create_block_mask

        gh, gw = valid_key_grid(key_hw, self.patch_size)
        (hq, wq), (hk, wk), w, r = query_hw, key_hw, self.window, self.patch_size // 2

        def inside(b, h, q_idx, kv_idx):
            # local.window_bounds in integer arithmetic (a tensor lookup here trips Inductor's CPU codegen)
            qy, qx = q_idx // wq, q_idx % wq
            gy, gx = kv_idx // gw, kv_idx % gw
            ly = ((2 * qy + 1) * hk) // (2 * hq) - w // 2 - r
            lx = ((2 * qx + 1) * wk) // (2 * wq) - w // 2 - r
            return (gy >= ly) & (gy < ly + w) & (gx >= lx) & (gx < lx + w)

        mask_mod = inside
        if usable is not None:
            def mask_mod(b, h, q_idx, kv_idx):
                return inside(b, h, q_idx, kv_idx) & usable[b, kv_idx]

        nq, nk = query_hw[0] * query_hw[1], gh * gw
        return create_block_mask(mask_mod, batch if usable is not None else None, None, nq, nk, device=device,
                                 BLOCK_SIZE=BLOCK, _compile=compiled)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        q_aug, k_aug, v_pad, scale = dense_inputs(q, k, v, self.patch_size, self.similarity, self.temperature)
        usable = usable_keys(key_mask, self.patch_size)
        compiled = self.compiled_for(q.shape[2] * q.shape[3])
        mask = self.block_mask(q.shape[0], (q.shape[2], q.shape[3]), (k.shape[2], k.shape[3]), usable, q.device, compiled)
        attend = compiled_flex() if compiled else flex_attention
        self.last_compiled = compiled
        out = attend(q_aug.unsqueeze(1), k_aug.unsqueeze(1), v_pad.unsqueeze(1), block_mask=mask, scale=scale)
        return fold_queries(out[:, 0, :, : v.shape[1]], (q.shape[2], q.shape[3]))

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        """Patch vectors (flash's, width D) + the blocks a window touches: each query block of BLOCK
        queries (about BLOCK / Wq rows) meets the key blocks covering its rows' windows."""
        b, nq, cv = shape.batch, shape.n_queries, shape.value_channels
        gh, gw = valid_key_grid(shape.key_hw, shape.patch_size)
        nk = max(gh * gw, 1)
        width = shape.patch_dim + (1 if self.similarity == "l2" else 0)
        rows_per_block = max(1.0, BLOCK / max(shape.query_hw[1], 1))
        keys_touched = min(nk, (rows_per_block + min(self.window, gh)) * gw + BLOCK)  # key rows of the windows
        pairs = nq * keys_touched
        tables = 4 * (nq // BLOCK + 1) * (nk // BLOCK + 1) * 4
        if shape.backward:
            elements = b * (4 * nq * width + 4 * nk * width + 2 * nq * cv)
            flops = int(3.5 * 2 * b * pairs * 2 * width)
        else:
            elements = b * (2 * nq * width + 2 * nk * width + nq * cv)
            flops = 2 * b * pairs * 2 * width
        compiled = self.compiled_for(nq)
        eager_scores = 0 if compiled else b * nq * nk * (2 if shape.backward else 1)
        return CostEstimate(memory_bytes=int((elements + eager_scores) * shape.dtype_bytes + tables), flops=int(flops),
                            formula=self.complexity, matmul_share=MATMUL_SHARE,
                            notes=f"{'compiled' if compiled else 'eager (scores materialised)'}; blocks of {BLOCK}")
