"""The baseline mechanisms against explicit reference computations and each other."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnbench.errors import UnsupportedRequest
from attnbench.interface import ProblemShape
from attnbench.patches import key_centre_values, key_patches, query_patches, usable_keys
from attnbench.registry import mechanism, plugins

torch.set_num_threads(1)
P = 3


def inputs(b=1, c=3, cv=2, hq=12, wq=12, hk=12, wk=12, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return make(b, c, hq, wq), make(b, c, hk, wk), make(b, cv, hk, wk)


def reference(q, k, v, similarity="l2", temperature=1.0, mask=None, p=P):
    """Softmax attention written out pair by pair (float64), the definition every exact mechanism meets."""
    qp, kp, vals = (t.double() for t in (query_patches(q, p), key_patches(k, p), key_centre_values(v, p)))
    diff = qp[:, :, None, :] - kp[:, None, :, :]
    scores = -(diff**2).sum(-1) if similarity == "l2" else torch.einsum("bqd,bkd->bqk", qp, kp)
    scores = scores / temperature
    if mask is not None:
        scores = scores.masked_fill(~usable_keys(mask, p)[:, None, :], float("-inf"))
    out = torch.softmax(scores, -1) @ vals
    return out.transpose(1, 2).reshape(q.shape[0], v.shape[1], q.shape[2], q.shape[3])


def some_mask(b=2, h=12, w=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g) > 0.9


@pytest.mark.parametrize("similarity", ["l2", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_matches_definition(similarity, dtype):
    q, k, v = inputs(b=2, hq=11, wq=14, hk=12, wk=13, dtype=dtype)
    mask = some_mask()
    for m in (None, mask):
        out = mechanism("full", patch_size=P, similarity=similarity, temperature=3.0)(q, k, v, m)
        torch.testing.assert_close(out.double(), reference(q, k, v, similarity, 3.0, m), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("similarity", ["l2", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flash_equals_full(similarity, dtype):
    q, k, v = inputs(b=2, c=4, hq=13, wq=15, hk=12, wk=13, dtype=dtype)
    q, k = q + 5.0, k + 5.0  # an offset that breaks uncentred float32 l2 augmentation
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for m in (None, some_mask()):
        flash = mechanism("flash", patch_size=P, similarity=similarity, temperature=2.0)(q, k, v, m)
        full = mechanism("full", patch_size=P, similarity=similarity, temperature=2.0)(q, k, v, m)
        torch.testing.assert_close(flash, full, **tol)
        torch.testing.assert_close(flash.double(), reference(q, k, v, similarity, 2.0, m), **tol)


def test_flash_uses_the_flash_kernel():
    q, k, v = inputs()
    with torch.profiler.profile() as prof:
        mechanism("flash", patch_size=P)(q, k, v, some_mask(b=1, w=12))
    names = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names


def test_full_stride_subsamples_the_key_grid():
    q, k, v = inputs(hq=10, wq=10, hk=13, wk=12)
    stride = 2
    out = mechanism("full", patch_size=P, stride=stride)(q, k, v)
    # keys with centres r, r+2, ... only: the same as full attention with the others masked out
    grid = torch.zeros(11, 10, dtype=torch.bool)
    grid[::stride, ::stride] = True
    qp, kp, vals = query_patches(q, P), key_patches(k, P), key_centre_values(v, P)
    keep = grid.flatten()
    scores = -torch.cdist(qp.double(), kp[:, keep].double()) ** 2
    expected = (torch.softmax(scores, -1) @ vals[:, keep].double()).transpose(1, 2).reshape(1, 2, 10, 10)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    full_est = mechanism("full", patch_size=7).estimate(ProblemShape.square(128, 16, 7))
    strided_est = mechanism("full", patch_size=7, stride=4).estimate(ProblemShape.square(128, 16, 7))
    assert strided_est.memory_bytes < full_est.memory_bytes / 8
    with pytest.raises(UnsupportedRequest, match="stride"):
        mechanism("full", stride=0)


@pytest.mark.parametrize("similarity", ["l2", "dot"])
def test_local_with_window_covering_everything_is_full(similarity):
    q, k, v = inputs(b=2, hq=14, wq=17, hk=12, wk=13, dtype=torch.float64)
    for mask in (None, some_mask()):
        for block in (None, 3, 5):
            local = mechanism("local", patch_size=P, similarity=similarity, window=40, block=block)(q, k, v, mask)
            torch.testing.assert_close(local, reference(q, k, v, similarity, 1.0, mask), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("window", [1, 2, 5])
def test_local_attends_exactly_its_window(window):
    q, k, v = inputs(hq=9, wq=11, hk=10, wk=9, dtype=torch.float64)
    out = mechanism("local", patch_size=P, window=window, block=4)(q, k, v)
    qp, kp, vals = query_patches(q, P)[0], key_patches(k, P)[0], key_centre_values(v, P)[0]
    gh, gw = 10 - P + 1, 9 - P + 1
    ky, kx = torch.meshgrid(torch.arange(gh) + 1, torch.arange(gw) + 1, indexing="ij")
    ky, kx = ky.flatten(), kx.flatten()
    expected = torch.zeros(9 * 11, 2, dtype=torch.float64)
    for i in range(9 * 11):
        y, x = divmod(i, 11)
        cy, cx = int((y + 0.5) * 10 / 9), int((x + 0.5) * 9 / 11)
        low_y, low_x = cy - window // 2, cx - window // 2
        inside = (ky >= low_y) & (ky < low_y + window) & (kx >= low_x) & (kx < low_x + window)
        if inside.any():
            weights = torch.softmax(-((qp[i] - kp[inside]) ** 2).sum(-1), 0)
            expected[i] = weights @ vals[inside]
    torch.testing.assert_close(out[0].flatten(1).T, expected, rtol=1e-9, atol=1e-9)


def test_local_estimate_is_linear_in_n_for_a_fixed_window():
    m = mechanism("local", patch_size=7, window=16)
    small, large = (m.estimate(ProblemShape.square(s, 16, 7, mode="fwd+bwd")) for s in (128, 256))
    assert 3.0 < large.memory_bytes / small.memory_bytes < 5.0
    assert 3.0 < large.flops / small.flops < 5.0


def test_linear_attention_formula():
    q, k, v = inputs(b=2, hq=10, wq=11, hk=12, wk=9, dtype=torch.float64)
    out = mechanism("linear", patch_size=P)(q, k, v)
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    fq, fk = phi(query_patches(q, P)), phi(key_patches(k, P))
    vals = key_centre_values(v, P)
    weights = fq @ fk.transpose(1, 2)  # explicit nq x nk kernel matrix
    expected = (weights / weights.sum(-1, keepdim=True)) @ vals
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), expected)


def test_efficient_attention_formula():
    q, k, v = inputs(b=2, hq=10, wq=11, dtype=torch.float64)
    out = mechanism("efficient", patch_size=P)(q, k, v)
    qp, kp, vals = query_patches(q, P), key_patches(k, P), key_centre_values(v, P)
    d = qp.shape[-1]
    expected = (qp.softmax(-1) * d**-0.5) @ (kp.softmax(1).transpose(1, 2) @ vals)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), expected)


@pytest.mark.parametrize("name", ["linear", "efficient", "performer", "reformer"])
def test_dot_only_mechanisms_refuse_l2(name):
    assert mechanism(name).similarity == "dot"
    with pytest.raises(UnsupportedRequest, match="l2"):
        mechanism(name, similarity="l2")


def test_linear_refuses_a_temperature():
    with pytest.raises(UnsupportedRequest, match="temperature"):
        mechanism("linear", temperature=2.0)


def test_performer_seeding():
    q, k, v = inputs(b=2)
    state = torch.random.get_rng_state()
    a, b = mechanism("performer", patch_size=P, seed=7), mechanism("performer", patch_size=P, seed=7)
    other = mechanism("performer", patch_size=P, seed=8)
    out_a = a(q, k, v)
    assert torch.equal(torch.random.get_rng_state(), state), "performer must not touch the global RNG"
    torch.manual_seed(123)  # a different global state must not matter
    assert torch.equal(out_a, b(q, k, v))
    assert not torch.equal(out_a, other(q, k, v))
    single = torch.cat([a(q[i : i + 1], k[i : i + 1], v[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(out_a, single)
    d = 3 * P * P
    assert a.kernel(d, q.device).nb_features == int(d * torch.log(torch.tensor(float(d))).item())
    assert mechanism("performer", patch_size=P, nb_features=16).kernel(d, q.device).nb_features == 16


def test_performer_approximates_softmax_with_many_features():
    q, k, v = inputs(c=2, dtype=torch.float64)
    q, k = q * 0.3, k * 0.3
    approx = mechanism("performer", patch_size=P, nb_features=20000, temperature=4.0)(q, k, v)
    exact = reference(q, k, v, "dot", 4.0)
    assert (approx - exact).abs().mean() < 0.1 * exact.abs().mean()


def test_reformer_cross_attention_and_padding():
    m = mechanism("reformer", patch_size=P, bucket_size=8, n_hashes=2, seed=3)
    q, k, v = inputs(b=2, hq=7, wq=9, hk=11, wk=10)
    nq, nk = 7 * 9, (11 - 2) * (10 - 2)
    assert m.padded_length(nq + nk) == 144  # 63 + 72 = 135 -> next multiple of 16
    assert m.padded_length(128) == 128
    state = torch.random.get_rng_state()
    out = m(q, k, v)
    assert torch.equal(torch.random.get_rng_state(), state), "reformer must not touch the global RNG"
    assert out.shape == (2, 2, 7, 9) and torch.isfinite(out).all()
    assert torch.equal(out, mechanism("reformer", patch_size=P, bucket_size=8, n_hashes=2, seed=3)(q, k, v))
    single = torch.cat([m(q[i : i + 1], k[i : i + 1], v[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(out, single)
    # the output is a convex combination of key values and the zero values of queries/padding
    lo, hi = v.amin(dim=(2, 3)).clamp(max=0), v.amax(dim=(2, 3)).clamp(min=0)
    assert (out >= lo[..., None, None] - 1e-5).all() and (out <= hi[..., None, None] + 1e-5).all()


def test_reformer_with_one_bucket_and_keys_only_masking_matches_shared_qk_attention():
    """With a single chunk pair every vector sees all others: check against the library's own rule."""
    m = mechanism("reformer", patch_size=P, bucket_size=64, n_hashes=1, seed=0)
    q, k, v = inputs(hq=4, wq=4, hk=6, wk=6, dtype=torch.float64)  # 16 + 16 vectors -> one chunk of 128
    out = m(q, k, v)
    qp, kp, vals = query_patches(q, P)[0], key_patches(k, P)[0], key_centre_values(v, P)[0]
    seq = torch.cat([qp, kp])
    values = torch.cat([torch.zeros(16, 2, dtype=torch.float64), vals])
    scores = qp @ F.normalize(seq, dim=-1).T
    scores[torch.arange(16), torch.arange(16)] = -5e4  # the library's self-attention penalty
    expected = torch.softmax(scores, -1) @ values
    torch.testing.assert_close(out[0].flatten(1).T, expected)


def test_xformers_reported_unavailable_with_a_reason():
    info = plugins()["flash-xformers"]
    if info.availability.ok:
        pytest.skip("xformers ops load on this machine")
    assert "xformers" in info.availability.reason
    assert "\n" not in info.availability.reason
    assert str(info.availability).startswith("unavailable: ")


def test_full_estimate_marks_512_px_infeasible():
    est = mechanism("full", patch_size=7).estimate(ProblemShape.square(512, 16, 7))
    assert est.memory_bytes > 250 * 2**30  # the paper's 250 GB similarity matrix, at least
    flash = mechanism("flash", patch_size=7).estimate(ProblemShape.square(512, 16, 7))
    assert flash.memory_bytes < 4 * 2**30
