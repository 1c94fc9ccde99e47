"""Measure one attention call: the one path every runner (micro-benchmarks and task suites) takes.

Why one path: records of every suite must agree in shape and in rules, so that one gate judges
them all. The steps, in order:

1. :func:`estimate_metrics`: the plugin's analytic estimate (memory, FLOPs, complexity), reported
   to the worker's partial record first, so that a cell killed or timed out later keeps it;
2. :func:`check_feasible`: one rule for every suite: the estimate must fit in ``memory_fraction``
   of the available memory minus the call's inputs, and (when the runner asked for the matmul
   yardstick) its FLOPs at that rate must finish within ``time_margin`` x the cell's timeout;
   otherwise the cell is ``infeasible`` with its estimates;
3. :func:`measure_call`: peak memory and FLOPs of one call (FLOPs by op, ops left uncounted), the
   output checked (shape, dtype, finite, not sharing an input's memory, the inputs left unchanged:
   :mod:`.guard`; else ``error`` saying what was wrong), and the wall time
   (median, IQR, samples; forward and backward timed separately for ``fwd+bwd`` calls). An
   out-of-memory error anywhere becomes ``oom``, keeping the estimates;
4. then, apart from what was measured: the ops that ran, from one more call under the profiler
   (:func:`kernel_metrics`, :mod:`attnbench.measure.kernels`), the mechanism's backend line
   checked against them, and the achieved FLOP/s and bytes/s as % of the run's yardsticks
   (:func:`achieved_metrics`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from ..errors import Infeasible, InvalidOutput, OutOfMemory
from ..interface import AttentionMechanism, CostEstimate, ProblemShape
from ..options import MeasureOptions
from .flops import FlopCount, count_flops
from .guard import InputGuard
from ..metrics import GIB
from .memory import MemoryPeak, available_memory_bytes, is_oom, measure_memory
from .timing import Timing, time_call


#: counted + declared FLOPs below this share of the plugin's estimate: the rest is listed as
#: uncounted work "outside torch" (estimates are within 3x of the counts for every torch-only plugin)
OUTSIDE_TORCH_SHORTFALL = 0.1
#: estimates below this many FLOPs are too small for the shortfall rule to mean anything
OUTSIDE_TORCH_MIN_FLOPS = 10**6


@dataclass(frozen=True)
class CallBudget:
    """What to measure of a call and the limits it must fit in: the cell's device, timeout and
    calibrations, and how to measure (``options``, the suite's :class:`MeasureOptions`, declared
    there once: memory fraction, time margin, timing budget)."""

    device: str = "cpu"
    timeout_s: float = 600.0
    #: any of "memory", "flops", "time"
    metrics: frozenset[str] = frozenset({"memory", "flops"})
    options: MeasureOptions = field(default_factory=MeasureOptions)
    #: the run's matmul yardstick (FLOP/s), when the runner asked for it
    flops_per_s: Optional[float] = None
    #: the run's memory-bandwidth yardstick (bytes/s, the triad), when the runner asked for it
    bytes_per_s: Optional[float] = None
    label: str = ""
    #: time.monotonic() when the cell's budget was made: what is left of its timeout counts from here
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def for_cell(cls, spec: Any, options: MeasureOptions, metrics: Optional[set[str] | list[str]] = None) -> "CallBudget":
        """The budget of a cell: its device and timeout, its ``MeasureOptions``, its calibration."""
        return cls(device=spec.device, timeout_s=float(spec.timeout_s),
                   metrics=frozenset(metrics if metrics is not None else ("memory", "flops")), options=options,
                   flops_per_s=spec.calibration.get("flops_per_s"), bytes_per_s=spec.calibration.get("bytes_per_s"),
                   label=spec.label)


@dataclass
class AttentionCall:
    """One call of a mechanism on given inputs: ``fwd`` (no graph) or ``fwd+bwd`` (a fixed gradient
    back-propagated into the inputs the mechanism is differentiable for)."""

    module: AttentionMechanism
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    key_mask: Optional[torch.Tensor] = None
    mode: str = "fwd"
    grad_out: Optional[torch.Tensor] = None
    _leaves: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode == "fwd+bwd":
            self._leaves = {"q": self.q, "k": self.k, "v": self.v}
            for name in self.module.differentiable_wrt:
                self._leaves[name].requires_grad_(True)
            if self.grad_out is None:
                gen = torch.Generator(device="cpu").manual_seed(0)
                self.grad_out = torch.randn(self.expected_shape, generator=gen, dtype=self.v.dtype).to(self.v.device)

    @property
    def expected_shape(self) -> tuple[int, int, int, int]:
        return (self.q.shape[0], self.v.shape[1], self.q.shape[2], self.q.shape[3])

    def inputs(self) -> dict[str, torch.Tensor]:
        """The tensors the mechanism is given (and must neither return nor change)."""
        named = {"q": self.q, "k": self.k, "v": self.v}
        return named if self.key_mask is None else {**named, "key_mask": self.key_mask}

    def shape(self) -> ProblemShape:
        return ProblemShape.of(self.q, self.k, self.v, self.module.patch_size, mode=self.mode)

    def _forward(self) -> torch.Tensor:
        if self.key_mask is None:
            return self.module(self.q, self.k, self.v)
        return self.module(self.q, self.k, self.v, key_mask=self.key_mask)

    def forward(self) -> torch.Tensor:
        """The forward pass alone: without a graph for ``fwd``, building it for ``fwd+bwd``."""
        if self.mode == "fwd":
            with torch.no_grad():
                return self._forward()
        return self._forward()

    def backward(self, out: torch.Tensor, retain_graph: bool = False) -> None:
        torch.autograd.backward(out, self.grad_out, retain_graph=retain_graph)

    def __call__(self) -> torch.Tensor:
        """The whole call of the cell's mode (what memory, FLOPs and ``time_median_s`` measure)."""
        if self.mode == "fwd":
            return self.forward()
        for leaf in self._leaves.values():
            leaf.grad = None
        out = self._forward()
        self.backward(out)
        return out


