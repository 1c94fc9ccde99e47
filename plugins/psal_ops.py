"""PSAL as ``torch.library`` custom ops (namespace ``attnbench``), with autograd, fake and FLOPs.

One op, several kernels: the default implementation runs the native CPU kernel when the
extension is loaded (else the pure-PyTorch reference, on any device); when the extension was
built with CUDA, :func:`prepare` registers its ``*_cuda`` functions as the ops' "cuda" kernels.
The backend is resolved once per layer (:func:`prepare`, which reads ATTNBENCH_PSAL_BACKEND);
the layer passes it on: ``use_reference`` of the search op, ``backend`` of
:func:`matched_attention`. Constants and FLOP formulas come from :mod:`.psal_contract`.

Ops (semantics in native/psal.h):
  psal_search(q, k, valid, patch_size, k_nn, iterations, dot, seed, schedule=0, use_reference=False,
              init=None, reach=0, max_jump=8) -> (idx, n_evals)
  psal_similarity(q, k, idx, patch_size, dot) -> S                       (autograd: q, k)
  psal_attend(S, idx, v, patch_size, aggregation, temperature) -> (out, lse)  (autograd: S, v)
and their backward ops. ``FlopCounterMode`` counts the search by the evaluations the kernel
reports making (2 p^2 C FLOPs each), and the other ops by their exact multiply-add counts.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import psal_build
from . import psal_contract as contract
from . import psal_reference as reference
from .psal_contract import FLOPS_PER_ELEMENT  # noqa: F401  (re-exported)
from .psal_cost import search_flops_estimate  # noqa: F401  (re-exported: the FLOPs of a search on shapes)

NAMESPACE = "attnbench"
_EMPTY = (0,)


def _kernel(name: str, device_type: str) -> Optional[Callable[..., Any]]:
    """The native function for ``name`` on ``device_type`` (None: no native kernel, use the reference).

    No backend choice here: the layer made it once (:func:`prepare`) and routes to the reference
    itself when it resolved to it."""
    module = psal_build.native_module()
    return getattr(module, f"{name}_{device_type}", None) if module is not None else None


def _opt(t: Optional[Tensor], like: Tensor) -> Tensor:
    """custom ops return tensors only: an empty tensor stands for 'not requested'."""
    return t if t is not None else like.new_empty(_EMPTY)


# ------------------------------------------------------------------------------------ search
@torch.library.custom_op(f"{NAMESPACE}::psal_search", mutates_args=())
def psal_search(
    q: Tensor,
    k: Tensor,
    valid: Tensor,
    patch_size: int,
    k_nn: int,
    iterations: int,
    dot: bool,
    seed: int,
    schedule: int = contract.SCHEDULE_DEFAULT,
    use_reference: bool = False,
    init: Optional[Tensor] = None,
    reach: int = contract.REACH_UNLIMITED,
    max_jump: int = contract.MAX_JUMP_DEFAULT,
) -> tuple[Tensor, Tensor]:
    """PatchMatch k-NN search: (idx (B, Hq, Wq, K) int64 key-centre indices, n_evals (B,) int64).

    ``schedule``: 0 = jacobi, 1 = wavefront (psal.h PSAL_SCHEDULE_*, contract.SCHEDULES);
    ``use_reference``: run the pure-PyTorch reference even where a native kernel exists;
    ``init``: an initial field (B, Hq, Wq, K0) int32/int64 whose entries the search starts from
    (psal.h "it = 0"; negative = none); None = the random initialisation alone;
    ``reach``, ``max_jump``: psal.h's reach limits (the random search's largest radius, 0 = none;
    the largest jump-flooding step), for a search started from a good field."""
    fn = None if use_reference else _kernel("psal_search", q.device.type)
    if fn is not None:
        return fn(q, k, valid, patch_size, k_nn, iterations, dot, seed, schedule, init, reach, max_jump)
    return reference.search(q, k, valid, patch_size, k_nn, iterations, dot, seed, schedule, init, reach, max_jump)


@psal_search.register_fake
def _(q, k, valid, patch_size, k_nn, iterations, dot, seed, schedule=contract.SCHEDULE_DEFAULT, use_reference=False,
      init=None, reach=contract.REACH_UNLIMITED, max_jump=contract.MAX_JUMP_DEFAULT):
    idx = q.new_empty((q.shape[0], q.shape[2], q.shape[3], k_nn), dtype=torch.long)
    return idx, q.new_empty((q.shape[0],), dtype=torch.long)


# -------------------------------------------------------------------------------- similarity
@torch.library.custom_op(f"{NAMESPACE}::psal_similarity", mutates_args=())
def psal_similarity(q: Tensor, k: Tensor, idx: Tensor, patch_size: int, dot: bool) -> Tensor:
    """S (B, Hq, Wq, K): -||q - k||^2 (l2) or q . k (dot) between each query and its matches."""
    fn = _kernel("psal_similarity", q.device.type)
    if fn is not None:
        return fn(q, k, idx, patch_size, dot)
    with torch.no_grad():
        return reference.similarity(q, k, idx, patch_size, dot)


@psal_similarity.register_fake
def _(q, k, idx, patch_size, dot):
    return q.new_empty(idx.shape)


def _no_backward_kernel(name: str, device_type: str) -> RuntimeError:
    # custom-op bodies run below autograd, so the reference cannot be differentiated in here;
    # without a native kernel, matched_attention() differentiates the reference directly instead
    return RuntimeError(f"{name}: no native kernel for {device_type}; use matched_attention(), which "
                        "falls back to plain autograd through the reference")


@torch.library.custom_op(f"{NAMESPACE}::psal_similarity_backward", mutates_args=())
def psal_similarity_backward(
    grad_s: Tensor, q: Tensor, k: Tensor, idx: Tensor, patch_size: int, dot: bool, need_q: bool, need_k: bool
) -> tuple[Tensor, Tensor]:
    """(grad_q, grad_k) of sum(grad_s * S); an empty tensor where a gradient was not requested."""
    fn = _kernel("psal_similarity_backward", q.device.type)
    if fn is not None:
        gq, gk = fn(grad_s, q, k, idx, patch_size, dot, need_q, need_k)
    else:
        raise _no_backward_kernel("psal_similarity_backward", q.device.type)
    return _opt(gq, q), _opt(gk, k)


@psal_similarity_backward.register_fake
def _(grad_s, q, k, idx, patch_size, dot, need_q, need_k):
    return (q.new_empty(q.shape) if need_q else q.new_empty(_EMPTY)), (k.new_empty(k.shape) if need_k else k.new_empty(_EMPTY))


def _similarity_setup(ctx, inputs, output) -> None:
    q, k, idx, patch_size, dot = inputs
    ctx.save_for_backward(q, k, idx)
    ctx.patch_size, ctx.dot = patch_size, dot


def _similarity_backward(ctx, grad_s):
    q, k, idx = ctx.saved_tensors
    need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gq, gk = psal_similarity_backward(grad_s.contiguous(), q, k, idx, ctx.patch_size, ctx.dot, need_q, need_k)
    return (gq if need_q else None), (gk if need_k else None), None, None, None


psal_similarity.register_autograd(_similarity_backward, setup_context=_similarity_setup)


# ------------------------------------------------------------------------------------ attend
@torch.library.custom_op(f"{NAMESPACE}::psal_attend", mutates_args=())
def psal_attend(
    s: Tensor, idx: Tensor, v: Tensor, patch_size: int, aggregation: bool, temperature: float
) -> tuple[Tensor, Tensor]:
    """(out (B, Cv, Hq, Wq), lse (B, Hq, Wq)): softmax(S / T)-weighted values (Eq. 5 / Eq. 10)."""
    fn = _kernel("psal_attend", v.device.type)
    if fn is not None:
        return fn(s, idx, v, patch_size, aggregation, temperature)
    with torch.no_grad():
        return reference.attend(s, idx, v, patch_size, aggregation, temperature)


@psal_attend.register_fake
def _(s, idx, v, patch_size, aggregation, temperature):
    B, hq, wq, _ = s.shape
    return v.new_empty((B, v.shape[1], hq, wq)), v.new_empty((B, hq, wq))


@torch.library.custom_op(f"{NAMESPACE}::psal_attend_backward", mutates_args=())
def psal_attend_backward(
    grad_out: Tensor,
    s: Tensor,
    idx: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    patch_size: int,
    aggregation: bool,
    temperature: float,
    need_s: bool,
    need_v: bool,
) -> tuple[Tensor, Tensor]:
    """(grad_s, grad_v) of sum(grad_out * out); an empty tensor where not requested."""
    fn = _kernel("psal_attend_backward", v.device.type)
    if fn is not None:
        gs, gv = fn(grad_out.contiguous(), s, idx, v, out, lse, patch_size, aggregation, temperature, need_s, need_v)
    else:
        raise _no_backward_kernel("psal_attend_backward", v.device.type)
    return _opt(gs, s), _opt(gv, v)


@psal_attend_backward.register_fake
def _(grad_out, s, idx, v, out, lse, patch_size, aggregation, temperature, need_s, need_v):
    return (s.new_empty(s.shape) if need_s else s.new_empty(_EMPTY)), (v.new_empty(v.shape) if need_v else v.new_empty(_EMPTY))


def _attend_setup(ctx, inputs, output) -> None:
    s, idx, v, patch_size, aggregation, temperature = inputs
    out, lse = output
    ctx.save_for_backward(s, idx, v, out, lse)
    ctx.patch_size, ctx.aggregation, ctx.temperature = patch_size, aggregation, temperature
    ctx.mark_non_differentiable(lse)


def _attend_backward(ctx, grad_out, _grad_lse):
    s, idx, v, out, lse = ctx.saved_tensors
    need_s, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    if grad_out is None:
        return None, None, None, None, None, None
    gs, gv = psal_attend_backward(
        grad_out, s, idx, v, out, lse, ctx.patch_size, ctx.aggregation, ctx.temperature, need_s, need_v
    )
    return (gs if need_s else None), None, (gv if need_v else None), None, None, None


psal_attend.register_autograd(_attend_backward, setup_context=_attend_setup)


# ------------------------------------------------------------------------------------- FLOPs
def _is_real(t: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, Tensor) and not isinstance(t, FakeTensor) and t.device.type != "meta"


def _register_flops() -> None:
    """Attach FLOP formulas once per process (a duplicate registration raises)."""
    from torch.utils.flop_counter import flop_registry

    ops = torch.ops.attnbench
    if ops.psal_search in flop_registry:
        return

    @register_flop_formula(ops.psal_search, get_raw=True)
    def _search_flops(q, k, valid, patch_size, k_nn, iterations, dot, seed, schedule=None, use_reference=False,
                      init=None, reach=contract.REACH_UNLIMITED, max_jump=contract.MAX_JUMP_DEFAULT, out_val=None,
                      **kwargs) -> int:
        evals = out_val[1] if out_val is not None else None
        if _is_real(evals):
            return contract.search_flops(int(evals.sum().item()), q.shape[1], patch_size)
        given = int(init.shape[3]) if init is not None else 0
        return search_flops_estimate(q.shape[0], tuple(q.shape[2:]), tuple(k.shape[2:]), q.shape[1], patch_size, k_nn,
                                     iterations, given, reach, max_jump)

    @register_flop_formula(ops.psal_similarity)
    def _similarity_flops(q_shape, k_shape, idx_shape, patch_size, dot, out_shape=None, **kwargs) -> int:
        return contract.similarity_flops(_numel(idx_shape), q_shape[1], patch_size)

    @register_flop_formula(ops.psal_similarity_backward)
    def _similarity_bwd_flops(gs_shape, q_shape, k_shape, idx_shape, patch_size, dot, need_q, need_k, out_shape=None, **kwargs) -> int:
        return (int(need_q) + int(need_k)) * contract.similarity_flops(_numel(idx_shape), q_shape[1], patch_size)

    @register_flop_formula(ops.psal_attend)
    def _attend_flops(s_shape, idx_shape, v_shape, patch_size, aggregation, temperature, out_shape=None, **kwargs) -> int:
        return contract.attend_flops(_numel(s_shape), v_shape[1], patch_size, aggregation)

    @register_flop_formula(ops.psal_attend_backward)
    def _attend_bwd_flops(go_shape, s_shape, idx_shape, v_shape, out_shape_, lse_shape, patch_size, aggregation, temperature, need_s, need_v, out_shape=None, **kwargs) -> int:
        return (int(need_s) + int(need_v)) * contract.attend_flops(_numel(s_shape), v_shape[1], patch_size, aggregation)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


_register_flops()


# --------------------------------------------------------------------------------- backends
_cuda_registered = False


def prepare() -> str:
    """Resolve the backend, once per layer (building the extension if needed; CUDA kernels
    registered if built): ``"native"`` or ``"reference"`` (contract.BACKEND_*)."""
    global _cuda_registered
    backend = psal_build.active_backend()
    if backend == "native" and not _cuda_registered and psal_build.has_device_kernels("cuda"):
        module = psal_build.native_module()
        psal_search.register_kernel("cuda")(module.psal_search_cuda)
        psal_similarity.register_kernel("cuda")(module.psal_similarity_cuda)
        psal_attend.register_kernel("cuda")(module.psal_attend_cuda)

        @psal_similarity_backward.register_kernel("cuda")
        def _sim_bwd_cuda(grad_s, q, k, idx, patch_size, dot, need_q, need_k):
            gq, gk = module.psal_similarity_backward_cuda(grad_s, q, k, idx, patch_size, dot, need_q, need_k)
            return _opt(gq, q), _opt(gk, k)

        @psal_attend_backward.register_kernel("cuda")
        def _attend_bwd_cuda(grad_out, s, idx, v, out, lse, patch_size, aggregation, temperature, need_s, need_v):
            gs, gv = module.psal_attend_backward_cuda(
                grad_out.contiguous(), s, idx, v, out, lse, patch_size, aggregation, temperature, need_s, need_v
            )
            return _opt(gs, s), _opt(gv, v)

        _cuda_registered = True
    return backend


def backend_note(backend: str) -> Optional[str]:
    """Why a layer runs on the reference when nobody asked for it (no compiler, an unwritable kernel
    cache...): recorded with each cell as ``backend_note``; None otherwise."""
    if backend != contract.BACKEND_REFERENCE or psal_build.requested_backend() == "reference":
        return None
    reason = psal_build.fallback_reason()
    return f"{reason}; the pure-PyTorch reference runs instead" if reason else None


def matched_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, patch_size: int, dot: bool,
                      aggregation: bool, temperature: float, with_similarity: bool, backend: str) -> Tensor:
    """Softmax attention over the matched keys ``idx`` (B, Hq, Wq, K): the custom ops on the
    native backend where it has a kernel for the device, else plain autograd through the reference.

    ``backend``: what :func:`prepare` resolved for the calling layer. Without ``with_similarity``
    (one term per query, PSAL-1), every weight is 1 whatever S is.
    """
    if backend != contract.BACKEND_NATIVE or _kernel("psal_attend", v.device.type) is None:
        s = reference.similarity(q, k, idx, patch_size, dot) if with_similarity else q.new_zeros(idx.shape)
        return reference.attend(s, idx, v, patch_size, aggregation, temperature)[0]
    ops = torch.ops.attnbench
    s = ops.psal_similarity(q, k, idx, patch_size, dot) if with_similarity else q.new_zeros(idx.shape)
    return ops.psal_attend(s, idx, v, patch_size, aggregation, temperature)[0]
