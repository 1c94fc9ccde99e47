"""Profile mechanism calls on one device: time, the kernels a torch.profiler trace shows, and for
PSAL the search's achieved patch-read bandwidth against the card's.

Used by .ci/gpu-session.sh, once for the kernel listing of every mechanism and once per PSAL
CUDA costing variant (``ATTNBENCH_PSAL_CUDA_VARIANT``, each built in its own cache entry):

    python .ci/gpu_profile.py --mechanisms psal-3 --sizes 256 512 --check-kernels --out psal-thread.json

Bandwidth: a PSAL evaluation reads one p x p x C key patch, so the search's logical patch reads
are ``evaluations * p^2 * C * element bytes``; divided by the search kernels' device time (from
the trace) that is the achieved patch-read bandwidth, reported with the card's nominal DRAM
bandwidth (device properties) and a measured device-to-device copy (the yardstick a kernel can
reach). ``--check-kernels`` also runs the CUDA search against the CPU search of the same build on
small-integer images (plugins/psal_checks.py's cases): every variant must give identical matches
and evaluation counts on the GPU too. One JSON document per run; nothing here is a test.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from attnbench.interface import AttentionMechanism
from attnbench.measure.timing import time_call
from attnbench.registry import mechanism

#: the PSAL search kernels of native/psal_cuda.cu (init, then one launch per iteration/diagonal)
SEARCH_KERNELS = ("psal_init_kernel", "psal_iterate_kernel", "psal_iterate_group_kernel")


def card(device: torch.device) -> dict[str, Any]:
    """The device, its nominal DRAM bandwidth (when torch reports the memory clock) and a copy yardstick."""
    if device.type != "cuda":
        return {"name": platform.processor() or "cpu", "nominal_bandwidth_Bps": None, "copy_bandwidth_Bps": None}
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    nominal = 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None  # DDR: two transfers a clock
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, min_run_time=0.3, budget_s=5.0, min_repeats=5)
    del src, dst
    return {"name": props.name, "nominal_bandwidth_Bps": nominal,
            "copy_bandwidth_Bps": 2 * (1 << 30) / timing.median_s}  # read + write


def kernels_of(prof: profile, device: torch.device) -> dict[str, float]:
    """Seconds per kernel name (CUDA activity) or per top-level op (CPU), largest first."""
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if device.type == "cuda":
            if event.device_type == torch.autograd.DeviceType.CUDA:
                totals[event.name] += event.time_range.elapsed_us() / 1e6
        elif event.cpu_parent is None:
            totals[event.name] += event.cpu_time_total / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def profile_call(module: AttentionMechanism, size: int, channels: int, device: torch.device,
                 card_info: dict[str, Any]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(size)
    q, k, v = (torch.randn(1, channels, size, size, generator=gen).to(device) for _ in range(3))
    with torch.no_grad():
        timing = time_call(lambda: module(q, k, v), device, min_run_time=0.5, budget_s=10.0, min_repeats=3)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with profile(activities=activities) as prof:
            module(q, k, v)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    kernels = kernels_of(prof, device)
    out: dict[str, Any] = {"size": size, "time_median_s": timing.median_s, "time_iqr_s": timing.iqr_s,
                           "time_repeats": timing.repeats, "kernels_s": dict(list(kernels.items())[:25])}
    if device.type == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device) - before
    evaluations = getattr(module, "last_evaluations", None)
    if evaluations is not None:
        evals = int(evaluations.sum())
        search_s = sum(t for name, t in kernels.items() if any(n in name for n in SEARCH_KERNELS))
        patch_bytes = evals * module.patch_size ** 2 * channels * q.element_size()
        out.update(evaluations=evals, patch_read_bytes=patch_bytes, search_kernels_s=search_s)
        if search_s > 0:
            achieved = patch_bytes / search_s
            out["achieved_bandwidth_Bps"] = achieved
            for what in ("nominal_bandwidth_Bps", "copy_bandwidth_Bps"):
                if card_info.get(what):
                    out[f"fraction_of_{what.replace('_Bps', '')}"] = achieved / card_info[what]
    return out


def check_kernels(device: torch.device) -> dict[str, Any]:
    """The CUDA search against the CPU search of the same build, exactly (integer images)."""
    from attnbench_plugins import psal_build
    from attnbench_plugins.psal_checks import SEARCH_CASES, _int_images, _valid

    if device.type != "cuda":
        return {"skipped": "no CUDA device: the variants are checked in the emulation (tests/test_psal_cuda.py)"}
    mod = psal_build.load_extension()
    differing = []
    for case in SEARCH_CASES:
        B, C, hq, wq, hk, wk, p, K, iters, dot, hole = case
        q, k = _int_images(B, C, hq, wq, hk, wk, seed=hq * 31 + K)
        valid = _valid(B, hk, wk, p, hole)
        for schedule in (0, 1):
            idx_c, ev_c = mod.psal_search_cpu(q, k, valid, p, K, iters, dot, 1234, schedule)
            idx_g, ev_g = mod.psal_search_cuda(q.to(device), k.to(device), valid.to(device), p, K, iters, dot, 1234,
                                               schedule)
            if not (torch.equal(idx_g.cpu(), idx_c) and torch.equal(ev_g.cpu(), ev_c)):
                differing.append({"case": list(case), "schedule": schedule})
    return {"cases": 2 * len(SEARCH_CASES), "identical": not differing, "differing": differing}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanisms", nargs="+", required=True)
    parser.add_argument("--sizes", nargs="+", type=int, default=[256])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--check-kernels", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from attnbench_plugins import psal_build

    device = torch.device(args.device)
    doc: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device,
                           "psal_cuda_variant": psal_build.cuda_variant(), "card": card(device),
                           "channels": args.channels, "patch_size": args.patch_size, "mechanisms": {}}
    if args.check_kernels:
        doc["kernels_vs_cpu"] = check_kernels(device)
    for spec in args.mechanisms:
        rows = []
        for size in args.sizes:
            t0 = time.perf_counter()
            try:
                module = mechanism(spec, patch_size=args.patch_size).to(device)
                rows.append(profile_call(module, size, args.channels, device, doc["card"]))
            except Exception as exc:  # noqa: BLE001 -- one mechanism's failure is its row, not the run's end
                rows.append({"size": size, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"})
            print(f"{spec} {size} px: {rows[-1].get('time_median_s', rows[-1].get('error'))} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        doc["mechanisms"][spec] = rows
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
