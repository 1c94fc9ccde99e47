"""FLOPs of one call, counted with ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode only counts ops with a registered formula. We register formulas for the heavy
ops it misses on CPU (the CPU flash SDPA kernel and its backward, ``cdist``) and, instead of
pretending the rest is free, record every other op that produced a large output without being
counted (``uncounted``), so a reader sees what the total leaves out. Pure data movement (views,
copies, unfold, gather...) costs no FLOPs and is not listed.

FlexAttention (a higher-order operator) is counted by :func:`flex_attention_flops`: the dense
SDPA count times the density of the block mask (the blocks it keeps), as attention-gym's
benchmark counts it. Under a dispatch mode the operator could only run its eager path, which
materialises every score (flex-local at 256 px: 33 GB where its compiled kernel needs 0.4 GB);
a count needs shapes, not values, so the instrument gives it empty outputs of the right shapes
(FlexAttention's own fake implementation) and the call's own path runs apart for the output
and the memory (``FlopCount.shape_only_operators``).

Work done outside torch (faiss, numpy, a plugin's C++) is invisible to any dispatch mode: a
plugin states it with :func:`declare_flops`, recorded as *declared*, never as counted.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch
from torch.utils import flop_counter as fc
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

T = TypeVar("T")
aten = torch.ops.aten

#: ops below this many output elements are too small to matter in an "uncounted" listing
UNCOUNTED_MIN_ELEMENTS = 4096

#: data movement and bookkeeping: zero FLOPs by nature
_MOVEMENT = {
    "view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "squeeze", "unsqueeze",
    "slice", "select", "as_strided", "clone", "copy_", "_to_copy", "contiguous", "detach", "alias",
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "fill_", "zero_", "new_empty", "new_zeros", "new_full", "new_ones", "new_empty_strided", "cat", "stack", "split",
    "split_with_sizes", "unbind", "constant_pad_nd", "replication_pad2d", "reflection_pad2d", "im2col", "col2im",
    "gather", "index", "index_select", "take_along_dim", "scatter", "scatter_", "index_put_", "index_put",
    "masked_fill", "masked_fill_", "where", "arange", "randn", "rand", "randint", "normal_", "uniform_",
    "random_", "lift_fresh", "_reshape_alias", "unfold", "flip", "roll", "repeat", "lift_fresh_copy",
    "masked_select", "nonzero", "sort", "topk", "max_pool2d_with_indices", "argmax", "argmin", "eq", "ne",
    "gt", "lt", "ge", "le", "logical_not", "logical_and", "logical_or", "bitwise_not", "_local_scalar_dense",
    "set_", "resize_", "diagonal", "narrow", "unfold_backward", "slice_backward", "select_backward",
    "replication_pad2d_backward", "im2col_backward", "col2im_backward", "_foreach_zero_", "copy",
    "scalar_tensor", "detach_", "item", "_index_put_impl_", "gather_backward", "view_as_real",
}


def _sdpa_cpu_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                            out_shape: Any = None, **kwargs: Any) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cdist_flop(x1_shape: Any, x2_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    *batch, n, d = x1_shape
    m = x2_shape[-2]
    b = 1
    for s in batch:
        b *= s
    return 3 * b * n * m * d  # subtract, square (or abs), accumulate


def register_missing_formulas() -> None:
    """Register formulas for ops FlopCounterMode leaves at zero (idempotent)."""
    table = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop,
        aten._cdist_forward: _cdist_flop,
    }
    for op, formula in table.items():
        if op not in fc.flop_registry:
            fc.register_flop_formula(op)(formula)


def _block_mask_density(block_mask: tuple) -> float:
    """Share of the (query, key) pairs inside the blocks a FlexAttention block mask computes (its
    ``as_tuple()`` form: seq lengths, kv_num_blocks, kv_indices, full_kv_num_blocks, ...,
    block sizes, mask_mod), as ``BlockMask.sparsity`` computes it; at most 1 (edge blocks)."""
    q_len, kv_len, kv_num_blocks, _kv_indices, full_kv_num_blocks = block_mask[:5]
    block_q, block_kv = block_mask[-3], block_mask[-2]
    computed = int(kv_num_blocks.sum()) + (int(full_kv_num_blocks.sum()) if full_kv_num_blocks is not None else 0)
    *batch_heads, _ = kv_num_blocks.shape
    pairs = int(q_len) * int(kv_len)
    for s in batch_heads:
        pairs *= int(s)
    return min(1.0, computed * int(block_q) * int(block_kv) / max(pairs, 1))


def flex_attention_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask: tuple,
                         backward: bool = False) -> int:
    """FLOPs of FlexAttention's kernel: dense SDPA FLOPs (forward, or backward) x block-mask density."""
    q, k, v = query.shape, key.shape, value.shape
    dense = fc.sdpa_backward_flop_count(q, q, k, v) if backward else fc.sdpa_flop_count(q, k, v)
    return int(round(dense * _block_mask_density(block_mask)))


def _hop_flops(func: Any, args: tuple) -> Optional[tuple[str, int]]:
    """(name, FLOPs) of a higher-order operator we have a formula for, else None."""
    name = getattr(func, "_name", str(func))
    if name == "flex_attention":
        query, key, value, _score_mod, block_mask = args[:5]
        return name, flex_attention_flops(query, key, value, block_mask)
    if name == "flex_attention_backward":
        query, key, value = args[:3]
        block_mask = next(a for a in args[6:] if isinstance(a, tuple) and len(a) > 10)
        return name, flex_attention_flops(query, key, value, block_mask, backward=True)
    return None


