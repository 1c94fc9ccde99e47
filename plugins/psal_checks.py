"""PSAL's contribution to ``attnbench check`` (entry point group ``attnbench.checks``).

What a user must be able to trust before reading a PSAL figure: that the native kernel built
(and which backend each op runs on, and why), that the native CPU search makes exactly the
PyTorch reference's decisions, and on a GPU that the CUDA kernels make exactly the CPU kernel's
decisions (native/psal.h: same RNG, candidate order and tie rule). Exactness is checkable
because on small-integer images every patch cost is an exact integer in any summation order:
identical indices and identical evaluation counts are required, not "close".
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import ModuleType
from typing import Callable, Iterator

import torch

from attnbench.selfcheck import Check, CheckSkipped

#: a search kernel: (q, k, valid, p, K, iterations, dot, seed, schedule, init) -> (idx, n_evals)
SearchFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

OPS = ("psal_search", "psal_similarity", "psal_similarity_backward", "psal_attend", "psal_attend_backward")

#: (B, C, hq, wq, hk, wk, p, K, iterations, dot, hole): batch > 1, cross-attention, masks,
#: heap widths on both sides of the CUDA kernel's local-heap limit (32), p = 1 and 13 included
SEARCH_CASES = (
    (2, 3, 13, 11, 15, 17, 3, 1, 2, False, False),
    (2, 3, 13, 11, 15, 17, 5, 3, 3, False, True),
    (1, 2, 12, 14, 12, 14, 7, 3, 2, True, False),
    (2, 2, 9, 10, 16, 13, 3, 7, 2, False, True),
    (1, 2, 8, 9, 14, 15, 3, 31, 1, False, False),
    (1, 1, 7, 6, 13, 12, 1, 40, 2, True, False),
    (2, 2, 37, 41, 19, 23, 3, 2, 3, False, True),
    (1, 2, 9, 10, 30, 31, 13, 2, 2, False, False),
)


def _hole(B: int, hk: int, wk: int) -> torch.Tensor:
    """(B, 1, Hk, Wk) bool key mask: a block in the middle, and a different one per batch element."""
    mask = torch.zeros(B, 1, hk, wk, dtype=torch.bool)
    mask[:, :, hk // 4 : hk // 2 + 1, wk // 3 : (2 * wk) // 3] = True
    mask[1:, :, 1:3, 1:4] = True
    return mask


def _valid(B: int, hk: int, wk: int, p: int, hole: bool) -> torch.Tensor:
    """(B, Hk, Wk) matchable centres: whole patch inside the image and, with a hole, off it."""
    r = p // 2
    valid = torch.zeros(B, hk, wk, dtype=torch.bool)
    valid[:, r : hk - r, r : wk - r] = True
    if hole:
        touched = torch.nn.functional.max_pool2d(_hole(B, hk, wk).float(), p, stride=1)[:, 0] > 0
        valid[:, r : hk - r, r : wk - r] &= ~touched
    return valid


#: (B, C, hq, wq, hk, wk, p, K, iterations, hole, levels, scale): init=pyramid cases (coarse maps
#: of a few pixels, holes pooled with them, a level dropped where the key map gets too small)
PYRAMID_CASES = (
    (2, 3, 24, 28, 26, 22, 3, 2, 2, True, 2, 2),
    (1, 2, 33, 30, 30, 35, 5, 3, 1, False, 1, 2),
    (2, 2, 27, 27, 40, 31, 3, 1, 2, True, 3, 3),
)


#: psal.h's reach limits the checks run with: random-search radius <= 5 px (some levels skipped
#: on every case's key map), jumps of 1 and 2 only
REACH_LIMITS = (5, 2)


def _same_pyramids(first: SearchFn, second: SearchFn) -> str:
    """init=pyramid (psal_pyramid.coarse_to_fine, shared Python) over two search kernels: identical
    fields and counts. Integer images in multiples of the largest pooling area stay integers when
    pooled, so every cost is exact (float64)."""
    from attnbench_plugins import psal_contract, psal_pyramid

    for case, (B, C, hq, wq, hk, wk, p, K, iters, hole, levels, scale) in enumerate(PYRAMID_CASES):
        q, k = (t * scale ** (2 * levels) for t in _int_images(B, C, hq, wq, hk, wk, seed=hq + wk, dtype=torch.float64))
        mask = _hole(B, hk, wk) if hole else None
        valid = psal_contract.matchable_map((hk, wk), p, mask, B, q.device)
        results = []
        for fn in (first, second):
            def at_level(qq, kk, vv, patch, width, its, schedule, init, fn=fn):  # type: ignore[no-untyped-def]
                return fn(qq, kk, vv, patch, width, its, False, 1234, schedule, init)

            def refine(qq, kk, vv, patch, width, its, schedule, init, fn=fn):  # type: ignore[no-untyped-def]
                return fn(qq, kk, vv, patch, width, its, False, 1234, schedule, init, *REACH_LIMITS)

            # a coarse heap twice as wide, its best K + 1 seeding the finer one, one more coarse
            # iteration; Jacobi on the coarse levels, the wavefront at full size
            plan = psal_pyramid.Pyramid(levels, scale, 2 * K, iters + 1, K + 1, psal_contract.SCHEDULE_JACOBI)
            # every other case with psal.h's reach limits at full size
            results.append([t.cpu() for t in psal_pyramid.coarse_to_fine(
                at_level, q, k, mask, valid, p, K, iters, psal_contract.SCHEDULE_WAVEFRONT, plan,
                refine if case % 2 else None)])
        (idx_a, ev_a), (idx_b, ev_b) = results
        if not (torch.equal(idx_a, idx_b) and torch.equal(ev_a, ev_b)):
            raise AssertionError(f"p={p} K={K} levels {levels} scale {scale}: {(idx_a != idx_b).sum().item()} matches "
                                 f"differ, evaluations {ev_a.tolist()} vs {ev_b.tolist()}")
    return (f"{len(PYRAMID_CASES)} cases (batch 2, holes, 1-3 levels, scale 2 and 3, full-size reach limited or "
            "not): identical")


def _reference_pyramid_check() -> str:
    """Native CPU search under init=pyramid = PyTorch reference under it."""
    from attnbench_plugins import psal_reference

    return _same_pyramids(_module().psal_search_cpu, psal_reference.search)


def _int_images(B: int, C: int, hq: int, wq: int, hk: int, wk: int, seed: int,
                dtype: torch.dtype = torch.float32, levels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Small-integer images (exact costs in any summation order); k holds a shifted copy of q."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, levels, (B, C, hq, wq), generator=g).to(dtype)
    k = torch.randint(0, levels, (B, C, hk, wk), generator=g).to(dtype)
    h, w = min(hq, hk - 2), min(wq, wk - 1)
    k[:, :, 2 : 2 + h, 1 : 1 + w] = q[:, :, :h, :w]
    return q, k


def _given_field(idx: torch.Tensor, k0: int, seed: int) -> torch.Tensor:
    """A messy (B, Hq, Wq, k0) initial field from a search's result (psal.h, it = 0): its entries
    (shifted by a column from the second round on), about 20 % -1 (none), some off the key border,
    the last column repeating the first: every skip rule of psal.h is exercised."""
    g = torch.Generator().manual_seed(seed)
    K = idx.shape[-1]
    f = torch.stack([idx[..., m % K] + m // K for m in range(k0)], -1)
    if k0 > 1:
        f[..., -1] = f[..., 0]
    f[torch.rand(f.shape, generator=g) < 0.2] = -1
    f[..., 0][torch.rand(f.shape[:-1], generator=g) < 0.1] = 0  # key (0, 0): off the border
    return f


def _module() -> ModuleType:
    from attnbench_plugins import psal_build

    try:
        return psal_build.load_extension()
    except RuntimeError as exc:
        raise CheckSkipped(f"native kernel not built: {exc}") from None


def _build_check() -> str:
    from attnbench_plugins import psal_build

    forced = os.environ.get(psal_build.BACKEND_ENV, "")
    module = psal_build.load_extension()  # a failed build fails this check, with the compiler's reason
    kernels = [d for d in ("cpu", "cuda") if psal_build.has_device_kernels(d)]
    where = f"{module.__file__}; kernels for {', '.join(kernels)}"
    return where + (f"; {psal_build.BACKEND_ENV}={forced}" if forced else "")


def _backend_check(device: str) -> str:
    """Which implementation each registered op runs on ``device``, and why."""
    from attnbench_plugins import psal_build, psal_ops

    backend = psal_ops.prepare()
    dev = device.split(":")[0]
    if backend == "reference":
        forced = psal_build.requested_backend() == "reference"
        why = f"{psal_build.BACKEND_ENV}=reference" if forced else "the native kernel could not be built"
        return f"all ops: PyTorch reference ({why})"
    module = psal_build.native_module()
    missing = [op for op in OPS if not hasattr(module, f"{op}_{dev}")]
    if missing:
        hint = " (extension built without CUDA: is nvcc on PATH / CUDA_HOME set?)" if dev == "cuda" else ""
        raise AssertionError(f"no native {dev} kernel for {', '.join(missing)}{hint}")
    if dev == "cuda":
        q = torch.zeros(1, 1, 6, 6, device=device)
        idx, ev = torch.ops.attnbench.psal_search(q, q, _valid(1, 6, 6, 3, False).to(device), 3, 1, 1, False, 0)
        if not (idx.is_cuda and ev.is_cuda):
            raise AssertionError("psal_search on CUDA tensors did not run on the GPU")
    return f"all ops: native {dev} kernels ({', '.join(OPS)})"


def _same_searches(first: SearchFn, second: SearchFn, quick: bool) -> str:
    """Two searches make the same decisions on every case and schedule, from a random start, from
    a given field (init, with every skip rule) and from it with psal.h's reach limits: identical
    matches and counts."""
    cases = SEARCH_CASES[:4] if quick else SEARCH_CASES
    for B, C, hq, wq, hk, wk, p, K, iters, dot, hole in cases:
        q, k = _int_images(B, C, hq, wq, hk, wk, seed=hq * 31 + K)
        valid = _valid(B, hk, wk, p, hole)
        for schedule in (0, 1):
            start = None
            for given in ("random start", "given field", "given field, reach limited"):
                init = None if start is None else _given_field(start, K + 1, seed=K)
                limits = REACH_LIMITS if given.endswith("limited") else ()
                idx_a, ev_a = (t.cpu() for t in first(q, k, valid, p, K, iters, dot, 1234, schedule, init, *limits))
                idx_b, ev_b = (t.cpu() for t in second(q, k, valid, p, K, iters, dot, 1234, schedule, init, *limits))
                where = f"p={p} K={K} schedule {schedule}, {given}"
                if not torch.equal(idx_a, idx_b):
                    raise AssertionError(f"{where}: {(idx_a != idx_b).sum().item()} matches differ")
                if not torch.equal(ev_a, ev_b):
                    raise AssertionError(f"{where}: evaluations {ev_a.tolist()} vs {ev_b.tolist()}")
                start = start if start is not None else idx_a
    return (f"{len(cases)} cases x 2 schedules x (random start, given field, reach limited) (batch 2, "
            "cross-attention, holes, K up to 40): identical")


def _reference_search_check(quick: bool) -> str:
    """Native CPU search = PyTorch reference search."""
    from attnbench_plugins import psal_reference

    return _same_searches(_module().psal_search_cpu, psal_reference.search, quick)


def _cuda_search_check(device: str, quick: bool) -> str:
    """CUDA search = CPU search."""
    mod = _module()
    if not hasattr(mod, "psal_search_cuda"):
        raise AssertionError("the extension has no CUDA kernels")

    def on_device(q, k, valid, *args):  # type: ignore[no-untyped-def]
        moved = (a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        return mod.psal_search_cuda(q.to(device), k.to(device), valid.to(device), *moved)

    return _same_searches(mod.psal_search_cpu, on_device, quick)


def _cuda_pyramid_check(device: str) -> str:
    """CUDA search under init=pyramid = CPU search under it."""
    mod = _module()

    def on_device(q, k, valid, *args):  # type: ignore[no-untyped-def]
        moved = (a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
        return mod.psal_search_cuda(q.to(device), k.to(device), valid.to(device), *moved)

    return _same_pyramids(mod.psal_search_cpu, on_device)


def _cuda_patch_sizes_check(device: str, quick: bool) -> str:
    """Every odd patch size the kernels dispatch runs, and agrees exactly with the CPU kernel."""
    mod = _module()
    sizes = (1, 3, 7, 13) if quick else tuple(range(1, 24, 2))
    for p in sizes:
        q, k = _int_images(1, 2, 9, 10, 26, 27, seed=p)
        valid = _valid(1, 26, 27, p, False)
        idx_c, ev_c = mod.psal_search_cpu(q, k, valid, p, 2, 2, False, 7)
        idx_g, ev_g = mod.psal_search_cuda(q.to(device), k.to(device), valid.to(device), p, 2, 2, False, 7)
        if not (torch.equal(idx_g.cpu(), idx_c) and torch.equal(ev_g.cpu(), ev_c)):
            raise AssertionError(f"p={p}: the CUDA search differs from the CPU search")
        s_g = mod.psal_similarity_cuda(q.to(device), k.to(device), idx_g, p, False).cpu()
        if not torch.equal(s_g, mod.psal_similarity_cpu(q, k, idx_c, p, False)):
            raise AssertionError(f"p={p}: CUDA similarities differ from the CPU ones")
    return "p = " + ", ".join(map(str, sizes)) + ": identical matches, counts and similarities"


def _cuda_ops_check(device: str) -> str:
    """Similarity and attend, forward and backward, CUDA = CPU in float64 (aggregation and dot too)."""
    mod = _module()
    g = torch.Generator().manual_seed(3)
    B, C, hq, wq, hk, wk, Cv, p, K = 2, 3, 9, 8, 11, 12, 4, 3, 3
    q = torch.randn(B, C, hq, wq, generator=g, dtype=torch.float64)
    k = torch.randn(B, C, hk, wk, generator=g, dtype=torch.float64)
    v = torch.randn(B, Cv, hk, wk, generator=g, dtype=torch.float64)
    worst = 0.0
    for dot in (False, True):
        idx, _ = mod.psal_search_cpu(q, k, _valid(B, hk, wk, p, False), p, K, 2, dot, 5, 0)
        s_c = mod.psal_similarity_cpu(q, k, idx, p, dot)
        s_g = mod.psal_similarity_cuda(q.to(device), k.to(device), idx.to(device), p, dot).cpu()
        gs = torch.randn_like(s_c)
        gq_c, gk_c = mod.psal_similarity_backward_cpu(gs, q, k, idx, p, dot, True, True)
        gq_g, gk_g = mod.psal_similarity_backward_cuda(gs.to(device), q.to(device), k.to(device), idx.to(device), p, dot,
                                                       True, True)
        pairs = [(s_c, s_g), (gq_c, gq_g.cpu()), (gk_c, gk_g.cpu())]
        for agg in (False, True):
            out_c, lse_c = mod.psal_attend_cpu(s_c, idx, v, p, agg, 0.5)
            out_g, lse_g = mod.psal_attend_cuda(s_c.to(device), idx.to(device), v.to(device), p, agg, 0.5)
            go = torch.randn_like(out_c)
            gsa_c, gv_c = mod.psal_attend_backward_cpu(go, s_c, idx, v, out_c, lse_c, p, agg, 0.5, True, True)
            gsa_g, gv_g = mod.psal_attend_backward_cuda(go.to(device), s_c.to(device), idx.to(device), v.to(device),
                                                        out_g, lse_g, p, agg, 0.5, True, True)
            pairs += [(out_c, out_g.cpu()), (gsa_c, gsa_g.cpu()), (gv_c, gv_g.cpu())]
        for a, b in pairs:
            worst = max(worst, (a - b).abs().max().item())
    if worst > 1e-9:
        raise AssertionError(f"CUDA and CPU ops differ by up to {worst:.3g} in float64")
    return f"similarity, attend (plain and aggregated) and their backwards: max difference {worst:.1e}"


def _cuda_reduced_precision_check(device: str) -> str:
    """float16 / bfloat16 inputs accumulate in float32: on integer data, the float32 search."""
    mod = _module()
    q, k = _int_images(1, 3, 12, 12, 14, 15, seed=11)
    valid = _valid(1, 14, 15, 5, False).to(device)
    idx32, ev32 = mod.psal_search_cuda(q.to(device), k.to(device), valid, 5, 3, 3, False, 1, 0)
    for dtype in (torch.float16, torch.bfloat16):
        idx, ev = mod.psal_search_cuda(q.to(device, dtype), k.to(device, dtype), valid, 5, 3, 3, False, 1, 0)
        if not (torch.equal(idx, idx32) and torch.equal(ev, ev32)):
            raise AssertionError(f"{dtype} search differs from float32 on integer data")
    return "float16 and bfloat16 searches = float32 search"


_ERROR_PATH_PROBE = """
import sys, torch
from attnbench_plugins import psal_build
mod = psal_build.load_extension()
dev = sys.argv[1]
search = getattr(mod, "psal_search_" + dev.split(":")[0])
q = torch.randint(0, 4, (2, 3, 20, 22)).float().to(dev)
few = torch.zeros(2, 20, 22, dtype=torch.bool)
few[:, 5, 5:7] = True
try:
    search(q, q, few.to(dev), 5, 3, 1, False, 0, 0)
