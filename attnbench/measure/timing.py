"""Wall time of one call with ``torch.utils.benchmark.Timer``: warm-up, repeats, median and IQR.

Short calls use ``blocked_autorange`` (blocks of runs until ``min_run_time``, at least
``min_repeats`` blocks). Calls that take
seconds each are timed one run at a time, as many times as ``budget_s`` allows (at least
``min_repeats``), so a 150 s exact-attention call at 256^2 still gets an honest median. Those runs
are timed by a synchronised ``perf_counter`` around the call, not ``Timer.timeit(1)``: that one runs
two untimed warm-up calls before each timed one, which made a long call cost three times its samples.
The Timer synchronises CUDA and runs with the process's thread count (its default is 1).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ..options import MeasureOptions
from torch.utils.benchmark import Measurement, Timer


@dataclass
class Timing:
    median_s: float
    iqr_s: float
    repeats: int
    samples_s: list[float] = field(default_factory=list)
    warmup_s: float = 0.0

    def metrics(self) -> dict[str, Any]:
        return {
            "time_median_s": self.median_s,
            "time_iqr_s": self.iqr_s,
            "time_repeats": self.repeats,
            "time_samples_s": self.samples_s,
            "time_warmup_s": self.warmup_s,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def time_call(
    fn: Callable[[], Any],
    device: str | torch.device = "cpu",
    min_run_time: float = MeasureOptions.min_run_time,
    budget_s: float = MeasureOptions.time_budget_s,
    min_repeats: int = MeasureOptions.min_repeats,
    max_repeats: int = 50,
    warmup: Optional[Callable[[], Any]] = None,
    label: str = "",
) -> Timing:
    """Time ``fn`` after a warm-up call (``warmup`` if given, e.g. the same op on a smaller input).
    The defaults are the suites' (:class:`attnbench.options.MeasureOptions`), declared there once.

    ``budget_s`` bounds the total time spent on long calls; ``min_repeats`` is honoured even when
    it exceeds the budget (a cell's timeout is the hard limit).
    """
    device = torch.device(device)
    start = time.perf_counter()
    (warmup or fn)()
    _sync(device)
    warm = time.perf_counter() - start
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), label=label)
    per_call = warm if warmup is None else None
    if per_call is None:
        per_call = _timed_once(fn, device)
        samples = [per_call]
    else:
        samples = []
    if per_call * 10 < min_run_time:
        m: Measurement = timer.blocked_autorange(min_run_time=min_run_time)
        times = list(m.times)
        while len(times) < min_repeats:  # a short min_run_time can end in fewer blocks than the repeats asked
            times.append(timer.timeit(m.number_per_run).median)
        median, iqr = (m.median, m.iqr) if len(times) == len(m.times) else median_iqr(times)
        return Timing(median, iqr, len(times) * m.number_per_run, times, warm)
    repeats = int(max(min_repeats, min(max_repeats, budget_s // max(per_call, 1e-9))))
    while len(samples) < repeats:
        samples.append(_timed_once(fn, device))
    median, iqr = median_iqr(samples)
    return Timing(median, iqr, len(samples), samples, warm)


def median_iqr(samples: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range of timed repeats (IQR 0 for a single sample)."""
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return statistics.median(samples), q[2] - q[0]


def matmul_flops_per_s(device: str | torch.device = "cpu", n: int = 1024) -> float:
    """Sustained float32 matmul throughput: a yardstick for predicting how long a cell would take,
    best of the timed blocks (STREAM's rule, as the triad): on a shared VM a median of 0.3 s read
    95 GFLOP/s where the machine's flash call itself ran at 206, which made cells "too slow" and
    rates read > 100 % of it."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device)
    m = Timer(stmt="a @ a", globals={"a": a}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=1.0)
    return 2 * n**3 / min(m.times)


#: elements of each triad array by device: 128 MiB (CPU) and 512 MiB (GPU) of float32 each, far
#: beyond the last-level cache (STREAM's rule: each array at least 4x the caches)
TRIAD_ELEMENTS = {"cpu": 1 << 25, "cuda": 1 << 27}


def triad_bytes_per_s(device: str | torch.device = "cpu", n: Optional[int] = None) -> float:
    """Sustained memory bandwidth, STREAM's triad ``a = b + s * c`` on float32 tensors (one fused
    ``torch.add(b, c, alpha=s, out=a)``): 3 x 4 x n bytes per run (b and c read, a written; the
    write-allocate read is not counted, as in STREAM), best of the timed runs (STREAM's rule).
    The arrays shrink to fit a quarter of the memory available. A yardstick for the achieved
    bandwidth of a call (``achieved_bandwidth_pct``), not a limit any kernel must reach."""
    from .memory import available_memory_bytes

    device = torch.device(device)
    n = n or TRIAD_ELEMENTS.get(device.type, TRIAD_ELEMENTS["cpu"])
    while n > 1 << 16 and 3 * 4 * n > available_memory_bytes(device) // 4:
        n //= 2
    b, c = torch.rand(n, device=device), torch.rand(n, device=device)
    a = torch.empty_like(b)
    timer = Timer(stmt="torch.add(b, c, alpha=3.0, out=a)", globals={"torch": torch, "a": a, "b": b, "c": c},
                  num_threads=torch.get_num_threads())
    timer.timeit(1)  # first touch of a's pages, outside the timed runs
    m = timer.blocked_autorange(min_run_time=0.3)
    return 3 * 4 * n / min(m.times)
