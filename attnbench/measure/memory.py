"""Peak memory of one call, measured (never predicted), net of what existed before the call.

CPU: the profiler's ``[memory]`` events carry the exact signed size of every allocation and free
made through torch's allocator; their running sum in time order gives the peak. Peak RSS is
useless here: pages allocated but never written are not resident (a 1 GiB ``torch.empty``
reads 0). CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the bytes allocated
before the call.

Beside it, the memory the allocator never sees (numpy, faiss, a plugin's C++), from the OS's or
the device's own books (:mod:`.native_memory`): when that figure exceeds the allocator's by more
than ``OUTSIDE_TOLERANCE`` (share of the allocator's peak) and ``OUTSIDE_MIN_BYTES``, the excess is
memory outside torch and the headline peak is the larger figure, marked with its source.
"""
from __future__ import annotations

import functools
import gc
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch

from ..metrics import GIB  # noqa: F401 -- one gibibyte, declared with the metrics' units
from .native_memory import device_peak, fresh_large_blocks, resident_peak

T = TypeVar("T")

#: the outside figure must exceed the allocator's by this share of it, and by OUTSIDE_MIN_BYTES,
#: to count: below that, RSS noise (the profiler's own buffers, Python objects, thread stacks)
OUTSIDE_TOLERANCE = 0.10
OUTSIDE_MIN_BYTES = 8 * 2**20


@dataclass(frozen=True)
class MemoryPeak:
    """One call's peak memory as torch's allocator and as the OS or device see it."""

    #: the allocator's exact peak, net of what existed before the call
    allocator_bytes: int
    #: the resident (CPU) or device-used (CUDA) high-water growth; None where not measurable
    native_bytes: Optional[int] = None
    native_instrument: str = ""
    #: ``cpu`` -> ``rss``, ``cuda`` -> ``device``
    native_source: str = "rss"

    @property
    def outside_torch_bytes(self) -> int:
        """Memory outside torch's allocator: the native figure's excess, 0 within the tolerance."""
        if self.native_bytes is None:
            return 0
        excess = self.native_bytes - self.allocator_bytes
        return excess if excess > max(OUTSIDE_TOLERANCE * self.allocator_bytes, OUTSIDE_MIN_BYTES) else 0

    @property
    def source(self) -> str:
        """Which figure the headline is: ``allocator``, or ``rss`` / ``device`` when larger."""
        return self.native_source if self.outside_torch_bytes else "allocator"

    @property
    def bytes(self) -> int:
        """The headline peak: the allocator's, or the native figure when it is larger (see ``source``)."""
        return self.allocator_bytes + self.outside_torch_bytes

    def metrics(self, prefix: str = "") -> dict[str, Any]:
        """Record metrics: the headline ``peak_memory_bytes`` and what it is made of."""
        out: dict[str, Any] = {f"{prefix}peak_memory_bytes": int(self.bytes),
                               f"{prefix}peak_memory_source": self.source,
                               f"{prefix}peak_memory_allocator_bytes": int(self.allocator_bytes)}
        if self.native_bytes is not None:
            out[f"{prefix}peak_memory_{self.native_source}_bytes"] = int(self.native_bytes)
            out[f"{prefix}peak_memory_{self.native_source}_instrument"] = self.native_instrument
            out[f"{prefix}memory_outside_torch_bytes"] = int(self.outside_torch_bytes)
        return out


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


def _cuda_peak(fn: Callable[[], T], device: torch.device) -> tuple[T, MemoryPeak]:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    reserved_before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    result, native = device_peak(fn, device)
    allocated = torch.cuda.max_memory_allocated(device) - before
    # what torch took from the device for itself (its cache included) is not outside torch
    reserved = max(0, torch.cuda.max_memory_reserved(device) - reserved_before)
    outside = max(0, native.peak_bytes - reserved)
    return result, MemoryPeak(allocated, allocated + outside, native.instrument + ", torch's reserved growth "
                              "subtracted", "device")


@functools.lru_cache(maxsize=1)
def _warm_profiler() -> None:
    """The profiler's first session in a process maps tens of MiB for itself (kineto's start-up):
    taken once, before any call is measured, so it is no call's resident growth."""
    _cpu_peak(lambda: None)


def measure_memory(fn: Callable[[], T], device: str | torch.device = "cpu") -> tuple[T, MemoryPeak]:
    """Run ``fn()`` and return ``(result, its peak memory by allocator and by OS / device)``.

    The result is kept alive, so output tensors count towards the peak (they are part of what the
    layer costs); anything allocated before the call (the inputs) does not. On CPU ``fn`` runs
    twice (:mod:`.native_memory` says why): first without the profiler for the resident figure,
    then profiled for the allocator's, whose result is returned.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    with fresh_large_blocks():
        unprofiled, native = resident_peak(fn)
        del unprofiled  # not the profiled call's baseline
        gc.collect()
        _warm_profiler()
        result, allocated = _cpu_peak(fn)
    if native is None:
        return result, MemoryPeak(allocated)
    return result, MemoryPeak(allocated, native.peak_bytes, native.instrument, "rss")


def measure_peak(fn: Callable[[], T], device: str | torch.device = "cpu") -> tuple[T, int]:
    """``(result, headline peak bytes)`` of :func:`measure_memory`: the allocator's exact peak, or the
    OS's / device's figure where memory outside torch makes it larger."""
    result, peak = measure_memory(fn, device)
    return result, peak.bytes


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


__all__: list[Any] = ["GIB", "MemoryPeak", "measure_memory", "measure_peak", "available_memory_bytes", "total_memory_bytes", "is_oom"]
