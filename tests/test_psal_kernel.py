"""The native PSAL kernels against the pure-PyTorch reference, determinism, fake shapes, FLOPs."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnbench_plugins import psal_build, psal_ops
from attnbench_plugins import psal_reference as reference
from attnbench_plugins.psal_cost import expected_evaluations

ops = torch.ops.attnbench


@pytest.fixture(scope="module")
def ext():
    try:
        return psal_build.load_extension()
    except RuntimeError as exc:
        pytest.skip(f"native PSAL extension not available: {exc}")


def _inputs(seed=0, dtype=torch.float64, b=2, c=3, q_hw=(13, 15), k_hw=(12, 11), cv=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, c, *q_hw, generator=g, dtype=dtype)
    k = torch.rand(b, c, *k_hw, generator=g, dtype=dtype)
    v = torch.rand(b, cv, *k_hw, generator=g, dtype=dtype)
    return q, k, v


def _hole(k_hw, b=2):
    mask = torch.zeros(b, 1, *k_hw, dtype=torch.bool)
    mask[0, :, 3:6, 4:8] = True
    mask[1, :, 7:9, 1:3] = True
    return mask


@pytest.mark.parametrize("dot", [False, True])
@pytest.mark.parametrize("k_nn", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_search_matches_reference_exactly(ext, dot, k_nn, masked):
    # Same algorithm, same counter-based RNG: same matches and same evaluation counts.
    q, k, _ = _inputs()
    mask = _hole(k.shape[2:]) if masked else None
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, mask, 2, q.device)
    idx_n, ev_n = ext.psal_search_cpu(q, k, valid, 3, k_nn, 3, dot, 11)
    idx_r, ev_r = reference.search(q, k, valid, 3, k_nn, 3, dot, 11)
    assert torch.equal(idx_n, idx_r)
    assert torch.equal(ev_n, ev_r)


def test_search_field_is_valid_sorted_and_distinct(ext):
    q, k, _ = _inputs(dtype=torch.float32)
    mask = _hole(k.shape[2:])
    p, r, K = 3, 1, 4
    valid = reference.matchable_map(tuple(k.shape[2:]), p, mask, 2, q.device)
    idx, _ = ext.psal_search_cpu(q, k, valid, p, K, 2, False, 0)
    hk, wk = k.shape[2:]
    cy, cx = idx // wk, idx % wk
    assert ((cy >= r) & (cy < hk - r) & (cx >= r) & (cx < wk - r)).all()
    assert torch.stack([valid[b].flatten()[idx[b].flatten()] for b in range(2)]).all()
    assert (idx.sort(-1).values.diff(dim=-1) != 0).all()  # distinct per query
    s = ext.psal_similarity_cpu(q, k, idx, p, False)
    assert (s.diff(dim=-1) <= 0).all()  # best (highest similarity) first


@pytest.mark.parametrize("dot", [False, True])
def test_similarity_matches_reference(ext, dot):
    q, k, _ = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 5, None, 2, q.device)
    idx, _ = ext.psal_search_cpu(q, k, valid, 5, 3, 2, dot, 0)
    torch.testing.assert_close(ext.psal_similarity_cpu(q, k, idx, 5, dot), reference.similarity(q, k, idx, 5, dot), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aggregation", [False, True])
def test_attend_matches_reference(ext, aggregation):
    q, k, v = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, None, 2, q.device)
    idx, _ = ext.psal_search_cpu(q, k, valid, 3, 2, 2, False, 0)
    s = ext.psal_similarity_cpu(q, k, idx, 3, False)
    out_n, lse_n = ext.psal_attend_cpu(s, idx, v, 3, aggregation, 0.3)
    out_r, lse_r = reference.attend(s, idx, v, 3, aggregation, 0.3)
    torch.testing.assert_close(out_n, out_r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse_n, lse_r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dot", [False, True])
@pytest.mark.parametrize("aggregation", [False, True])
def test_backward_kernels_match_reference_autograd(ext, dot, aggregation):
    q, k, v = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, None, 2, q.device)
    idx, _ = ext.psal_search_cpu(q, k, valid, 3, 3, 2, dot, 0)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    s_ref = reference.similarity(qq, kk, idx, 3, dot)
    out_ref, _ = reference.attend(s_ref, idx, vv, 3, aggregation, 0.7)
    g = torch.rand_like(out_ref)
    gq_r, gk_r, gv_r, gs_r = torch.autograd.grad(out_ref, (qq, kk, vv, s_ref), g)
    s = ext.psal_similarity_cpu(q, k, idx, 3, dot)
    out, lse = ext.psal_attend_cpu(s, idx, v, 3, aggregation, 0.7)
    gs, gv = ext.psal_attend_backward_cpu(g, s, idx, v, out, lse, 3, aggregation, 0.7, True, True)
    gq, gk = ext.psal_similarity_backward_cpu(gs, q, k, idx, 3, dot, True, True)
    for got, want in ((gs, gs_r), (gv, gv_r), (gq, gq_r), (gk, gk_r)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dot", [False, True])
@pytest.mark.parametrize("k_nn", [1, 3])
def test_wavefront_search_matches_reference_exactly_across_tiles(ext, dot, k_nn):
    # 37 x 41 queries: several 16 x 16 tiles of the CPU schedule vs the reference's diagonals.
    q, k, _ = _inputs(seed=3, b=2, q_hw=(37, 41), k_hw=(19, 23))
    valid = reference.matchable_map((19, 23), 3, _hole((19, 23)), 2, q.device)
    idx_n, ev_n = ext.psal_search_cpu(q, k, valid, 3, k_nn, 3, dot, 11, reference.SCHEDULE_WAVEFRONT)
    idx_r, ev_r = reference.search(q, k, valid, 3, k_nn, 3, dot, 11, reference.SCHEDULE_WAVEFRONT)
    assert torch.equal(idx_n, idx_r) and torch.equal(ev_n, ev_r)
    jacobi, _ = ext.psal_search_cpu(q, k, valid, 3, k_nn, 3, dot, 11, reference.SCHEDULE_JACOBI)
    assert not torch.equal(idx_n, jacobi)  # the schedule is really different


@pytest.mark.parametrize("schedule", [0, 1], ids=["jacobi", "wavefront"])
def test_search_schedules_are_bit_identical_across_thread_counts(ext, schedule):
    q, k, _ = _inputs(dtype=torch.float32, b=2, c=4, q_hw=(70, 53), k_hw=(41, 66))
    valid = reference.matchable_map(tuple(k.shape[2:]), 5, None, 2, q.device)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (2, 1, 3, 2):
            torch.set_num_threads(n)
            runs.append(ext.psal_search_cpu(q, k, valid, 5, 3, 4, False, 5, schedule))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(runs[0][0], r[0]) and torch.equal(runs[0][1], r[1]) for r in runs[1:])


def test_unknown_schedule_is_an_error(ext):
    q, k, _ = _inputs(b=1)
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, None, 1, q.device)
    with pytest.raises(RuntimeError, match="schedule"):
        ext.psal_search_cpu(q, k, valid, 3, 1, 1, False, 0, 7)
    with pytest.raises(ValueError, match="schedule"):
        reference.search(q, k, valid, 3, 1, 1, False, 0, 7)


def test_native_search_is_bit_identical_across_runs_and_thread_counts(ext):
    q, k, _ = _inputs(dtype=torch.float32, b=1, q_hw=(40, 37), k_hw=(33, 41))
    valid = reference.matchable_map(tuple(k.shape[2:]), 5, None, 1, q.device)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = ext.psal_search_cpu(q, k, valid, 5, 3, 4, False, 5)
        b = ext.psal_search_cpu(q, k, valid, 5, 3, 4, False, 5)
        torch.set_num_threads(1)
        c = ext.psal_search_cpu(q, k, valid, 5, 3, 4, False, 5)
    finally:
        torch.set_num_threads(threads)
    other = ext.psal_search_cpu(q, k, valid, 5, 3, 4, False, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert not torch.equal(a[0], other[0])  # the seed matters


def test_backward_is_bit_identical_across_runs(ext):
    q, k, v = _inputs(dtype=torch.float32, b=1, q_hw=(30, 30), k_hw=(30, 30), cv=3)
    valid = reference.matchable_map((30, 30), 5, None, 1, q.device)
    idx, _ = ext.psal_search_cpu(q, k, valid, 5, 3, 2, False, 0)
    s = ext.psal_similarity_cpu(q, k, idx, 5, False)
    out, lse = ext.psal_attend_cpu(s, idx, v, 5, True, 1.0)
    g = torch.rand_like(out)
    first = ext.psal_attend_backward_cpu(g, s, idx, v, out, lse, 5, True, 1.0, True, True)
    first += ext.psal_similarity_backward_cpu(first[0], q, k, idx, 5, False, True, True)
    second = ext.psal_attend_backward_cpu(g, s, idx, v, out, lse, 5, True, 1.0, True, True)
    second += ext.psal_similarity_backward_cpu(second[0], q, k, idx, 5, False, True, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_rng_hash_matches_between_torch_and_native(ext):
    # Indirect but exact: the very first random candidate of every query is the same.
    q, k, _ = _inputs(b=1)
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, None, 1, q.device)
    assert torch.equal(ext.psal_search_cpu(q, k, valid, 3, 1, 0, False, 123)[0], reference.search(q, k, valid, 3, 1, 0, False, 123)[0])


def test_ops_have_meta_and_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q = torch.empty(2, 4, 10, 12, device="meta")
    k = torch.empty(2, 4, 9, 8, device="meta")
    v = torch.empty(2, 5, 9, 8, device="meta")
    valid = torch.empty(2, 9, 8, dtype=torch.bool, device="meta")
    idx, evals = ops.psal_search(q, k, valid, 3, 3, 5, False, 0)
    assert idx.shape == (2, 10, 12, 3) and idx.dtype == torch.long and evals.shape == (2,)
    s = ops.psal_similarity(q, k, idx, 3, False)
    out, lse = ops.psal_attend(s, idx, v, 3, True, 1.0)
    assert s.shape == (2, 10, 12, 3) and out.shape == (2, 5, 10, 12) and lse.shape == (2, 10, 12)
    with FakeTensorMode() as mode:
        fq = mode.from_tensor(torch.empty(1, 4, 10, 12))
        fk = mode.from_tensor(torch.empty(1, 4, 9, 8))
        fv = mode.from_tensor(torch.empty(1, 2, 9, 8))
        fvalid = mode.from_tensor(torch.empty(1, 9, 8, dtype=torch.bool))
        fidx, _ = ops.psal_search(fq, fk, fvalid, 3, 2, 5, False, 0)
        fout, _ = ops.psal_attend(ops.psal_similarity(fq, fk, fidx, 3, True), fidx, fv, 3, False, 1.0)
        assert fout.shape == (1, 2, 10, 12)


def test_flop_counter_counts_the_evaluations_the_kernel_made():
    from attnbench.registry import mechanism

    q, k, v = _inputs(dtype=torch.float32, b=2, c=4, q_hw=(24, 20), k_hw=(22, 26), cv=3)
    psal = mechanism("psal-3", patch_size=5, iterations=3)
    with FlopCounterMode(display=False) as counter:
        psal(q, k, v)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    d = 5 * 5 * 4
    assert by_op["attnbench.psal_search"] == int(psal.last_evaluations.sum()) * 2 * d
    assert by_op["attnbench.psal_similarity"] == 2 * d * 2 * 24 * 20 * 3
    assert by_op["attnbench.psal_attend"] == 2 * 2 * 24 * 20 * 3 * 3


def test_flop_counter_counts_backward_ops():
    from attnbench.registry import mechanism

    q, k, v = (t.requires_grad_() for t in _inputs(dtype=torch.float32))
    psal = mechanism("psal-aggreg", patch_size=3)
    with FlopCounterMode(display=False) as counter:
        psal(q, k, v).sum().backward()
    counted = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert {"attnbench.psal_attend_backward", "attnbench.psal_similarity_backward"} <= counted


@pytest.mark.parametrize("k_nn", [1, 3])
@pytest.mark.parametrize("size", [64, 96])
def test_evaluation_model_within_10_percent_of_counted(ext, k_nn, size):
    g = torch.Generator().manual_seed(size + k_nn)
    q = torch.rand(1, 4, size, size, generator=g)
    k = torch.rand(1, 4, size, size, generator=g)
    valid = reference.matchable_map((size, size), 7, None, 1, q.device)
    _, evals = ext.psal_search_cpu(q, k, valid, 7, k_nn, 5, False, 0)
    model = expected_evaluations((size, size), (size, size), 7, k_nn, 5)
    assert abs(int(evals) / model - 1) < 0.10


def test_fake_flop_formula_uses_the_model():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, FlopCounterMode(display=False) as counter:
        fq = mode.from_tensor(torch.empty(1, 16, 64, 64))
        fvalid = mode.from_tensor(torch.empty(1, 64, 64, dtype=torch.bool))
        ops.psal_search(fq, fq, fvalid, 7, 3, 5, False, 0)
    expected = psal_ops.search_flops_estimate(1, (64, 64), (64, 64), 16, 7, 3, 5)
    assert counter.get_total_flops() == expected > 0


# ------------------------------------------------------------------- a caller's initial field
@pytest.mark.parametrize("schedule", [0, 1], ids=["jacobi", "wavefront"])
@pytest.mark.parametrize("k_nn", [1, 3])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_search_from_a_given_field_matches_reference_exactly(ext, schedule, k_nn, dtype):
    from attnbench_plugins.psal_checks import _given_field

    q, k, _ = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, _hole(k.shape[2:]), 2, q.device)
    start, _ = ext.psal_search_cpu(q, k, valid, 3, k_nn, 1, False, 5)
    init = _given_field(start, k_nn + 1, seed=k_nn).to(dtype)  # -1, off-border, repeated entries
    idx_n, ev_n = ext.psal_search_cpu(q, k, valid, 3, k_nn, 2, False, 11, schedule, init)
    idx_r, ev_r = reference.search(q, k, valid, 3, k_nn, 2, False, 11, schedule, init)
    assert torch.equal(idx_n, idx_r) and torch.equal(ev_n, ev_r)
    plain, _ = ext.psal_search_cpu(q, k, valid, 3, k_nn, 2, False, 11, schedule)
    assert not torch.equal(idx_n, plain)  # the field was used


def test_given_entries_are_evaluated_once_and_kept_best_first(ext):
    # 0 iterations: the heap is the given distinct matchable entries (sorted by cost), each counted
    # once; a field of -1 only (no entry) is the random initialisation, bit for bit.
    q, k, _ = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, _hole(k.shape[2:]), 2, q.device)
    start, ev_start = ext.psal_search_cpu(q, k, valid, 3, 3, 2, False, 5)
    shuffled = start.flip(-1)
    idx, ev = ext.psal_search_cpu(q, k, valid, 3, 3, 0, False, 0, 0, torch.cat([shuffled, shuffled], -1))
    assert torch.equal(idx, start)  # same entries, re-sorted by cost; the repeats skipped
    assert ev.tolist() == [start[0].numel(), start[1].numel()]  # one evaluation per distinct entry
    none = torch.full_like(start, -1)
    for iters in (0, 3):
        assert all(torch.equal(a, b) for a, b in zip(ext.psal_search_cpu(q, k, valid, 3, 3, iters, False, 9, 0, none),
                                                     ext.psal_search_cpu(q, k, valid, 3, 3, iters, False, 9, 0)))


def test_given_field_shape_and_dtype_are_checked(ext):
    q, k, _ = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, None, 2, q.device)
    for bad in (torch.zeros(2, 13, 15, dtype=torch.long), torch.zeros(2, 13, 14, 2, dtype=torch.long),
                torch.zeros(2, 13, 15, 2)):
        with pytest.raises(RuntimeError, match="init must be"):
            ext.psal_search_cpu(q, k, valid, 3, 2, 1, False, 0, 0, bad)


def _pyramid_pair(layer_kw, q, k, mask, monkeypatch):
    from attnbench.registry import mechanism

    native = mechanism("psal-1", **layer_kw)
    monkeypatch.setenv("ATTNBENCH_PSAL_BACKEND", "reference")
    ref = mechanism("psal-1", **layer_kw)
    monkeypatch.delenv("ATTNBENCH_PSAL_BACKEND")
    assert native.backend == "native" and ref.backend == "reference"
    idx_n, idx_r = native.search(q, k, mask), ref.search(q, k, mask)
    return idx_n, native.last_evaluations, idx_r, ref.last_evaluations


@pytest.mark.parametrize("case", [
    # (B, C, q_hw, k_hw, p, search_k, iterations, levels, scale, masked, schedule)
    (2, 3, (24, 28), (26, 22), 3, 2, 2, 2, 2, True, "jacobi"),
    (1, 2, (33, 30), (30, 35), 5, 3, 1, 1, 2, False, "wavefront"),
    (2, 2, (27, 27), (40, 31), 3, 1, 2, 3, 2, True, "wavefront"),
    (1, 3, (30, 20), (28, 26), 3, 2, 1, 1, 3, True, "jacobi"),
], ids=["2lv-hole", "p5-wavefront", "3lv-hole-k1", "scale3-hole"])
def test_pyramid_native_equals_reference_exactly(ext, monkeypatch, case):
    # The coarse-to-fine orchestration is shared Python; integer images in multiples of the largest
    # pooling area stay integers when pooled, so every patch cost is exact and the fields agree.
    B, C, q_hw, k_hw, p, width, iters, levels, scale, masked, schedule = case
    from attnbench_plugins.psal_checks import _hole as _check_hole
    from attnbench_plugins.psal_checks import _int_images

    q, k = (t * scale ** (2 * levels) for t in _int_images(B, C, *q_hw, *k_hw, seed=sum(q_hw), dtype=torch.float64))
    mask = _check_hole(B, *k_hw) if masked else None
    kw = dict(patch_size=p, search_k=width, iterations=iters, init="pyramid", pyramid_levels=levels,
              pyramid_scale=scale, pyramid_iterations=iters + 1, schedule=schedule, pyramid_schedule=schedule, seed=3)
    idx_n, ev_n, idx_r, ev_r = _pyramid_pair(kw, q, k, mask, monkeypatch)
    assert torch.equal(idx_n, idx_r) and torch.equal(ev_n, ev_r)
    flat = reference.matchable_map(k_hw, p, mask, B, q.device).flatten(1)
    assert torch.gather(flat, 1, idx_n.reshape(B, -1)).all()
    from attnbench.registry import mechanism

    plain = mechanism("psal-1", **{**kw, "init": "random"})
    assert not torch.equal(plain.search(q, k, mask), idx_n)  # the pyramid changed the start


def test_pyramid_finds_a_large_shift_in_fewer_iterations(ext):
    # A 40 px shift on a 160 px image: a random start with two iterations leaves most queries far
    # off (8 % right); the coarse levels (as many iterations, as wide a heap) bring the field there
    # first (100 %), for fewer evaluations.
    from attnbench.registry import mechanism

    g = torch.Generator().manual_seed(0)
    big = torch.nn.functional.avg_pool2d(torch.randn(1, 4, 220, 220, generator=g), 3, stride=1, padding=1)
    q, k = big[:, :, :160, :160].contiguous(), big[:, :, 40:200, 36:196].contiguous()
    ys, xs = torch.meshgrid(torch.arange(160), torch.arange(160), indexing="ij")
    inside = (ys >= 43) & (xs >= 39) & (ys < 157) & (xs < 157)

    def correct(init):
        coarse = dict(pyramid_levels=2, pyramid_iterations=2, pyramid_search_k=2) if init == "pyramid" else {}
        layer = mechanism("psal-1", init=init, iterations=2, patch_size=5, search_k=2, **coarse)
        idx = layer.search(q, k)[0, ..., 0]
        return ((idx // 160 == ys - 40) & (idx % 160 == xs - 36))[inside].float().mean().item(), layer.last_evaluations

    (good, evals_pyramid), (poor, evals_random) = correct("pyramid"), correct("random")
    assert good > 0.99 and poor < 0.2 and evals_pyramid < evals_random


def test_evaluation_model_covers_the_pyramid(ext):
    from attnbench.registry import mechanism
    from attnbench_plugins.psal_cost import expected_pyramid_evaluations

    for k_nn, size in ((1, 64), (3, 96)):
        g = torch.Generator().manual_seed(size + k_nn)
        q, k = torch.rand(1, 4, size, size, generator=g), torch.rand(1, 4, size, size, generator=g)
        layer = mechanism(f"psal-{k_nn}", search_k=k_nn, init="pyramid", pyramid_levels=2)
        layer.search(q, k)
        model = expected_pyramid_evaluations((size, size), (size, size), 7, k_nn, 5, layer.pyramid_plan)
        assert abs(int(layer.last_evaluations) / model - 1) < 0.10


def test_coarse_levels_search_patches_of_the_full_patch_area():
    from attnbench_plugins.psal_pyramid import coarse_levels, level_patch_size

    # 7 px on maps pooled by 2 covers 14 px: 3 x 3 there covers 6 (never more than the full patch)
    assert [level_patch_size(7, f) for f in (1, 2, 4)] == [7, 3, 3]
    assert [level_patch_size(p, 2) for p in (1, 3, 5, 9, 11, 15)] == [1, 3, 3, 3, 5, 7]
    # a level is dropped once its key map is smaller than its own patch
    assert [(lv.factor, lv.patch_size) for lv in coarse_levels((40, 40), (40, 40), 7, 5, 2)] == [(2, 3), (4, 3), (8, 3)]


def test_pyramid_flops_count_each_level_at_its_own_patch(ext):
    # the FLOP counter counts every level's op call with that call's patch, and the estimate
    # (expected_pyramid_flops) does the same: both below the evaluations priced at the full patch
    from attnbench.registry import mechanism
    from attnbench_plugins.psal_contract import search_flops
    from attnbench_plugins.psal_cost import expected_pyramid_flops

    g = torch.Generator().manual_seed(5)
    q, k = torch.rand(1, 4, 96, 96, generator=g), torch.rand(1, 4, 96, 96, generator=g)
    layer = mechanism("psal-1", search_k=2, init="pyramid", iterations=5)
    with FlopCounterMode(display=False) as counter:
        layer.search(q, k)
    counted = counter.get_total_flops()
    at_full_patch = search_flops(int(layer.last_evaluations), 4, 7)
    estimated = expected_pyramid_flops(1, (96, 96), (96, 96), 4, 7, 2, 5, layer.pyramid_plan)
    assert counted < 0.9 * at_full_patch
    assert abs(estimated / counted - 1) < 0.15


def test_fake_flop_formula_counts_the_given_entries():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode, FlopCounterMode(display=False) as counter:
        fq = mode.from_tensor(torch.empty(1, 16, 64, 64))
        fvalid = mode.from_tensor(torch.empty(1, 64, 64, dtype=torch.bool))
        finit = mode.from_tensor(torch.empty(1, 64, 64, 5, dtype=torch.int32))
        ops.psal_search(fq, fq, fvalid, 7, 3, 5, False, 0, 0, False, finit)
    expected = psal_ops.search_flops_estimate(1, (64, 64), (64, 64), 16, 7, 3, 5, 5)
    assert counter.get_total_flops() == expected > psal_ops.search_flops_estimate(1, (64, 64), (64, 64), 16, 7, 3, 5)


# ------------------------------------------------------------- the reach limits (psal.h)
@pytest.mark.parametrize("schedule", [0, 1], ids=["jacobi", "wavefront"])
@pytest.mark.parametrize("reach, max_jump", [(3, 8), (0, 2), (4, 1), (6, 4)])
def test_reach_limited_search_matches_reference_exactly(ext, schedule, reach, max_jump):
    from attnbench_plugins.psal_checks import _given_field

    q, k, _ = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, _hole(k.shape[2:]), 2, q.device)
    start, _ = ext.psal_search_cpu(q, k, valid, 3, 2, 1, False, 5)
    for init in (None, _given_field(start, 3, seed=2)):
        idx_n, ev_n = ext.psal_search_cpu(q, k, valid, 3, 2, 3, False, 11, schedule, init, reach, max_jump)
        idx_r, ev_r = reference.search(q, k, valid, 3, 2, 3, False, 11, schedule, init, reach, max_jump)
        assert torch.equal(idx_n, idx_r) and torch.equal(ev_n, ev_r)
        plain, ev_plain = ext.psal_search_cpu(q, k, valid, 3, 2, 3, False, 11, schedule, init)
        assert int(ev_n.sum()) < int(ev_plain.sum())  # fewer windows or jumps: fewer evaluations


def test_reach_limits_at_their_bounds_are_the_default_search(ext):
    # reach 0 or >= max(Hk, Wk) skips no level and max_jump 8 takes every jump: bit for bit the
    # default search (the skipped levels' draws are unused, so the other levels draw the same)
    q, k, _ = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, None, 2, q.device)
    default = ext.psal_search_cpu(q, k, valid, 3, 2, 3, False, 11, 0)
    for reach in (0, max(k.shape[2:]), 1000):
        limited = ext.psal_search_cpu(q, k, valid, 3, 2, 3, False, 11, 0, None, reach, 8)
        assert all(torch.equal(a, b) for a, b in zip(default, limited))


def test_reach_limits_are_checked(ext):
    from attnbench.interface import UnsupportedRequest
    from attnbench.registry import mechanism

    q, k, _ = _inputs()
    valid = reference.matchable_map(tuple(k.shape[2:]), 3, None, 2, q.device)
    for reach, max_jump in ((-1, 8), (0, 0)):
        with pytest.raises(RuntimeError, match="reach must be >= 0 and max_jump >= 1"):
            ext.psal_search_cpu(q, k, valid, 3, 2, 3, False, 11, 0, None, reach, max_jump)
        with pytest.raises(ValueError, match="reach must be >= 0 and max_jump >= 1"):
            reference.search(q, k, valid, 3, 2, 3, False, 11, 0, None, reach, max_jump)
    for params, needle in (({"reach": -2}, "reach must be an integer >= 0"), ({"max_jump": 3}, "max_jump must be one of 1, 2, 4, 8"),
                           ({"max_jump": True}, "max_jump must be one of")):
        with pytest.raises(UnsupportedRequest, match=needle):
            mechanism("psal-1", **params)


def test_evaluation_model_covers_the_reach_limits(ext):
    # the model drops the skipped windows and jumps: within 10 % of the count, like the default
    from attnbench_plugins.psal_contract import first_search_level, jump_steps

    assert first_search_level(96, 96, 0) == 0 and first_search_level(96, 96, 16) == 3  # 96 >> 3 = 12
    assert jump_steps(2) == (1, 2) and jump_steps(8) == (1, 2, 4, 8)
    for k_nn, size, reach, max_jump in ((1, 64, 8, 2), (3, 96, 16, 1)):
        g = torch.Generator().manual_seed(size + k_nn)
        q, k = torch.rand(1, 4, size, size, generator=g), torch.rand(1, 4, size, size, generator=g)
        valid = reference.matchable_map((size, size), 7, None, 1, q.device)
        _, evals = ext.psal_search_cpu(q, k, valid, 7, k_nn, 5, False, 0, 0, None, reach, max_jump)
        model = expected_evaluations((size, size), (size, size), 7, k_nn, 5, reach=reach, max_jump=max_jump)
        assert model < expected_evaluations((size, size), (size, size), 7, k_nn, 5)
        assert abs(int(evals) / model - 1) < 0.10


def test_layer_applies_the_reach_limits_at_full_size_only(ext):
    # init=pyramid: the coarse levels keep the whole image's reach, the full size takes the layer's;
    # the record names the limits only when set (the default search's parameters are unchanged)
    from attnbench.interface import ProblemShape
    from attnbench.registry import mechanism
    from attnbench_plugins.psal_cost import expected_pyramid_evaluations

    g = torch.Generator().manual_seed(1)
    q, k = torch.rand(1, 4, 96, 96, generator=g), torch.rand(1, 4, 96, 96, generator=g)
    plain = mechanism("psal-1", init="pyramid", search_k=2)
    limited = mechanism("psal-1", init="pyramid", search_k=2, reach=16, max_jump=2)
    assert "reach" not in plain.params() and "max_jump" not in plain.params()
    assert limited.params()["reach"] == 16 and limited.params()["max_jump"] == 2
    plain.search(q, k), limited.search(q, k)
    saved = expected_pyramid_evaluations((96, 96), (96, 96), 7, 2, 5, plain.pyramid_plan) - \
        expected_pyramid_evaluations((96, 96), (96, 96), 7, 2, 5, plain.pyramid_plan, 16, 2)
    got = int(plain.last_evaluations) - int(limited.last_evaluations)
    assert saved > 0 and abs(got / saved - 1) < 0.25  # only the full-size search evaluates less
    shape = ProblemShape.of(q, k, k, 7)
    assert limited.estimate(shape).flops < plain.estimate(shape).flops
