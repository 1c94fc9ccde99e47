"""FLOPs of one call, counted with ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode only counts ops with a registered formula. We register formulas for the heavy
ops it misses on CPU (the CPU flash SDPA kernel and its backward, ``cdist``) and, instead of
pretending the rest is free, record every other op that produced a large output without being
counted (``uncounted``), so a reader sees what the total leaves out. Pure data movement (views,
copies, unfold, gather...) costs no FLOPs and is not listed.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch
from torch.utils import flop_counter as fc
from torch.utils._python_dispatch import TorchDispatchMode

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


@dataclass
class FlopCount:
    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    #: op name -> output elements produced by ops with no formula (not free, not counted)
    uncounted: dict[str, int] = field(default_factory=dict)


class _UncountedRecorder(TorchDispatchMode):
    """Notes ops that FlopCounterMode cannot count and that are not pure data movement."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet not in fc.flop_registry and packet.__name__.rstrip("_") not in _MOVEMENT and packet.__name__ not in _MOVEMENT:
            numel = sum(t.numel() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
            if numel >= UNCOUNTED_MIN_ELEMENTS:
                self.seen[str(packet)] += numel
        return out


def count_flops(fn: Callable[[], T]) -> tuple[T, FlopCount]:
    """Run ``fn()`` once under FlopCounterMode; return its result and the count."""
    register_missing_formulas()
    counter = fc.FlopCounterMode(display=False)
    recorder = _UncountedRecorder()
    with counter, recorder:
        result = fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return result, FlopCount(total=int(counter.get_total_flops()), by_op=by_op, uncounted=dict(recorder.seen))