def input_bytes(shape: ProblemShape) -> int:
    """Bytes of a call's inputs (q, k, v, and the output gradient for fwd+bwd)."""
    return shape.input_bytes


def estimate_metrics(module: AttentionMechanism, shape: ProblemShape, prefix: str = "") -> dict[str, Any]:
    """The plugin's estimate of the call, as record metrics (and noted as the worker's partial record)."""
    est = module.estimate(shape)
    metrics: dict[str, Any] = {
        f"{prefix}estimated_memory_bytes": int(est.memory_bytes),
        f"{prefix}estimated_flops": int(est.flops),
        f"{prefix}complexity": est.formula or module.complexity,
        f"{prefix}resolved_params": module.params(),
        f"{prefix}estimated_bytes_moved": int(module.estimate_bytes_moved(shape, est)),
    }
    if est.matmul_share:
        metrics[f"{prefix}estimated_matmul_share"] = float(est.matmul_share)
    if getattr(module, "backend", None):
        metrics[f"{prefix}backend"] = module.backend
    if getattr(module, "backend_note", None):  # a fallback backend, and why
        metrics[f"{prefix}backend_note"] = module.backend_note
    _note_partial(metrics)
    return metrics


def _note_partial(metrics: dict[str, Any]) -> None:
    from ..partial import report_partial

    report_partial(metrics)


def check_feasible(module: AttentionMechanism, shape: ProblemShape, budget: CallBudget,
                   known: Optional[dict[str, Any]] = None, prefix: str = "") -> None:
    """Raise Infeasible (keeping ``known``, the estimates) when the call cannot fit or cannot finish.
    The estimate is the one :func:`estimate_metrics` put in ``known`` (a plugin's estimate runs once
    per call); without it, the plugin is asked."""
    est = known_estimate(module, shape, known, prefix)
    metrics = {**(known or {}), f"{prefix}estimated_memory_bytes": int(est.memory_bytes),
               f"{prefix}estimated_flops": int(est.flops)}
    available = available_memory_bytes(budget.device) * budget.options.memory_fraction - input_bytes(shape)
    if est.memory_bytes > available:
        raise Infeasible(f"estimated {est.memory_bytes / GIB:.2f} GiB > {max(available, 0) / GIB:.2f} GiB available "
                         f"({budget.options.memory_fraction:g} of free memory, inputs subtracted)", metrics)
    rate, margin = budget.flops_per_s, budget.options.time_margin
    seconds = est.seconds_at(rate) if rate else 0.0
    if margin is not None and seconds > margin * budget.timeout_s:
        share = f" ({100 * est.matmul_share:.3g} % of the matmul yardstick, the plugin's measured share)" if est.matmul_share else ""
        raise Infeasible(f"estimated {seconds:.0f} s at {rate * (est.matmul_share or 1) / 1e9:.3g} GFLOP/s"
                         f"{share} > {margin:g} x timeout {budget.timeout_s:g} s (too slow)", metrics)


