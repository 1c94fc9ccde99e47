"""FLOPs the dispatch-mode counter cannot see (attnbench.measure.flops): declared work outside torch,
a shortfall that is never a silent near-zero, FlexAttention counted by the blocks its mask keeps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attnbench.interface import AttentionMechanism, CostEstimate, ProblemShape
from attnbench.measure.call import AttentionCall, CallBudget, measure_call
from attnbench.measure.flops import count_flops, declare_flops
from attnbench.registry import mechanism, plugins

torch.set_num_threads(1)


def _available(name: str) -> None:
    info = next(i for i in plugins().values() if name in i.variants)
    if not info.availability.ok:
        pytest.skip(f"{name}: {info.availability}")


def _qkv(size: int = 16, c: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, c, size, size, generator=gen) for _ in range(3))


class NumpyMatmul(AttentionMechanism):
    """Its heavy work is a numpy matmul: declared when ``declare`` is set, otherwise not."""

    summary = "test: numpy matmul"
    complexity = "O(n^2)"
    differentiable_wrt = ()
    N = 256

    def __init__(self, declare: bool = False, **base):
        super().__init__(**base)
        self.declare = declare

    def attend(self, q, k, v, key_mask=None):
        a = np.ones((self.N, self.N))
        float((a @ a).sum())
        if self.declare:
            declare_flops(2 * self.N**3, "numpy matmul")
        return torch.zeros(q.shape[0], v.shape[1], q.shape[2], q.shape[3])

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        return CostEstimate(memory_bytes=1, flops=2 * self.N**3)


def test_declared_flops_are_recorded_as_declared_not_counted():
    q, k, v = _qkv()
    _, metrics = measure_call(AttentionCall(NumpyMatmul(declare=True, patch_size=3), q, k, v),
                              CallBudget(metrics=frozenset({"flops"})))
    assert metrics["flops_declared_by"] == {"numpy matmul": 2 * NumpyMatmul.N**3}
    assert metrics["flops_declared"] == 2 * NumpyMatmul.N**3
    assert metrics["flops"] == metrics["flops_counted"] + metrics["flops_declared"]
    assert not any(key.startswith("outside torch") for key in metrics["uncounted_ops"])
    declare_flops(10**9, "outside any count")  # no accumulator: a no-op, never an error


def test_work_neither_counted_nor_declared_is_listed_as_uncounted():
    q, k, v = _qkv()
    _, metrics = measure_call(AttentionCall(NumpyMatmul(patch_size=3), q, k, v), CallBudget(metrics=frozenset({"flops"})))
    outside = [key for key in metrics["uncounted_ops"] if key.startswith("outside torch")]
    assert outside and "estimate" in outside[0], metrics["uncounted_ops"]
    assert metrics["uncounted_ops"][outside[0]] == 2 * NumpyMatmul.N**3 - metrics["flops"]
    assert "flops_declared" not in metrics


# ------------------------------------------------------------------------------ flex_attention
def test_flex_local_runs_under_the_flop_counter_and_counts_the_kept_blocks():
    _available("flex-local")
    from torch.utils.flop_counter import sdpa_flop_count

    size, window = 40, 5
    q, k, v = _qkv(size)
    module = mechanism("flex-local", patch_size=3, window=window, compile=False)
    with torch.no_grad():
        out, counted = count_flops(lambda: module(q, k, v))
    assert out.shape == v.shape and counted.shape_only_operators == ("flex_attention",)
    grid = size - 2
    width = 3 * 3 * 3 + 1  # flash's augmented patch vectors (l2): p^2 C + 1
    mask = module.block_mask(1, (size, size), (size, size), None, q.device, False)
    q_aug = torch.empty(1, 1, size * size, width)
    k_aug = torch.empty(1, 1, grid * grid, width)
    dense = sdpa_flop_count(q_aug.shape, k_aug.shape, k_aug.shape)
    density = 1 - mask.sparsity() / 100  # attention-gym's count: the blocks the mask keeps
    assert counted.by_op["higher_order.flex_attention"] == pytest.approx(dense * density, rel=1e-6)
    # the kept blocks cover every window pair and fewer than all pairs
    window_pairs = size * size * window * window
    assert 4 * window_pairs * width <= counted.total < dense


def test_the_flop_count_of_compiled_flex_attention_materialises_no_score():
    # under a dispatch mode FlexAttention could only run eager, block mask and scores evaluated on
    # every (query, key) pair (33 GB for flex-local at 256 px): the count builds the mask on the
    # call's own path and answers the operator by shape; the checked output and the memory come
    # from the call's own path, apart
    _available("flex-local")
    from attnbench.measure.memory import measure_memory
    from attnbench_plugins.flex_local import can_compile

    if not can_compile():
        pytest.skip("torch.compile unavailable here")
    size = 96
    q, k, v = _qkv(size)
    module = mechanism("flex-local", patch_size=3, window=5, compile=True)
    pairs = size**2 * (size - 2) ** 2
    with torch.no_grad():
        module(q, k, v)  # compiled for this shape
        _, peak = measure_memory(lambda: count_flops(lambda: module(q, k, v)))
        assert peak.allocator_bytes < pairs / 4, (peak.allocator_bytes, pairs)  # 5 MB; eager: 830 MB
        out, metrics = measure_call(AttentionCall(module, q, k, v), CallBudget(metrics=frozenset({"memory", "flops"})))
    torch.testing.assert_close(out, mechanism("local", patch_size=3, window=5)(q, k, v), rtol=1e-4, atol=1e-4)
    assert "apart from the FLOP count" in metrics["peak_memory_note"]
    assert metrics["peak_memory_allocator_bytes"] < pairs / 4 and metrics["flops"] > 0


# ----------------------------------------------------------------------------------- faiss-knn
def test_faiss_knn_flops_match_torch_brute_force_when_one_list_holds_every_key():
    # nlist = 1: faiss scans every key for every query, the same distances as a torch brute force,
    # which FlopCounterMode counts: the declared figure must agree within 10 %
    _available("faiss-knn")
    size, p, c = 32, 5, 4
    q, k, v = _qkv(size, c)
    module = mechanism("faiss-knn", patch_size=p, nlist=1, nprobe=1)
    with torch.no_grad():
        _, counted = count_flops(lambda: module(q, k, v))
    nq, n, d = size * size, (size - p + 1) ** 2, c * p * p
    _, brute = count_flops(lambda: torch.randn(nq, d) @ torch.randn(d, n))
    declared = sum(counted.declared.values())
    assert abs(declared - brute.total) <= 0.10 * brute.total, (counted.declared, brute.total)


def test_faiss_ivf_list_scan_matches_faiss_own_distance_counter():
    _available("faiss-knn")
    import faiss

    size, p, c = 48, 5, 4
    q, k, v = _qkv(size, c)
    module = mechanism("faiss-knn", patch_size=p, nprobe=3)
    faiss.cvar.indexIVF_stats.reset()
    with torch.no_grad():
        _, counted = count_flops(lambda: module(q, k, v))
    d = c * p * p
    scanned = faiss.cvar.indexIVF_stats.ndis  # faiss' own count of the codes it compared
    assert scanned > 0
    assert abs(counted.declared["faiss IVF list scan"] - 2 * d * scanned) <= 0.10 * 2 * d * scanned
    assert {"faiss IVF k-means", "faiss IVF coarse search", "faiss IVF assignment"} <= set(counted.declared)
