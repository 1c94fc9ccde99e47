"""Peak memory of one call, measured (never predicted), net of what existed before the call.

CPU: the profiler's ``[memory]`` events carry the exact signed size of every allocation and free
made through torch's allocator; their running sum in time order gives the peak. Peak RSS is
useless here: pages allocated but never written are not resident (a 1 GiB ``torch.empty``
reads 0). CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the bytes allocated
before the call.
"""
from __future__ import annotations

import gc
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")

#: one gibibyte; every memory figure attnbench prints is in GiB
GIB = 1024**3


def _cpu_peak(fn: Callable[[], T]) -> tuple[T, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        running += event.nbytes()
        peak = max(peak, running)
    return result, peak


def _cuda_peak(fn: Callable[[], T], device: torch.device) -> tuple[T, int]:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) - before


def measure_peak(fn: Callable[[], T], device: str | torch.device = "cpu") -> tuple[T, int]:
    """Run ``fn()`` once and return ``(result, peak bytes allocated during it)``.

    The result is kept alive, so output tensors count towards the peak (they are part of what the
    layer costs); anything allocated before the call (the inputs) does not.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    return _cpu_peak(fn)


def available_memory_bytes(device: str | torch.device = "cpu") -> int:
    """Memory a cell may use: free device memory on CUDA, MemAvailable on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def total_memory_bytes(device: str | torch.device = "cpu") -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an out-of-memory condition (CPU or CUDA)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return any(s in text for s in ("can't allocate memory", "out of memory", "CUDA out of memory", "DefaultCPUAllocator"))


__all__: list[Any] = ["GIB", "measure_peak", "available_memory_bytes", "total_memory_bytes", "is_oom"]
