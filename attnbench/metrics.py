"""The metrics catalogue: every metric a runner may record, declared once.

Each entry says what the number means to the rest of attnbench: its unit and how to show it
(one unit family everywhere: GiB, GFLOP, seconds), whether larger is better, its kind (``cost``,
``quality``, ``time`` or ``bookkeeping``), the gate's default tolerance (None: never gated on its
own) and, where the mechanism's cost model predicts it, the name of its estimate. Tables, plots,
compare, gate and the run's per-cell log line all read this module, so a new metric is one entry
here (plus the runner that records it). Metrics not listed still show in reports, as plain numbers.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

Kind = Literal["cost", "quality", "time", "bookkeeping"]

GIB = float(1 << 30)
GFLOP = 1e9


@dataclass(frozen=True)
class Metric:
    """One metric: what it measures, in which unit it is shown and how it is judged."""

    name: str
    label: str
    kind: Kind
    unit: str = ""
    #: divide the recorded value by this to get ``unit`` (bytes -> GiB: 2**30)
    scale: float = 1.0
    higher_is_better: bool = False
    #: relative change the gate allows by default (0.05 = 5% worse); None = not gated on its own
    tolerance: float | None = None
    #: significant digits shown (ratios near 1 need one more)
    digits: int = 3
    #: the metric the mechanism's cost model predicts for this one (``peak_memory_bytes`` -> its estimate)
    estimate: str | None = None
    #: the paper's name for this metric in :mod:`attnbench.report.paper` (``memory_gb``, ``gflops``)
    paper: str | None = None

    def display(self, value: Any) -> float | None:
        """The value in the display unit, or None when it is missing or not a number."""
        x = as_number(value)
        return None if x is None else x / self.scale

    def format(self, value: Any, unit: bool = True) -> str:
        """``0.0738 GiB``, ``22 GFLOP``, ``54.3 ms``, ``0.00729``; "—" when missing."""
        x = self.display(value)
        if x is None:
            return "—"
        if isinstance(value, int) and self.scale == 1:
            return f"{value:,}" + (f" {self.unit}" if unit and self.unit else "")  # counts stay whole numbers
        if self.unit == "s":
            return seconds(x)
        text = sig(x, self.digits)
        return f"{text} {self.unit}" if unit and self.unit else text


#: the time metric is gated through this derived metric (time over the reference's, same run), never alone
TIME_RATIO = "time_ratio"

_CATALOGUE: tuple[Metric, ...] = (
    Metric("peak_memory_bytes", "memory", "cost", "GiB", GIB, tolerance=0.05, estimate="estimated_memory_bytes",
           paper="memory_gb"),
    Metric("estimated_memory_bytes", "est. memory", "cost", "GiB", GIB, tolerance=1e-6),
    Metric("flops", "FLOP", "cost", "GFLOP", GFLOP, tolerance=0.01, estimate="estimated_flops", paper="gflops"),
    Metric("estimated_flops", "est. FLOP", "cost", "GFLOP", GFLOP, tolerance=1e-6),
    Metric("time_median_s", "time", "time", "s"),
    Metric("time_iqr_s", "time IQR", "time", "s"),
    Metric(TIME_RATIO, "time / reference", "time", "", tolerance=0.25),
    Metric("time_repeats", "repeats", "bookkeeping"),
    Metric("time_samples_s", "time samples", "bookkeeping", "s"),
    Metric("time_warmup_s", "warm-up time", "bookkeeping", "s"),
    Metric("uncounted_ops", "uncounted ops", "bookkeeping"),
    # what the headline memory and FLOP figures are made of (noisier parts: shown, never gated alone)
    Metric("peak_memory_source", "memory figure", "bookkeeping"),
    Metric("peak_memory_note", "memory note", "bookkeeping"),
    Metric("peak_memory_allocator_bytes", "allocator peak", "bookkeeping", "GiB", GIB),
    Metric("peak_memory_rss_bytes", "resident peak", "bookkeeping", "GiB", GIB),
    Metric("peak_memory_device_bytes", "device peak", "bookkeeping", "GiB", GIB),
    Metric("memory_outside_torch_bytes", "memory outside torch", "bookkeeping", "GiB", GIB),
    Metric("peak_memory_rss_instrument", "resident instrument", "bookkeeping"),
    Metric("peak_memory_device_instrument", "device instrument", "bookkeeping"),
    Metric("flops_counted", "FLOP counted", "bookkeeping", "GFLOP", GFLOP),
    Metric("flops_declared", "FLOP declared", "bookkeeping", "GFLOP", GFLOP),
    Metric("flops_declared_by", "FLOP declared by", "bookkeeping"),
    Metric("flops_by_op", "FLOP by op", "bookkeeping"),
    # what ran (measure/kernels.py): the backend is judged by the gate as a string of its own, not here
    Metric("backend", "backend", "bookkeeping"),
    Metric("backend_declared", "declared backend", "bookkeeping"),
    Metric("backend_note", "backend note", "bookkeeping"),
    Metric("kernels", "top ops by self time", "bookkeeping"),
    Metric("kernels_device", "kernels on", "bookkeeping"),
    Metric("kernels_note", "kernels note", "bookkeeping"),
    # how close to the machine's limits a timed call came: rates move with the time, so never gated
    Metric("estimated_bytes_moved", "est. bytes moved", "cost", "GiB", GIB, tolerance=1e-6),
    Metric("achieved_flops_per_s", "achieved FLOP/s", "time", "GFLOP/s", GFLOP, higher_is_better=True),
    Metric("achieved_flops_pct", "% of matmul FLOP/s", "time", "%", higher_is_better=True, digits=2),
    Metric("achieved_flops_from", "FLOPs from", "bookkeeping"),
    Metric("achieved_bytes_per_s", "achieved bandwidth", "time", "GB/s", GFLOP, higher_is_better=True),
    Metric("achieved_bandwidth_pct", "% of triad bandwidth", "time", "%", higher_is_better=True, digits=2),
    # quality, in the order tables show them
    Metric("l2", "l2", "quality", tolerance=0.02),
    Metric("l1", "l1", "quality", tolerance=0.02),
    Metric("psnr", "PSNR", "quality", "dB", higher_is_better=True, tolerance=0.01),
    Metric("ssim", "SSIM", "quality", higher_is_better=True, tolerance=0.01),
    Metric("tv", "tv", "quality", tolerance=0.02),
    Metric("mse", "mse", "quality"),
    Metric("mse_ratio", "mse ratio", "quality", digits=4),
    Metric("accuracy", "accuracy", "quality", higher_is_better=True),
    Metric("recall", "recall", "quality", higher_is_better=True, digits=4),
    Metric("distance_ratio", "distance ratio", "quality", digits=4),
    Metric("exact_mse", "exact mse", "quality"),
    # the search suite's own clocks and sampling
    Metric("time_s", "search time (median)", "time", "s"),
    Metric("exact_time_s", "exact search time", "time", "s"),
    Metric("rows_sampled", "rows sampled", "bookkeeping"),
    Metric("row_step", "row step", "bookkeeping"),
)

CATALOGUE: dict[str, Metric] = {m.name: m for m in _CATALOGUE}


def get(name: str) -> Metric:
    """The catalogue entry of ``name``; a metric nobody declared is a plain quality-less number."""
    return CATALOGUE.get(name) or Metric(name, name, "bookkeeping")


def declared(kind: Kind) -> tuple[str, ...]:
    """Names of the declared metrics of one kind, in catalogue order."""
    return tuple(m.name for m in _CATALOGUE if m.kind == kind)


#: quality metrics in the order tables show them
QUALITY_METRICS: tuple[str, ...] = declared("quality")
#: metrics where a larger value is better (every other metric: smaller is better)
HIGHER_IS_BETTER: frozenset[str] = frozenset(m.name for m in _CATALOGUE if m.higher_is_better)
#: metrics that are costs, times or bookkeeping, not a quality
NOT_QUALITY: frozenset[str] = frozenset(m.name for m in _CATALOGUE if m.kind != "quality")
#: the gate's tolerance for a peak that is a resident figure on either side (memory outside torch:
#: measure.memory). The resident high-water mark of a multi-threaded call depends on how its
#: threads' buffers happen to overlap: Performer 64 px fwd+bwd (allocator 483 MB, exact) read
#: 494-615 MB over four calls in one process and 499-599 MB over five fresh processes; Local 64 px
#: fwd+bwd (199 MB) 199-241 MB. A cell near the outside-torch threshold (10 %) also flips between its
#: two figures. Such a cell's allocator figure, exact, is judged too, at the peak's own tolerance:
#: a regression of torch's memory is caught at that tolerance, one outside torch beyond this one
RESIDENT_TOLERANCE = 0.35
#: the gate's defaults: relative change allowed per metric
DEFAULT_TOLERANCES: dict[str, float] = {m.name: m.tolerance for m in _CATALOGUE if m.tolerance is not None}
#: times and bookkeeping, never gated on their own (time is judged as TIME_RATIO); a quality metric without
#: a default tolerance is gated where a suite's ``[gate.tolerances]`` names it
NOT_GATED: frozenset[str] = frozenset(m.name for m in _CATALOGUE if m.kind in ("time", "bookkeeping")
                                      and m.name != TIME_RATIO)


def as_number(value: Any) -> float | None:
    """A metric as a float, or None when it is missing, not numeric, a flag or NaN."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def sig(x: float | None, digits: int = 3) -> str:
    """A number with a few significant digits, as a person would write it in a table."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    text = f"{x:#.{digits}g}"  # keep trailing zeros: 1.00 and 0.250 show their precision
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa.rstrip('.')}e{int(exponent)}"
    return text.rstrip(".")


def seconds(t: float | None) -> str:
    """A duration with a unit that keeps it readable (µs, ms, s)."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "—"
    if t < 1e-3:
        return f"{sig(t * 1e6)} µs"
    if t < 1:
        return f"{sig(t * 1e3)} ms"
    return f"{sig(t)} s"


