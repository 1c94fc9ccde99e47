"""Tests of the PSAL CUDA kernels (native/psal_cuda.cu).

Three layers, so that the CUDA code is tested even where no GPU is lent:

1. ``test_compile_cuda_script`` (slow, needs nvcc): ``.ci/compile_cuda.sh`` compiles psal_cuda.cu
   with nvcc against torch's headers, compiles psal_cpu.cpp with -DWITH_CUDA, and checks that
   every ``*_cuda`` symbol psal_cpu.cpp binds is defined by psal_cuda.o.
2. Backend ``emu`` (slow, needs a C++ compiler): psal_cpu.cpp + psal_cuda.cu built as one CPU
   extension with ``-DPSAL_CUDA_EMULATE`` (native/psal_cuda.cuh): the CUDA kernel bodies and host
   code run serially on the CPU, and are checked against the CPU kernels of the same build; once
   per costing variant of the search (``emu`` = thread, ``emu-group4``, ``emu-group32``: the
   group variants' lanes replayed in one thread, butterfly order and shared-memory slots kept).
3. Backend ``cuda`` (``gpu`` marker, skipped without a CUDA device): the production extension
   (plugins/psal_build.py, built with CUDA), the same checks on the GPU, plus search quality
   against the exact k-NN and the pure-PyTorch reference, gradcheck through the registered ops,
   backward determinism, float16 / bfloat16.

Exact agreement: with small integer-valued inputs every patch cost is an exact integer in any
summation order, so the CUDA search must make exactly the CPU search's decisions (same RNG, same
candidate order, same tie rule): identical indices and identical evaluation counts.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"
COMPILE_SCRIPT = ROOT / ".ci" / "compile_cuda.sh"


# ------------------------------------------------------------------------ 1. nvcc compile check
@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="nvcc not installed")
def test_compile_cuda_script() -> None:
    # the default kernels and one group variant (each nvcc pass takes minutes on 2 cores); CI's own
    # compile step builds the group variants' extremes, the CPU emulation proves every variant's matches
    env = {**os.environ, "PYTHON": sys.executable, "PSAL_CUDA_VARIANT_LIST": "group32"}
    res = subprocess.run(["bash", str(COMPILE_SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "compile_cuda: OK native/psal_cuda.cu" in out
    assert "compile_cuda: PASS" in out
    assert "compile_cuda: OK variant group32 (" in out
    if (NATIVE / "psal_cpu.cpp").exists():
        for fn in ("psal_search_cuda", "psal_similarity_cuda", "psal_similarity_backward_cuda", "psal_attend_cuda",
                   "psal_attend_backward_cuda"):
            assert f"compile_cuda: OK symbol {fn}(" in out, fn


def test_compile_script_fails_on_broken_source(tmp_path: Path) -> None:
    """The CI step must fail (non-zero, with the reason) when the .cu does not compile."""
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        pytest.skip("nvcc not installed")
    fake = tmp_path / "repo"
    (fake / ".ci").mkdir(parents=True)
    (fake / "native").mkdir()
    shutil.copy(COMPILE_SCRIPT, fake / ".ci" / "compile_cuda.sh")
    (fake / "native" / "psal_cuda.cu").write_text("__global__ void k() { this is not C++; }\n")
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(fake / ".ci" / "compile_cuda.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert "FAIL: nvcc failed on native/psal_cuda.cu" in res.stderr


def test_cuda_variant_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNBENCH_PSAL_CUDA_VARIANT picks the compile-time switch and its own cache entry; a typo fails."""
    from attnbench_plugins import psal_build

    sources = [NATIVE / "psal_cpu.cpp", NATIVE / "psal_cuda.cu"]
    monkeypatch.delenv(psal_build.CUDA_VARIANT_ENV, raising=False)
    assert psal_build.cuda_variant() == "thread"
    default_name = psal_build._module_name(sources, True)
    monkeypatch.setenv(psal_build.CUDA_VARIANT_ENV, "Group16")
    assert psal_build.cuda_variant() == "group16"
    assert psal_build.CUDA_VARIANTS["group16"] == ("-DPSAL_CUDA_VARIANT=1", "-DPSAL_CUDA_GROUP=16")
    assert psal_build._module_name(sources, True) != default_name
    assert psal_build._module_name(sources[:1], False) == psal_build._module_name(sources[:1], False)
    monkeypatch.setenv(psal_build.CUDA_VARIANT_ENV, "warp")
    with pytest.raises(RuntimeError, match="group8"):
        psal_build.cuda_variant()


# ------------------------------------------------------------------------------- the backends
def _ext_root() -> Path:
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "attnbench" / "torch_extensions"