# ------------------------------------------------------------------------- declared, outside torch
#: the accumulator of the innermost count_flops (None outside any): what ``declare_flops`` adds to
_DECLARED: contextvars.ContextVar[Optional[dict[str, int]]] = contextvars.ContextVar("attnbench_declared_flops",
                                                                                      default=None)


def declare_flops(n: float, what: str) -> None:
    """State ``n`` FLOPs of work done outside torch (a faiss search, a numpy or C++ kernel) under
    the label ``what``, so the record carries it as *declared* (``flops_declared_by``), beside
    what the instrument counted. A no-op outside :func:`count_flops` (timed calls pay nothing)."""
    acc = _DECLARED.get()
    if acc is not None and n > 0:
        acc[what] = acc.get(what, 0) + int(round(n))


@contextlib.contextmanager
def _declaring() -> Iterator[dict[str, int]]:
    acc: dict[str, int] = {}
    token = _DECLARED.set(acc)
    try:
        yield acc
    finally:
        _DECLARED.reset(token)


@dataclass
class FlopCount:
    #: counted by the instrument + declared by the plugin
    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    #: op name -> output elements produced by ops with no formula (not free, not counted)
    uncounted: dict[str, int] = field(default_factory=dict)
    #: what -> FLOPs the plugin declared for work outside torch (:func:`declare_flops`)
    declared: dict[str, int] = field(default_factory=dict)

    #: higher-order operators (FlexAttention) the instrument counted by formula and did not run (it
    #: gave them empty outputs of their shapes): the call's output holds no values, and its output
    #: and memory must come from a call apart
    shape_only_operators: tuple[str, ...] = ()

    @property
    def counted(self) -> int:
        """FLOPs the instrument saw (the total less what was declared)."""
        return self.total - sum(self.declared.values())


class _UncountedRecorder(TorchDispatchMode):
    """Notes ops that FlopCounterMode cannot count and that are not pure data movement; counts the
    higher-order operators it has a formula for (``hop_flops``) and answers them with empty
    outputs of their shapes (their fake implementation), without running them."""

    supports_higher_order_operators = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = defaultdict(int)
        self.hop_flops: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if isinstance(func, torch._ops.HigherOrderOperator):
            counted = _hop_flops(func, args)
            if counted is None:
                return NotImplemented
            self.hop_flops[counted[0]] += counted[1]
            with _disable_current_modes():
                return _shape_only(func)(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet not in fc.flop_registry and packet.__name__.rstrip("_") not in _MOVEMENT and packet.__name__ not in _MOVEMENT:
            numel = sum(t.numel() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
            if numel >= UNCOUNTED_MIN_ELEMENTS:
                self.seen[str(packet)] += numel
        return out


def _shape_only(func: Any) -> Callable[..., Any]:
    """The fake implementation of a higher-order operator (empty outputs of the right shapes and
    strides; it takes real tensors too)."""
    import importlib

    hop = importlib.import_module("torch._higher_order_ops.flex_attention")  # the module, not its operator
    fakes = {"flex_attention": hop.flex_attention_fake_impl,
             "flex_attention_backward": hop.flex_attention_backward_fake_tensor_mode}
    return fakes[getattr(func, "_name", str(func))]


@contextlib.contextmanager
def _flex_under_modes() -> Iterator[None]:
    """FlexAttention under the instrument's modes. (1) Its Python entry point wraps the operator in
    ``torch.compile(fullgraph=True)``, which refuses to run under a dispatch mode: its debug switch
    calls the operator directly (the recorder then answers it by shape). (2) ``create_block_mask``
    builds index tables, no FLOPs, but under a mode dynamo skips its compiled path and the eager
    one evaluates the mask on every (query, key) pair (~10 bytes each: 43 GB at 256 px): it runs
    outside the modes, on the path the call takes without them."""
    try:
        from torch.nn.attention import flex_attention as flex
    except ImportError:
        yield
        return
    debug, create = flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG, flex.create_block_mask

    @functools.wraps(create)
    def create_outside_modes(*args: Any, **kwargs: Any) -> Any:
        with _disable_current_modes():
            return create(*args, **kwargs)

    flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG, flex.create_block_mask = True, create_outside_modes
    try:
        yield
    finally:
        flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG, flex.create_block_mask = debug, create


def count_flops(fn: Callable[[], T]) -> tuple[T, FlopCount]:
    """Run ``fn()`` once under FlopCounterMode; return its result and the count (counted by the
    instrument plus what ``fn`` declared with :func:`declare_flops`)."""
    register_missing_formulas()
    counter = fc.FlopCounterMode(display=False)
    recorder = _UncountedRecorder()
    with _declaring() as declared, _flex_under_modes(), counter, recorder:
        result = fn()
    if recorder.hop_flops:
        # dynamo cached the frames it skipped under the modes: clear them, so that the call's own
        # (compiled) path is traced afresh next time, not refused
        torch._dynamo.reset()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    by_op.update({f"higher_order.{name}": n for name, n in recorder.hop_flops.items()})
    total = int(counter.get_total_flops()) + sum(recorder.hop_flops.values()) + sum(declared.values())
    return result, FlopCount(total=total, by_op=by_op, uncounted=dict(recorder.seen), declared=dict(declared),
                             shape_only_operators=tuple(recorder.hop_flops))