def known_estimate(module: AttentionMechanism, shape: ProblemShape, known: Optional[dict[str, Any]],
                   prefix: str = "") -> CostEstimate:
    """The estimate :func:`estimate_metrics` put in ``known`` (else the plugin's, asked again)."""
    known = known or {}
    memory, flops = known.get(f"{prefix}estimated_memory_bytes"), known.get(f"{prefix}estimated_flops")
    if isinstance(memory, int) and isinstance(flops, int):
        return CostEstimate(memory_bytes=memory, flops=flops, matmul_share=known.get(f"{prefix}estimated_matmul_share"))
    return module.estimate(shape)


def check_output(out: Any, expected_shape: tuple[int, ...], dtype: torch.dtype,
                 device: Optional[torch.device] = None) -> None:
    """A mechanism's output must be a tensor of the contract's shape, dtype (and device), with no NaN or Inf."""
    if not isinstance(out, torch.Tensor):
        raise InvalidOutput(f"output is a {type(out).__name__}, expected a tensor of shape {tuple(expected_shape)}")
    if tuple(out.shape) != tuple(expected_shape):
        raise InvalidOutput(f"output shape {tuple(out.shape)}, expected {tuple(expected_shape)} (B, Cv, Hq, Wq)")
    if out.dtype != dtype:
        raise InvalidOutput(f"output dtype {str(out.dtype).replace('torch.', '')}, expected {str(dtype).replace('torch.', '')}")
    if out.device != (device or out.device) or out.device.type == "meta":  # meta: no values to check
        raise InvalidOutput(f"output is on device {out.device}, expected {device or 'a device with values'}")
    finite = torch.isfinite(out.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        kinds = [name for name, test in (("NaN", torch.isnan), ("Inf", torch.isinf)) if bool(test(out.detach()).any())]
        raise InvalidOutput(f"output has {bad} non-finite values ({'/'.join(kinds)}) of {out.numel()}")


@contextlib.contextmanager
def oom_as_outcome(*parts: Optional[dict[str, Any]]) -> Iterator[None]:
    """Out-of-memory errors become OutOfMemory (status ``oom``); any error keeps the metrics known so
    far (the dicts in ``parts``, read when the error happens) in the record."""
    try:
        yield
    except Exception as exc:
        metrics = {k: v for part in parts if part for k, v in part.items()}
        if is_oom(exc):
            raise OutOfMemory(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                              metrics) from exc
        if not getattr(exc, "metrics", None):
            exc.metrics = dict(metrics)  # type: ignore[attr-defined]
        raise


def warm_up_memory(call: AttentionCall) -> None:
    """One smaller call of the same mechanism and mode before the measured one: a first call imports
    modules, starts thread pools and loads libraries, resident memory that is no part of the
    layer's cost but that the resident high-water mark would see. Its errors are the measured
    call's to raise."""
    side = max(3 * call.module.patch_size, call.q.shape[-1] // 2)  # half the side: a quarter of the pixels
    gen = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(1, t.shape[1], side, side, generator=gen, dtype=t.dtype).to(t.device)
               for t in (call.q, call.k, call.v))
    try:
        AttentionCall(call.module, q, k, v, mode=call.mode)()
    except Exception:  # noqa: BLE001 -- the measured call raises it, with the cell's own shape
        pass


def call_apart(call: AttentionCall, device: str) -> tuple[torch.Tensor, MemoryPeak]:
    """Output and peak memory of the call's own path, without the FLOP instrument (which counts
    FlexAttention by formula without running it): one untimed call first (a compiled kernel is
    built for this shape), then the measured one."""
    call()
    return measure_memory(call, device)


def flops_outside_torch(flops: FlopCount, call: AttentionCall, prefix: str = "",
                        known: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What the FLOP figure holds beside what the instrument counted: the FLOPs the plugin declared
    (``flops_counted`` + ``flops_declared`` = ``flops``), and, when counted + declared fall short of
    the plugin's own estimate by more than ``OUTSIDE_TORCH_SHORTFALL``, an ``uncounted_ops`` entry
    "outside torch" with the missing FLOPs (work no instrument saw and nobody declared)."""
    out: dict[str, Any] = {f"{prefix}flops_counted": int(flops.counted)}
    if flops.declared:
        out[f"{prefix}flops_declared"] = int(sum(flops.declared.values()))
        out[f"{prefix}flops_declared_by"] = dict(flops.declared)
    estimated = int(known_estimate(call.module, call.shape(), known, prefix).flops)
    if estimated > OUTSIDE_TORCH_MIN_FLOPS and flops.total < OUTSIDE_TORCH_SHORTFALL * estimated:
        key = (f"outside torch (estimate {estimated / 1e9:.3g} GFLOP, counted + declared "
               f"{flops.total / 1e9:.3g} GFLOP)")
        out[f"{prefix}uncounted_ops"] = {**flops.uncounted, key: estimated - flops.total}
    return out


def _timing_metrics(t: Timing, prefix: str, part: str = "") -> dict[str, Any]:
    if not part:
        return {f"{prefix}{k}": v for k, v in t.metrics().items()}
    return {f"{prefix}time_{part}_median_s": t.median_s, f"{prefix}time_{part}_iqr_s": t.iqr_s,
            f"{prefix}time_{part}_repeats": t.repeats}


class _Checks:
    """The output checked once (contract, not an input's memory), the inputs checked once per stage
    (later calls are caught by the guard's version counters)."""

    def __init__(self, call: AttentionCall) -> None:
        self.call = call
        self.guard = InputGuard(call.inputs())  # its copy is taken before any measurement: not in the peak
        self.done: set[str] = set()

    def after(self, result: Any, when: str = "the measured call") -> None:
        if "output" not in self.done:
            check_output(result, self.call.expected_shape, self.call.v.dtype, self.call.v.device)
            self.guard.check_output(result)
            self.done.add("output")
        if when not in self.done:
            self.guard.check(when)
            self.done.add(when)


def measure_call(call: AttentionCall, budget: CallBudget, prefix: str = "", known: Optional[dict[str, Any]] = None,
                 warmup: Optional[Callable[[], Any]] = None) -> tuple[Optional[torch.Tensor], dict[str, Any]]:
    """``(output, metrics)`` of one call: memory, FLOPs and time as ``budget.metrics`` asks.

    The output is checked on the first run whatever is measured; the output is None when only the
    time was measured (the timer keeps no result). The inputs are guarded (:mod:`.guard`): an
    output that shares their memory, or a call that changed them, is ``error``.
    """
    metrics: dict[str, Any] = {}
    out: Optional[torch.Tensor] = None
    checks = _Checks(call)
    with oom_as_outcome(known, metrics):
        call_s: Optional[float] = None
        if budget.metrics & {"memory", "flops"} or "time" not in budget.metrics:
            out, call_s = _measure_memory_and_flops(call, budget, checks, metrics, prefix, known)
        if "time" in budget.metrics:
            call_s = _measure_time(call, budget, checks, metrics, prefix, warmup)
        metrics.update(kernel_metrics(call, budget, call_s, prefix))
    metrics.update(achieved_metrics({**(known or {}), **metrics}, budget, prefix))
    return out, metrics


def _measure_memory_and_flops(call: AttentionCall, budget: CallBudget, checks: _Checks, metrics: dict[str, Any],
                              prefix: str, known: Optional[dict[str, Any]]) -> tuple[torch.Tensor, float]:
    """One call under both instruments (after a smaller warm-up call when memory is measured); the
    call's own path apart when the FLOP counter answered an operator by its shape only. Returns the output and
    the call's wall time (under both instruments: more than the call alone)."""
    wanted = budget.metrics
    if "memory" in wanted:
        warm_up_memory(call)
    t0 = time.perf_counter()
    (out, flops), peak = measure_memory(lambda: count_flops(call), budget.device)
    call_s = time.perf_counter() - t0
    if flops.shape_only_operators:  # the counted call's output holds no values: the call's own path apart
        out, peak = call_apart(call, budget.device)
        if "memory" in wanted:
            metrics[f"{prefix}peak_memory_note"] = (f"measured apart from the FLOP count, which counts "
                                                    f"{', '.join(flops.shape_only_operators)} by formula")
    checks.after(out)  # after the measurement: the check's own tensors are not the layer's cost
    if "memory" in wanted:
        metrics.update(peak.metrics(prefix))
    if "flops" in wanted:
        metrics[f"{prefix}flops"] = int(flops.total)
        metrics[f"{prefix}flops_by_op"] = flops.by_op
        metrics[f"{prefix}uncounted_ops"] = flops.uncounted
        metrics.update(flops_outside_torch(flops, call, prefix, known))
    return out, call_s


def _measure_time(call: AttentionCall, budget: CallBudget, checks: _Checks, metrics: dict[str, Any], prefix: str,
                  warmup: Optional[Callable[[], Any]]) -> float:
    """The whole call timed (torch.utils.benchmark); for fwd+bwd also the forward alone and the
    backward on a retained graph. Returns the call's median time."""
    timing = dict(min_run_time=budget.options.min_run_time, budget_s=budget.options.time_budget_s,
                  min_repeats=budget.options.min_repeats, label=budget.label)

    def checked_call() -> torch.Tensor:
        result = call()
        checks.after(result, "the first timed call")
        return result

    whole = time_call(checked_call, budget.device, warmup=warmup, **timing)
    checks.guard.check("the timed calls")
    metrics.update(_timing_metrics(whole, prefix))
    if call.mode == "fwd":
        metrics.update(_timing_metrics(whole, prefix, "fwd"))
        return whole.median_s
    metrics.update(_timing_metrics(time_call(call.forward, budget.device, **timing), prefix, "fwd"))
    checks.guard.check("the timed forward passes")
    graph = call.forward()
    try:
        bwd = time_call(lambda: call.backward(graph, retain_graph=True), budget.device, **timing)
        metrics.update(_timing_metrics(bwd, prefix, "bwd"))
        checks.guard.check("the timed backward passes")
    except RuntimeError as exc:  # a backward that cannot be replayed on a retained graph
        if is_oom(exc):
            raise
        metrics[f"{prefix}time_bwd_note"] = f"not timed separately: {str(exc).splitlines()[0][:200]}"
    return whole.median_s  # the retained graph is freed here, before the profiled call


def kernel_metrics(call: AttentionCall, budget: CallBudget, call_s: Optional[float],
                   prefix: str = "") -> dict[str, Any]:
    """``kernels`` (top ops by self time of one more, profiled, call) and ``backend`` (the mechanism's
    declared line, or what the profile shows ran where the two disagree, with ``backend_declared``
    and ``backend_note`` saying so). Skipped, with ``kernels_note``, when the call might not fit in
    what is left of the cell's timeout."""
    from .kernels import affordable, contradicts, observed_sdpa_backend, top_kernels

    found: dict[str, Any] = {}
    remaining = budget.timeout_s - (time.monotonic() - budget.started)
    observed = None
    if not affordable(call_s, remaining):
        found[f"{prefix}kernels_note"] = (f"not profiled: one call ({call_s:.3g} s) might not fit in the "
                                          f"{max(remaining, 0):.0f} s left of the timeout" if call_s is not None
                                          else "not profiled: the call's time is unknown")
    else:
        try:
            _, prof = top_kernels(call, budget.device)
        except Exception as exc:  # the profiler itself (Kineto) may fail where the measured calls did not
            if is_oom(exc):
                raise
            found[f"{prefix}kernels_note"] = f"not profiled: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        else:
            found[f"{prefix}kernels"] = prof.kernels
            found[f"{prefix}kernels_device"] = prof.device
            observed = observed_sdpa_backend(prof.names)
    declared = call.module.declared_backend(budget.device)
    found[f"{prefix}backend"] = declared
    if contradicts(declared, observed):
        found[f"{prefix}backend"] = str(observed)
        found[f"{prefix}backend_declared"] = declared
        found[f"{prefix}backend_note"] = f"declared {declared}, but the profiled call ran {observed}"
    return found


def achieved_metrics(metrics: dict[str, Any], budget: CallBudget, prefix: str = "") -> dict[str, Any]:
    """Achieved FLOP/s and bytes/s of a timed call (work / median time) and each as % of the run's
    yardstick (matmul FLOP/s, triad bytes/s), as flash-attention's benchmark reports MFU. FLOPs:
    the counted figure where it was measured, else the estimate (``achieved_flops_from`` says
    which); bytes: the estimate (``estimated_bytes_moved``)."""
    median = metrics.get(f"{prefix}time_median_s")
    if not isinstance(median, (int, float)) or not median > 0:
        return {}
    found: dict[str, Any] = {}
    source = f"{prefix}flops" if isinstance(metrics.get(f"{prefix}flops"), int) else f"{prefix}estimated_flops"
    flops = metrics.get(source)
    if isinstance(flops, (int, float)) and flops > 0:
        found[f"{prefix}achieved_flops_per_s"] = flops / median
        found[f"{prefix}achieved_flops_from"] = source[len(prefix):]
        if budget.flops_per_s:
            found[f"{prefix}achieved_flops_pct"] = 100.0 * flops / median / budget.flops_per_s
    moved = metrics.get(f"{prefix}estimated_bytes_moved")
    if isinstance(moved, (int, float)) and moved > 0:
        found[f"{prefix}achieved_bytes_per_s"] = moved / median
        if budget.bytes_per_s:
            found[f"{prefix}achieved_bandwidth_pct"] = 100.0 * moved / median / budget.bytes_per_s
    return found
