"""Memory torch's allocator does not see: what numpy, faiss or a plugin's C++ take with malloc/mmap.

Why this instrument. On CPU, the kernel's own books: ``/proc/self/status`` ``VmHWM`` (the
resident high-water mark) after writing ``5`` to ``/proc/self/clear_refs`` (which resets it to the
current RSS), minus ``VmRSS`` before the call. It sees every page any library touched, with no
wrapping of allocators (an ``LD_PRELOAD`` malloc shim would need a native build and a worker
restart, and still miss ``mmap``). Its limits, and what we do about them:

* it counts torch's pages too: the figure is compared with the allocator's exact peak, and only
  the excess is memory outside torch;
* malloc serves a request from a free block it holds before it maps new memory, so freed pages
  reused would not raise RSS, and it fragments its heap (glibc's mmap threshold grows to 32 MiB),
  so RSS could exceed the live bytes: while memory is measured (:func:`fresh_large_blocks`) the
  thresholds are pinned at ``MMAP_THRESHOLD`` (every block that large is its own mapping,
  unmapped on free) and ``malloc_trim(0)`` first gives the free pages malloc held back to the
  kernel, so the call faults its pages in as a fresh process would; afterwards the thresholds go
  to glibc's ceiling, which its dynamic rule reaches after the first large free anyway;
* the profiler's own event buffers (kilobytes an op: some 150 MB for a layer of thousands of
  small ops) are resident too: the resident figure comes from a call without the profiler;
* a trimmed small block that a call takes again is faulted in again, a page for a few bytes: in
  a process with a long history (many profiler sessions have fragmented its heap) the figure can
  exceed the live bytes by tens of MB. The harness measures each cell in a fresh process (its
  fork server runs no torch op), where this does not arise;
* pages allocated but never written are not resident (a ``torch.empty`` reads 0): which is why
  the allocator's figure stays the headline unless the resident one is larger;
* file-backed pages (a shared library loaded by the call) are resident too: the growth of
  ``RssFile`` during the call is subtracted;
* memory freed and reused inside the call counts once, as it should for a peak.

On CUDA the device's own view: ``torch.cuda.mem_get_info`` (cudaMemGetInfo: memory in use on the
device, every process and library included) sampled every ``SAMPLE_S`` in a thread, minus its value
before; what torch reserved for itself (its caching allocator's reserved peak) is subtracted to
get the memory outside torch. A peak shorter than the sampling period can be missed.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, TypeVar

import torch

T = TypeVar("T")

#: blocks this large get their own mapping during a measured call (glibc's initial threshold)
MMAP_THRESHOLD = 128 * 1024
#: glibc's dynamic mmap threshold ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX), set after the call
MMAP_THRESHOLD_MAX = 32 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: sampling period of the device-memory thread (CUDA)
SAMPLE_S = 0.001
CPU_INSTRUMENT = "VmHWM after clear_refs minus VmRSS before, RssFile growth subtracted (/proc/self)"
CUDA_INSTRUMENT = f"cudaMemGetInfo sampled every {SAMPLE_S * 1e3:g} ms in a thread, minus its value before"


@dataclass(frozen=True)
class NativePeak:
    """The peak growth of memory during a call as the OS or the device sees it (all libraries)."""

    #: bytes: resident (CPU) or device-used (CUDA) high-water growth during the call
    peak_bytes: int
    #: how it was measured (one of the ``*_INSTRUMENT`` lines)
    instrument: str


def _status_kib(*fields: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in fields:
                out[name] = int(value.split()[0])
    return out


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    """glibc, where malloc_trim and mallopt exist (None elsewhere: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 -- both or neither
        return libc
    except (OSError, AttributeError):
        return None


def _pin_thresholds(threshold: int) -> None:
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, threshold)


@functools.lru_cache(maxsize=1)
def resident_available() -> bool:
    """Whether this OS lets a process reset and read its resident high-water mark (Linux /proc)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM" in _status_kib("VmHWM")
    except OSError:
        return False


@contextlib.contextmanager
def fresh_large_blocks() -> Iterator[None]:
    """Within: every malloc block of ``MMAP_THRESHOLD`` or more is its own mapping, and the free
    pages malloc held on entry are given back to the kernel (see the module's docstring)."""
    libc = _libc()
    _pin_thresholds(MMAP_THRESHOLD)
    if libc is not None:
        libc.malloc_trim(0)
    try:
        yield
    finally:
        _pin_thresholds(MMAP_THRESHOLD_MAX)


def resident_peak(fn: Callable[[], T]) -> tuple[T, Optional[NativePeak]]:
    """Run ``fn()``; its result and the resident high-water growth (None where /proc cannot say).
    Call it inside :func:`fresh_large_blocks`."""
    if not resident_available():
        return fn(), None
    before = _status_kib("VmRSS", "RssFile")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    result = fn()
    after = _status_kib("VmHWM", "RssFile")
    file_growth = max(0, after.get("RssFile", 0) - before.get("RssFile", 0))
    peak = max(0, after["VmHWM"] - before["VmRSS"] - file_growth) * 1024
    return result, NativePeak(peak, CPU_INSTRUMENT)


def device_peak(fn: Callable[[], T], device: torch.device) -> tuple[T, NativePeak]:
    """Run ``fn()`` on a CUDA device; its result and the device-used growth, sampled in a thread."""
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    used_before = total - free
    peak = [used_before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            free_now, _ = torch.cuda.mem_get_info(device)
            peak[0] = max(peak[0], total - free_now)
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, name="attnbench-device-memory", daemon=True)
    sampler.start()
    try:
        result = fn()
        torch.cuda.synchronize(device)
    finally:
        done.set()
        sampler.join()
    free_end, _ = torch.cuda.mem_get_info(device)
    peak[0] = max(peak[0], total - free_end)
    return result, NativePeak(int(peak[0] - used_before), CUDA_INSTRUMENT)