except RuntimeError as exc:
    print("raised:", str(exc).splitlines()[0])
else:
    print("no error")
"""


def _error_path_check(device: str) -> str:
    """A refused request (fewer matchable keys than k) is a Python error, not a crash.

    Run in a child process: on an H200 the CUDA kernel's error message itself segfaulted
    (iostreams in the nvcc-built extension, see PSAL_CHECK in psal.h), which would take this
    command down with it.
    """
    _module()
    res = subprocess.run([sys.executable, "-c", _ERROR_PATH_PROBE, device], capture_output=True, text=True, timeout=300)
    if res.returncode < 0:
        raise AssertionError(f"the kernel crashed with {signal.Signals(-res.returncode).name} instead of raising")
    line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr.strip()[-200:]
    if res.returncode != 0 or not line.startswith("raised:") or "matchable" not in line:
        raise AssertionError(f"expected a 'matchable' error, got: {line}")
    return line


def checks(device: str, quick: bool) -> Iterator[Check]:
    """PSAL's checks for ``attnbench check`` on ``device``."""
    group = "plugin psal"
    yield Check(group, "native kernel builds (or loads from cache)", _build_check)
    yield Check(group, f"backend of each op on {device}", lambda: _backend_check(device))
    yield Check(group, f"a refused request on {device} raises (no crash)", lambda: _error_path_check(device))
    yield Check(group, "native CPU search = PyTorch reference (matches, evaluation counts)",
                lambda: _reference_search_check(quick))
    yield Check(group, "init=pyramid: native CPU search = PyTorch reference", _reference_pyramid_check)
    cuda_checks: list[tuple[str, Callable[[], str]]] = [
        ("CUDA search = CPU search (matches, evaluation counts)", lambda: _cuda_search_check(device, quick)),
        ("init=pyramid: CUDA search = CPU search", lambda: _cuda_pyramid_check(device)),
        ("CUDA: every odd patch size", lambda: _cuda_patch_sizes_check(device, quick)),
        ("CUDA ops (forward, backward) = CPU ops, float64", lambda: _cuda_ops_check(device)),
        ("CUDA: float16 / bfloat16 search", lambda: _cuda_reduced_precision_check(device)),
    ]
    for name, fn in cuda_checks:
        if device.startswith("cuda"):
            yield Check(group, name, fn)
        else:
            yield Check(group, name, lambda: (_ for _ in ()).throw(CheckSkipped("needs --device cuda")))