_EMU: dict[str, dict[str, object]] = {}
#: the CUDA costing variants the emulation builds and checks (plugins/psal_build.py's names)
EMULATED_VARIANTS = ("thread", "group4", "group32")


def _emulation_module(variant: str = "thread") -> ModuleType:
    """psal_cpu.cpp + psal_cuda.cu (PSAL_CUDA_EMULATE, one costing variant) as one CPU extension,
    cached by content."""
    from attnbench_plugins.psal_build import CUDA_VARIANTS

    built = _EMU.setdefault(variant, {})
    if "module" in built:
        return built["module"]  # type: ignore[return-value]
    if "error" in built:
        pytest.fail(str(built["error"]))
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    from torch.utils.cpp_extension import load

    files = [NATIVE / n for n in ("psal.h", "psal_cpu.cpp", "psal_cuda.cu", "psal_cuda.cuh")]
    flags = list(CUDA_VARIANTS[variant])
    digest = hashlib.sha1(torch.__version__.encode() + " ".join(flags).encode())
    for f in files:
        digest.update(f.read_bytes())
    name = f"attnbench_psal_cudaemu_{digest.hexdigest()[:10]}"
    directory = _ext_root() / name
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "psal_cuda_emulated.cpp"
    wrapper.write_text('// generated by tests/test_psal_cuda.py\n#include "psal_cuda.cu"\n')
    try:
        mod = load(
            name=name,
            sources=[str(NATIVE / "psal_cpu.cpp"), str(wrapper)],
            extra_cflags=["-O2", "-fopenmp", "-DWITH_CUDA", "-DPSAL_CUDA_EMULATE", "-Wno-unknown-pragmas", *flags],
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(NATIVE)],
            build_directory=str(directory),
            with_cuda=False,
        )
    except Exception as exc:  # a compile error in psal_cuda.cu is a test failure, not a skip
        built["error"] = f"emulation build ({variant}) failed: {type(exc).__name__}: {exc}"
        pytest.fail(str(built["error"]))
    built["module"] = mod
    return mod


@dataclass
class Kernels:
    """One extension module holding both *_cpu and *_cuda functions, and where *_cuda runs."""

    mod: ModuleType
    device: str

    def dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    # the CUDA kernels (inputs moved to the device, outputs back to the CPU)
    def search(self, q, k, valid, p, K, iters, dot, seed, *rest):
        rest = tuple(self.dev(a) if isinstance(a, torch.Tensor) else a for a in rest)  # schedule, init, limits
        idx, ev = self.mod.psal_search_cuda(self.dev(q), self.dev(k), self.dev(valid), p, K, iters, dot, seed, *rest)
        assert idx.device.type == self.device and ev.device.type == self.device
        return idx.cpu(), ev.cpu()

    def similarity(self, q, k, idx, p, dot):
        return self.mod.psal_similarity_cuda(self.dev(q), self.dev(k), self.dev(idx), p, dot).cpu()

    def similarity_backward(self, gs, q, k, idx, p, dot, need_q=True, need_k=True):
        gq, gk = self.mod.psal_similarity_backward_cuda(self.dev(gs), self.dev(q), self.dev(k), self.dev(idx), p, dot,
                                                        need_q, need_k)
        return (gq.cpu() if gq is not None else None), (gk.cpu() if gk is not None else None)

    def attend(self, s, idx, v, p, agg, temp):
        out, lse = self.mod.psal_attend_cuda(self.dev(s), self.dev(idx), self.dev(v), p, agg, temp)
        return out.cpu(), lse.cpu()

    def attend_backward(self, go, s, idx, v, out, lse, p, agg, temp, need_s=True, need_v=True):
        gs, gv = self.mod.psal_attend_backward_cuda(self.dev(go), self.dev(s), self.dev(idx), self.dev(v),
                                                    self.dev(out), self.dev(lse), p, agg, temp, need_s, need_v)
        return (gs.cpu() if gs is not None else None), (gv.cpu() if gv is not None else None)


def _gpu_module() -> ModuleType:
    from attnbench_plugins import psal_build

    mod = psal_build.load_extension()
    assert psal_build.has_device_kernels("cuda"), (
        "a CUDA device is present but the PSAL extension was built without its CUDA kernels "
        "(is nvcc on PATH / CUDA_HOME set?)"
    )
    return mod