def format_metric(name: str, value: Any) -> str:
    """One metric's value with its unit, as every table and log line shows it."""
    return get(name).format(value)


#: what a cell's one-line summary shows, in this order (the rest is in the record)
SUMMARY: tuple[str, ...] = ("peak_memory_bytes", "flops", "time_median_s") + QUALITY_METRICS


def summary_line(metrics: Mapping[str, Any], names: Iterable[str] = SUMMARY) -> str:
    """``0.0736 GiB (est. 0.0738 GiB), 22 GFLOP, 54.3 ms, l2 0.00729``: a cell's log line.

    A measured cost shows its estimate beside it; an estimate alone (a cell that did not run)
    is labelled as one.
    """
    parts = []
    for name in names:
        metric = get(name)
        value = metrics.get(name)
        est = metrics.get(metric.estimate) if metric.estimate else None
        if as_number(value) is not None:
            text = metric.format(value)
            if as_number(est) is not None:
                text += f" (est. {get(metric.estimate).format(est)})"
        elif as_number(est) is not None:
            text = f"est. {get(metric.estimate).format(est)}"
        else:
            continue
        parts.append(text if metric.kind != "quality" else f"{metric.label} {text}")
    return ", ".join(parts)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


#: the largest size :func:`parse_bytes` takes (1 EiB): beyond it a "budget" is a typo, not memory
MAX_BYTES = float(2**60)


def parse_bytes(text: str) -> float:
    """``4GiB`` -> 4·2**30, ``500MB`` -> 5e8, ``1e9`` -> 1e9 (GB is 10**9, GiB 2**30). ValueError when
    unreadable, not finite (``1e400`` reads as infinity) or above :data:`MAX_BYTES`."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a memory size: {text!r} (write e.g. 4GiB, 512MiB, 8GB)")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if not math.isfinite(value) or value > MAX_BYTES:
        raise ValueError(f"{text!r} is {'not a finite number' if not math.isfinite(value) else 'too large'}: "
                         "a memory size is at most 1 EiB (write e.g. 4GiB, 512MiB, 8GB)")
    return value


def parse_budget(text: str, flag: str = "--budget") -> float:
    """A memory budget given on the command line: :func:`parse_bytes`, as a UserError naming the
    flag when unreadable, not finite, too large or not positive (``estimate`` and ``report`` alike)."""
    from .errors import UserError

    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None
    if value <= 0:
        raise UserError(f"{flag} {text!r} must be a positive size")
    return value
