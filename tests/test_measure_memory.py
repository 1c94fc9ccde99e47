"""Memory outside torch's allocator (attnbench.measure.native_memory, memory.measure_memory): a call
whose working memory lives in numpy or faiss is measured, not read as 0."""
from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest
import torch

from attnbench.interface import AttentionMechanism, CostEstimate, ProblemShape
from attnbench.measure import native_memory
from attnbench.measure.call import AttentionCall, CallBudget, measure_call
from attnbench.measure.memory import OUTSIDE_MIN_BYTES, measure_memory, measure_peak
from attnbench.registry import mechanism, plugins

MIB = 2**20
#: what the numpy plugin allocates and writes inside `attend`
NUMPY_BYTES = 300 * MIB

pytestmark = pytest.mark.skipif(not native_memory.resident_available(), reason="no /proc resident high-water mark here")


class NumpyScratch(AttentionMechanism):
    """A plugin whose working memory is a numpy array (torch's allocator never sees it)."""

    summary = "test: numpy scratch"
    complexity = "O(1)"
    differentiable_wrt = ()

    def attend(self, q, k, v, key_mask=None):
        scratch = np.ones(NUMPY_BYTES // 8)  # written: resident
        total = float(scratch[:: 4096].sum())
        del scratch
        return torch.zeros(q.shape[0], v.shape[1], q.shape[2], q.shape[3]) + 0 * total

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        return CostEstimate(memory_bytes=NUMPY_BYTES, flops=1)


def _qkv(size: int = 16, c: int = 3):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, c, size, size, generator=gen) for _ in range(3))


def test_numpy_memory_inside_attend_is_measured_within_10_percent():
    q, k, v = _qkv()
    _, metrics = measure_call(AttentionCall(NumpyScratch(patch_size=3), q, k, v), CallBudget(metrics=frozenset({"memory"})))
    assert abs(metrics["peak_memory_bytes"] - NUMPY_BYTES) <= 0.10 * NUMPY_BYTES, metrics
    assert metrics["peak_memory_source"] == "rss"
    assert metrics["peak_memory_allocator_bytes"] < MIB  # torch saw only the output
    assert metrics["memory_outside_torch_bytes"] == metrics["peak_memory_bytes"] - metrics["peak_memory_allocator_bytes"]
    assert "VmHWM" in metrics["peak_memory_rss_instrument"]


def test_torch_only_calls_keep_the_allocators_exact_figure():
    # untouched pages are not resident: the allocator's figure is the headline, the resident one beside it
    _, peak = measure_memory(lambda: torch.empty(40 * MIB, dtype=torch.uint8))
    assert peak.source == "allocator" and peak.bytes == peak.allocator_bytes == 40 * MIB
    assert peak.native_bytes is not None and peak.outside_torch_bytes == 0
    _, written = measure_peak(lambda: torch.ones(10 * MIB))  # 40 MB written: both see it, within the tolerance
    assert written == 40 * MIB


def test_memory_freed_before_the_call_is_not_reused_silently():
    # glibc keeps freed blocks: without the trim and pinned thresholds the second call would read ~0
    def work():
        a = np.ones(100 * MIB // 8)
        return float(a[::4096].sum())

    measure_memory(work)
    _, again = measure_memory(work)
    assert abs(again.bytes - 100 * MIB) <= 0.10 * 100 * MIB, again


def _sampled_rss_peak(fn) -> int:
    """An independent measure: RSS (from /proc/self/statm) sampled every 0.5 ms in a thread, peak minus start."""
    page = 4096
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, native_memory.MMAP_THRESHOLD)  # same malloc rules as the measured call
    libc.mallopt(-1, native_memory.MMAP_THRESHOLD)
    libc.malloc_trim(0)

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    start, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
        libc.mallopt(-3, native_memory.MMAP_THRESHOLD_MAX)
    return max(peak[0], rss()) - start


def test_faiss_knn_peak_matches_an_independent_measure():
    info = next(i for i in plugins().values() if "faiss-knn" in i.variants)
    if not info.availability.ok:
        pytest.skip(str(info.availability))
    torch.set_num_threads(1)
    q, k, v = _qkv(128, 16)
    module = mechanism("faiss-knn", patch_size=7)
    _, metrics = measure_call(AttentionCall(module, q, k, v), CallBudget(metrics=frozenset({"memory"})))
    with torch.no_grad():
        independent = _sampled_rss_peak(lambda: module(q, k, v))
    assert metrics["peak_memory_source"] == "rss" and metrics["memory_outside_torch_bytes"] > OUTSIDE_MIN_BYTES
    assert abs(metrics["peak_memory_bytes"] - independent) <= 0.10 * independent, (metrics, independent)


def test_tables_plots_and_gate_show_the_native_figure_marked():
    from attnbench.report import gate, plots, tables
    from attnbench.report.frame import to_frame
    from attnbench.schema import make_record
    from _report_records import ENV, spec

    def record(source: str, peak: int, declared: int = 0):
        metrics = {"peak_memory_bytes": peak, "peak_memory_source": source, "peak_memory_allocator_bytes": 10 * MIB,
                   "estimated_memory_bytes": 12 * MIB, "flops": 10**9, "estimated_flops": 10**9}
        if declared:
            metrics["flops_declared"] = declared
        return make_record(spec("memory", "faiss-knn", 64), "ok", "", metrics, ENV)

    df = to_frame([record("rss", 300 * MIB, declared=10**9)])
    memory = tables.memory_table(df)
    assert tables.OUTSIDE_MARK in memory.iloc[0]["64 px"] and any("outside torch" in n for n in memory.attrs["notes"])
    assert tables.DECLARED_MARK in tables.flops_table(df).iloc[0]["64 px"]
    assert plots._outside_torch(df, plots.MEMORY).all() and plots._outside_torch(df, plots.FLOPS).all()
    plain = to_frame([record("allocator", 10 * MIB)])
    assert tables.OUTSIDE_MARK not in tables.memory_table(plain).iloc[0]["64 px"]
    result = gate.gate([record("rss", 300 * MIB)], [record("allocator", 10 * MIB)])
    (finding,) = [f for f in result.findings if f.metric == "peak_memory_bytes"]
    assert finding.kind == "regression" and "rss figure" in finding.detail