@pytest.fixture(
    scope="module",
    params=[pytest.param("emu" if v == "thread" else f"emu-{v}", marks=pytest.mark.slow) for v in EMULATED_VARIANTS]
    + [pytest.param("cuda", marks=pytest.mark.gpu)],
)
def kern(request) -> Kernels:
    if request.param.startswith("emu"):
        return Kernels(_emulation_module(request.param.partition("-")[2] or "thread"), "cpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return Kernels(_gpu_module(), "cuda")


# ----------------------------------------------------------------------------------- inputs
# the valid-centre map and the small-integer images are attnbench check's own (plugins/psal_checks.py)
from attnbench_plugins.psal_checks import _int_images as _check_int_images
from attnbench_plugins.psal_checks import _valid as _check_valid


def _valid(B: int, hk: int, wk: int, p: int, hole: bool = False) -> torch.Tensor:
    return _check_valid(B, hk, wk, p, hole)


def _int_images(B, C, hq, wq, hk, wk, seed, levels=4, dtype=torch.float32):
    """Small-integer images (exact costs in any order); k is partly a shifted copy of q."""
    return _check_int_images(B, C, hq, wq, hk, wk, seed, dtype=dtype, levels=levels)


def _smooth_images(B, C, hq, wq, hk, wk, seed, dtype=torch.float32):
    """Real-valued images with spatial structure (blurred noise), k a shifted noisy copy of q."""
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(B, C, max(hq, hk) + 8, max(wq, wk) + 8, generator=g, dtype=torch.float64)
    big = torch.nn.functional.avg_pool2d(big, 5, stride=1, padding=2)
    q = big[:, :, :hq, :wq]
    k = big[:, :, 3 : 3 + hk, 2 : 2 + wk] + 0.05 * torch.randn(B, C, hk, wk, generator=g, dtype=torch.float64)
    return q.contiguous().to(dtype), k.contiguous().to(dtype)


def _check_heaps(idx: torch.Tensor, valid: torch.Tensor) -> None:
    """Every entry is a matchable centre and the K entries of a query are distinct."""
    B, hq, wq, K = idx.shape
    flat = valid.flatten(1)
    assert (idx >= 0).all() and (idx < flat.shape[1]).all()
    assert torch.gather(flat, 1, idx.reshape(B, -1)).all(), "an entry is not a matchable key centre"
    if K > 1:
        s = idx.sort(-1).values
        assert (s[..., 1:] != s[..., :-1]).all(), "duplicate index in a heap"


# ------------------------------------------------------------------------- search: exact match
SEARCH_CASES = [
    # (B, C, hq, wq, hk, wk, p, K, iters, dot, hole)
    (2, 3, 13, 11, 15, 17, 3, 1, 2, False, False),
    (2, 3, 13, 11, 15, 17, 5, 3, 3, False, True),
    (1, 2, 12, 14, 12, 14, 7, 3, 2, True, False),
    (2, 2, 9, 10, 16, 13, 3, 7, 2, False, True),  # local heap, capacity bucket 32
    (1, 2, 8, 9, 14, 15, 3, 31, 1, False, False),  # k = 31
    (1, 1, 7, 6, 13, 12, 1, 40, 2, True, False),  # k > 32: heap in global memory
    (1, 2, 10, 10, 11, 11, 3, 2, 0, False, False),  # initialisation only
    (2, 2, 37, 41, 19, 23, 3, 2, 3, False, True),  # several CPU wavefront tiles (16 x 16)
]


#: every search case, on both schedules
SEARCH_GRID = pytest.mark.parametrize("case, schedule", [(c, s) for c in SEARCH_CASES for s in (0, 1)], ids=[
    f"{'jacobi' if s == 0 else 'wavefront'}-B{c[0]}p{c[6]}k{c[7]}it{c[8]}{'dot' if c[9] else 'l2'}{'-hole' if c[10] else ''}"
    for c in SEARCH_CASES for s in (0, 1)])


def _search_case(case: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """A search case's query and key images and valid-key mask, and the (B, hq, wq, p, K, iters, dot) they need."""
    B, C, hq, wq, hk, wk, p, K, iters, dot, hole = case
    q, k = _int_images(B, C, hq, wq, hk, wk, seed=hq * 31 + K)
    return q, k, _valid(B, hk, wk, p, hole), (B, hq, wq, p, K, iters, dot)


@SEARCH_GRID
def test_search_matches_cpu_exactly(kern: Kernels, case, schedule) -> None:
    q, k, valid, (B, hq, wq, p, K, iters, dot) = _search_case(case)
    idx_c, ev_c = kern.mod.psal_search_cpu(q, k, valid, p, K, iters, dot, 1234, schedule)
    idx_g, ev_g = kern.search(q, k, valid, p, K, iters, dot, 1234, schedule)
    assert idx_g.dtype == torch.long and idx_g.shape == (B, hq, wq, K)
    _check_heaps(idx_g, valid)
    assert torch.equal(idx_g, idx_c), f"{(idx_g != idx_c).sum().item()} entries differ from the CPU kernel"
    assert torch.equal(ev_g, ev_c), (ev_g, ev_c)
    # a different seed gives a different search
    idx_2, _ = kern.search(q, k, valid, p, K, max(iters, 1), dot, 99, schedule)
    idx_1, _ = kern.search(q, k, valid, p, K, max(iters, 1), dot, 1234, schedule)
    assert not torch.equal(idx_1, idx_2)


@SEARCH_GRID
def test_search_from_a_given_field_matches_cpu_exactly(kern: Kernels, case, schedule) -> None:
    # psal.h's init field: the given entries first (negative, off-border, repeated ones skipped,
    # uncounted), then the random fill; int64 and int32 fields, more and fewer entries than K
    from attnbench_plugins.psal_checks import _given_field

    q, k, valid, (_, _, _, p, K, iters, dot) = _search_case(case)
    start, _ = kern.mod.psal_search_cpu(q, k, valid, p, K, 1, dot, 5, schedule)
    for k0, dtype in ((K + 2, torch.long), (max(K - 1, 1), torch.int32)):
        init = _given_field(start, k0, seed=K).to(dtype)
        idx_c, ev_c = kern.mod.psal_search_cpu(q, k, valid, p, K, iters, dot, 1234, schedule, init)
        idx_g, ev_g = kern.search(q, k, valid, p, K, iters, dot, 1234, schedule, init)
        _check_heaps(idx_g, valid)
        assert torch.equal(idx_g, idx_c), f"{(idx_g != idx_c).sum().item()} entries differ from the CPU kernel"
        assert torch.equal(ev_g, ev_c), (ev_g, ev_c)
    plain, _ = kern.search(q, k, valid, p, K, iters, dot, 1234, schedule)
    assert not torch.equal(plain, idx_g)  # the field was read


@SEARCH_GRID
def test_reach_limited_search_matches_cpu_exactly(kern: Kernels, case, schedule) -> None:
    # psal.h's reach limits (random-search levels skipped, fewer jump steps), from a random start
    # and from a given field
    from attnbench_plugins.psal_checks import REACH_LIMITS, _given_field

    q, k, valid, (_, _, _, p, K, iters, dot) = _search_case(case)
    start, _ = kern.mod.psal_search_cpu(q, k, valid, p, K, 1, dot, 5, schedule)
    for init in (None, _given_field(start, K + 1, seed=K)):
        idx_c, ev_c = kern.mod.psal_search_cpu(q, k, valid, p, K, iters, dot, 1234, schedule, init, *REACH_LIMITS)
        idx_g, ev_g = kern.search(q, k, valid, p, K, iters, dot, 1234, schedule, init, *REACH_LIMITS)
        _check_heaps(idx_g, valid)
        assert torch.equal(idx_g, idx_c), f"{(idx_g != idx_c).sum().item()} entries differ from the CPU kernel"
        assert torch.equal(ev_g, ev_c), (ev_g, ev_c)


def test_pyramid_search_matches_cpu_exactly(kern: Kernels) -> None:
    # init=pyramid is shared Python over the search op: each level (its own patch, heap width and
    # iterations, seeded by the coarser level's best entries) on the CUDA kernels = on the CPU one
    from attnbench_plugins.psal_checks import PYRAMID_CASES, _same_pyramids

    def cuda_search(q, k, valid, p, K, iters, dot, seed, schedule, init, *limits):  # type: ignore[no-untyped-def]
        return kern.search(q, k, valid, p, K, iters, dot, seed, schedule, init, *limits)

    assert _same_pyramids(kern.mod.psal_search_cpu, cuda_search).startswith(f"{len(PYRAMID_CASES)} cases")


@pytest.mark.parametrize("p", list(range(1, 24, 2)))
def test_every_odd_patch_size(kern: Kernels, p: int) -> None:
    """p = 1..23 all run (the original CUDA code silently did nothing for p = 13)."""
    B, C, hq, wq, hk, wk, K = 1, 2, 9, 10, 26, 27, 2
    q, k = _int_images(B, C, hq, wq, hk, wk, seed=p, levels=3)
    valid = _valid(B, hk, wk, p)
    idx_c, ev_c = kern.mod.psal_search_cpu(q, k, valid, p, K, 2, False, 7)
    idx_g, ev_g = kern.search(q, k, valid, p, K, 2, False, 7)
    _check_heaps(idx_g, valid)
    assert torch.equal(idx_g, idx_c) and torch.equal(ev_g, ev_c)
    assert ev_g.item() >= hq * wq * K  # at least the initialisation evaluated something
    s_g = kern.similarity(q, k, idx_g, p, False)
    s_c = kern.mod.psal_similarity_cpu(q, k, idx_c, p, False)
    assert torch.equal(s_g, s_c)  # integer costs: exact
    assert (s_g[..., 1:] <= s_g[..., :-1]).all(), "heap not sorted best first"
    # the patch really has size p: the cost of the best match is the explicit p x p sum
    r = p // 2
    qpad = torch.nn.functional.pad(q, (r, r, r, r), mode="replicate")
    j = idx_g[0, 4, 5, 0].item()
    cy, cx = divmod(j, wk)
    ref = ((qpad[0, :, 4 : 4 + p, 5 : 5 + p] - k[0, :, cy - r : cy + r + 1, cx - r : cx + r + 1]) ** 2).sum()
    assert s_g[0, 4, 5, 0].item() == -ref.item()


def test_masked_semantics(kern: Kernels) -> None:
    """No match ever touches the hole; queries inside the hole still get k valid matches."""
    B, C, h, w, p, K = 2, 3, 20, 22, 5, 3
    q, k = _int_images(B, C, h, w, h, w, seed=5)
    valid = _valid(B, h, w, p, hole=True)
    idx, _ = kern.search(q, k, valid, p, K, 3, False, 3)
    _check_heaps(idx, valid)
    ky, kx = idx // w, idx % w
    r = p // 2
    mask = torch.zeros(B, h, w, dtype=torch.bool)
    mask[:, h // 4 : h // 2 + 1, w // 3 : (2 * w) // 3] = True
    mask[1:, 1:3, 1:4] = True
    for b in range(B):
        for y, x in zip(ky[b].flatten().tolist(), kx[b].flatten().tolist()):
            assert not mask[b, y - r : y + r + 1, x - r : x + r + 1].any()
    # too few matchable keys for k: an error, not garbage
    tiny = torch.zeros(B, h, w, dtype=torch.bool)
    tiny[:, 5, 5:7] = True
    with pytest.raises(RuntimeError, match="matchable"):
        kern.search(q, k, tiny, p, 3, 1, False, 0)


def test_reduced_precision_search_matches_float32(kern: Kernels) -> None:
    """float16 / bfloat16 inputs accumulate in float32: on integer data, the float32 CPU result."""
    B, C, hq, wq, hk, wk, p, K = 1, 3, 12, 12, 14, 15, 5, 3
    q, k = _int_images(B, C, hq, wq, hk, wk, seed=11)
    valid = _valid(B, hk, wk, p)
    idx_c, ev_c = kern.mod.psal_search_cpu(q, k, valid, p, K, 3, False, 5)
    for dt in (torch.float16, torch.bfloat16):
        idx_g, ev_g = kern.search(q.to(dt), k.to(dt), valid, p, K, 3, False, 5)
        assert torch.equal(idx_g, idx_c) and torch.equal(ev_g, ev_c), dt


# ------------------------------------------------------------- similarity / attend vs CPU kernels
def _problem(seed: int, dot: bool, B=2, C=3, hq=9, wq=8, hk=11, wk=12, Cv=4, p=3, K=3, dtype=torch.float64):
    q, k = _smooth_images(B, C, hq, wq, hk, wk, seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    v = torch.randn(B, Cv, hk, wk, generator=g, dtype=dtype)
    valid = _valid(B, hk, wk, p)
    return q, k, v, valid


@pytest.mark.parametrize("dot", [False, True])
@pytest.mark.parametrize("agg", [False, True])
def test_similarity_and_attend_match_cpu(kern: Kernels, dot: bool, agg: bool) -> None:
    p, K, T = 3, 3, 0.7
    q, k, v, valid = _problem(3, dot, p=p, K=K)
    idx, _ = kern.mod.psal_search_cpu(q, k, valid, p, K, 2, dot, 1)
    s_c = kern.mod.psal_similarity_cpu(q, k, idx, p, dot)
    s_g = kern.similarity(q, k, idx, p, dot)
    torch.testing.assert_close(s_g, s_c, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(4)
    gs = torch.randn(s_c.shape, generator=g, dtype=s_c.dtype)
    for nq_, nk_ in ((True, True), (True, False), (False, True)):
        gq_c, gk_c = kern.mod.psal_similarity_backward_cpu(gs, q, k, idx, p, dot, nq_, nk_)
        gq_g, gk_g = kern.similarity_backward(gs, q, k, idx, p, dot, nq_, nk_)
        assert (gq_g is None) == (not nq_) and (gk_g is None) == (not nk_)
        if nq_:
            torch.testing.assert_close(gq_g, gq_c, rtol=1e-10, atol=1e-10)
        if nk_:
            torch.testing.assert_close(gk_g, gk_c, rtol=1e-10, atol=1e-10)
    s = s_c / 10  # scores of a sensible magnitude for the softmax
    out_c, lse_c = kern.mod.psal_attend_cpu(s, idx, v, p, agg, T)
    out_g, lse_g = kern.attend(s, idx, v, p, agg, T)
    torch.testing.assert_close(out_g, out_c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse_g, lse_c, rtol=1e-12, atol=1e-12)
    go = torch.randn(out_c.shape, generator=g, dtype=out_c.dtype)
    gs_c, gv_c = kern.mod.psal_attend_backward_cpu(go, s, idx, v, out_c, lse_c, p, agg, T, True, True)
    gs_g, gv_g = kern.attend_backward(go, s, idx, v, out_c, lse_c, p, agg, T)
    torch.testing.assert_close(gs_g, gs_c, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gv_g, gv_c, rtol=1e-10, atol=1e-10)


def test_large_patch_backward_matches_cpu(kern: Kernels) -> None:
    """Border handling of the gather backward with a patch larger than the query image."""
    p, K = 9, 2
    q, k, v, valid = _problem(8, False, hq=5, wq=7, hk=13, wk=12, p=p, K=K)
    idx, _ = kern.mod.psal_search_cpu(q, k, valid, p, K, 1, False, 2)
    gs = torch.randn(idx.shape, dtype=torch.float64)
    gq_c, gk_c = kern.mod.psal_similarity_backward_cpu(gs, q, k, idx, p, False, True, True)
    gq_g, gk_g = kern.similarity_backward(gs, q, k, idx, p, False)
    torch.testing.assert_close(gq_g, gq_c, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gk_g, gk_c, rtol=1e-10, atol=1e-10)
    s = kern.mod.psal_similarity_cpu(q, k, idx, p, False) / 50
    out, lse = kern.mod.psal_attend_cpu(s, idx, v, p, True, 1.0)
    go = torch.randn(out.shape, dtype=torch.float64)
    gs_c, gv_c = kern.mod.psal_attend_backward_cpu(go, s, idx, v, out, lse, p, True, 1.0, True, True)
    gs_g, gv_g = kern.attend_backward(go, s, idx, v, out, lse, p, True, 1.0)
    torch.testing.assert_close(gs_g, gs_c, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gv_g, gv_c, rtol=1e-10, atol=1e-10)


class _Sim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, idx, p, dot, kern):
        ctx.save_for_backward(q, k, idx)
        ctx.p, ctx.dot, ctx.kern = p, dot, kern
        return kern.mod.psal_similarity_cuda(q, k, idx, p, dot)

    @staticmethod
    def backward(ctx, gs):
        q, k, idx = ctx.saved_tensors
        gq, gk = ctx.kern.mod.psal_similarity_backward_cuda(gs.contiguous(), q, k, idx, ctx.p, ctx.dot,
                                                            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gq, gk, None, None, None, None


class _Attend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, idx, v, p, agg, temp, kern):
        out, lse = kern.mod.psal_attend_cuda(s, idx, v, p, agg, temp)
        ctx.save_for_backward(s, idx, v, out, lse)
        ctx.p, ctx.agg, ctx.temp, ctx.kern = p, agg, temp, kern
        return out

    @staticmethod
    def backward(ctx, go):
        s, idx, v, out, lse = ctx.saved_tensors
        gs, gv = ctx.kern.mod.psal_attend_backward_cuda(go.contiguous(), s, idx, v, out, lse, ctx.p, ctx.agg, ctx.temp,
                                                        ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        return gs, None, gv, None, None, None, None


@pytest.mark.parametrize("dot,agg,cross", [(False, False, False), (True, False, True), (False, True, True)])
def test_gradcheck_float64(kern: Kernels, dot: bool, agg: bool, cross: bool) -> None:
    """gradcheck of attend(similarity(q, k, idx), idx, v) through the CUDA kernels, idx fixed."""
    p, K = 3, 3
    hk, wk = (7, 8) if cross else (6, 7)
    q, k, v, valid = _problem(12, dot, B=2, C=2, hq=6, wq=7, hk=hk, wk=wk, Cv=2, p=p, K=K)
    idx, _ = kern.mod.psal_search_cpu(q, k, valid, p, K, 2, dot, 3)
    q, k, v, idx = (kern.dev(t) for t in (q, k, v, idx))
    q = (q / 3).requires_grad_()
    k = (k / 3).requires_grad_()
    v = v.requires_grad_()

    def f(q, k, v):
        return _Attend.apply(_Sim.apply(q, k, idx, p, dot, kern), idx, v, p, agg, 0.5, kern)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_backward_is_deterministic(kern: Kernels) -> None:
    """Gather formulation: two backward passes are bitwise identical (no float atomics)."""
    p, K = 5, 8
    q, k, v, valid = _problem(21, False, B=2, C=3, hq=24, wq=24, hk=24, wk=24, Cv=3, p=p, K=K, dtype=torch.float32)
    idx, _ = kern.search(q, k, valid, p, K, 2, False, 0)
    s = kern.similarity(q, k, idx, p, False) / 20
    gs = torch.randn(s.shape)
    r1 = kern.similarity_backward(gs, q, k, idx, p, False)
    r2 = kern.similarity_backward(gs, q, k, idx, p, False)
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
    out, lse = kern.attend(s, idx, v, p, True, 1.0)
    go = torch.randn(out.shape)
    a1 = kern.attend_backward(go, s, idx, v, out, lse, p, True, 1.0)
    a2 = kern.attend_backward(go, s, idx, v, out, lse, p, True, 1.0)
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    i1 = kern.search(q, k, valid, p, K, 2, False, 0)
    assert torch.equal(i1[0], idx)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_ops(kern: Kernels, dtype: torch.dtype) -> None:
    """float16 / bfloat16 forward and backward (float32 accumulation) against float64."""
    p, K, T = 3, 3, 1.0
    q, k, v, valid = _problem(31, False, B=1, C=3, hq=10, wq=9, hk=11, wk=12, Cv=4, p=p, K=K)
    idx, _ = kern.mod.psal_search_cpu(q, k, valid, p, K, 2, False, 1)
    tol = dict(rtol=2e-2, atol=5e-2) if dtype == torch.float16 else dict(rtol=8e-2, atol=2e-1)
    s64 = kern.mod.psal_similarity_cpu(q, k, idx, p, False)
    s_r = kern.similarity(q.to(dtype), k.to(dtype), idx, p, False)
    assert s_r.dtype == dtype
    torch.testing.assert_close(s_r.double(), s64, **tol)
    gs = torch.randn(idx.shape, dtype=torch.float64)
    gq64, gk64 = kern.mod.psal_similarity_backward_cpu(gs, q, k, idx, p, False, True, True)
    gq_r, gk_r = kern.similarity_backward(gs.to(dtype), q.to(dtype), k.to(dtype), idx, p, False)
    assert gq_r.dtype == dtype and gk_r.dtype == dtype
    torch.testing.assert_close(gq_r.double(), gq64, **tol)
    torch.testing.assert_close(gk_r.double(), gk64, **tol)
    s = (s64 / 5).to(dtype).double()  # the same (rounded) scores for both
    out64, lse64 = kern.mod.psal_attend_cpu(s, idx, v, p, True, T)
    out_r, lse_r = kern.attend(s.to(dtype), idx, v.to(dtype), p, True, T)
    assert out_r.dtype == dtype and lse_r.dtype == dtype
    torch.testing.assert_close(out_r.double(), out64, **tol)
    go = torch.randn(out64.shape, dtype=torch.float64)
    gs64, gv64 = kern.mod.psal_attend_backward_cpu(go, s, idx, v, out64, lse64, p, True, T, True, True)
    gs_r, gv_r = kern.attend_backward(go.to(dtype), s.to(dtype), idx, v.to(dtype), out_r, lse_r, p, True, T)
    torch.testing.assert_close(gs_r.double(), gs64, **tol)
    torch.testing.assert_close(gv_r.double(), gv64, **tol)


# --------------------------------------------------------------- search quality (real-valued)
def _exact_best_cost(q: torch.Tensor, k: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-NN (l2) per query: (cost (B, nq), key centre flat index (B, nq))."""
    from attnbench.patches import key_index_to_centre, key_patches, query_patches, similarity_matrix

    qp, kp = query_patches(q.double(), p), key_patches(k.double(), p)
    s = similarity_matrix(qp, kp, "l2")
    best, j = s.max(-1)
    cy, cx = key_index_to_centre(j, (k.shape[2], k.shape[3]), p)
    return -best, cy * k.shape[3] + cx


def test_search_quality_vs_cpu_and_exact(kern: Kernels) -> None:
    """Energy within 2% of the CPU kernel and recall of the exact 1-NN within noise."""
    B, C, h, w, p, K, iters = 2, 3, 40, 40, 7, 3, 5
    q, k = _smooth_images(B, C, h, w, h, w, seed=2)
    valid = _valid(B, h, w, p)
    exact_cost, exact_j = _exact_best_cost(q, k, p)
    idx_c, ev_c = kern.mod.psal_search_cpu(q, k, valid, p, K, iters, False, 17)
    idx_g, ev_g = kern.search(q, k, valid, p, K, iters, False, 17)
    _check_heaps(idx_g, valid)
    qd, kd = q.double(), k.double()
    e_c = -kern.mod.psal_similarity_cpu(qd, kd, idx_c, p, False)[..., 0].mean().item()
    e_g = -kern.mod.psal_similarity_cpu(qd, kd, idx_g, p, False)[..., 0].mean().item()
    assert abs(e_g - e_c) <= 0.02 * e_c, (e_g, e_c)
    assert e_g >= exact_cost.mean().item() - 1e-9
    n = exact_j.numel()
    rec_c = (idx_c.reshape(B, -1, K) == exact_j[..., None]).any(-1).float().mean().item()
    rec_g = (idx_g.reshape(B, -1, K) == exact_j[..., None]).any(-1).float().mean().item()
    noise = 4 * (max(rec_c * (1 - rec_c), 0.01) / n) ** 0.5
    assert abs(rec_g - rec_c) <= noise + 0.01, (rec_g, rec_c)
    assert rec_g > 0.3, rec_g  # the search really converges towards the exact 1-NN
    assert abs(ev_g.sum().item() - ev_c.sum().item()) <= 0.02 * ev_c.sum().item()


# ------------------------------------------------------------------------- GPU-only checks
def _cuda_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.gpu
def test_gpu_reference_agreement_and_ops_dispatch() -> None:
    """The registered ops run the CUDA kernels on CUDA tensors, and agree with the PyTorch reference."""
    _cuda_or_skip()
    from attnbench_plugins import psal_ops, psal_reference

    mod = _gpu_module()
    assert psal_ops.prepare() == "native"
    B, C, h, w, p, K, iters = 1, 3, 32, 32, 5, 3, 4
    q, k = _smooth_images(B, C, h, w, h, w, seed=9)
    valid = _valid(B, h, w, p)
    qg, kg, vg = q.cuda(), k.cuda(), valid.cuda()
    idx_op, ev_op = torch.ops.attnbench.psal_search(qg, kg, vg, p, K, iters, False, 4)
    assert idx_op.is_cuda and ev_op.is_cuda
    idx_k, ev_k = mod.psal_search_cuda(qg, kg, vg, p, K, iters, False, 4)
    assert torch.equal(idx_op, idx_k) and torch.equal(ev_op, ev_k)
    idx_r, ev_r = psal_reference.search(qg, kg, vg, p, K, iters, False, 4)
    qd, kd = q.double(), k.double()
    e_k = -mod.psal_similarity_cpu(qd, kd, idx_k.cpu(), p, False)[..., 0].mean().item()
    e_r = -mod.psal_similarity_cpu(qd, kd, idx_r.cpu(), p, False)[..., 0].mean().item()
    assert abs(e_k - e_r) <= 0.02 * e_r, (e_k, e_r)
    assert abs(ev_k.item() - ev_r.item()) <= 0.02 * ev_r.item()
    # gradcheck through the registered ops (autograd formulas of psal_ops + CUDA kernels)
    qs = (q[:, :, :8, :8].double() / 3).cuda().requires_grad_()
    ks = (k[:, :, :9, :9].double() / 3).cuda().requires_grad_()
    vs = torch.randn(1, 2, 9, 9, dtype=torch.float64, device="cuda", requires_grad=True)
    idx, _ = torch.ops.attnbench.psal_search(qs.detach(), ks.detach(), _valid(1, 9, 9, 3).cuda(), 3, 3, 2, False, 0)

    def f(q_, k_, v_):
        s = torch.ops.attnbench.psal_similarity(q_, k_, idx, 3, False)
        return torch.ops.attnbench.psal_attend(s, idx, v_, 3, True, 0.5)[0]

    assert torch.autograd.gradcheck(f, (qs, ks, vs), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_large_batch_and_image() -> None:
    """One launch over a batch of 3 at 128x128 with k = 31: valid heaps, sorted scores, no error."""
    _cuda_or_skip()
    mod = _gpu_module()
    B, C, h, p, K = 3, 8, 128, 7, 31
    q, k = _smooth_images(B, C, h, h, h, h, seed=1)
    valid = _valid(B, h, h, p)
    idx, ev = mod.psal_search_cuda(q.cuda(), k.cuda(), valid.cuda(), p, K, 5, False, 0)
    torch.cuda.synchronize()
    _check_heaps(idx.cpu(), valid)
    assert (ev > 0).all()
    s = mod.psal_similarity_cuda(q.cuda(), k.cuda(), idx, p, False)
    assert torch.isfinite(s).all() and (s[..., 1:] <= s[..., :-1]).all()
