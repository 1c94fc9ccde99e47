"""`attnbench check`: does this installation measure correctly? One verdict per check.

A benchmark is only as good as its instruments, so before a user trusts a table they can ask
three questions of their own machine in a few minutes:

* **the instruments** -- a known allocation is measured to the byte, a known matmul's FLOPs are
  counted exactly, and a call of known length is timed within 5% (on CUDA a device-side sleep,
  which an unsynchronised timer would report as a few microseconds);
* **the mechanisms** -- every available mechanism gives a finite output of the right shape and
  dtype; where a setting of it computes exact attention (``exact_params``), its output equals
  Full's on small random inputs (batch > 1, cross-attention, masks), and gradcheck passes;
  reduced precision agrees with float32 where the mechanism supports it;
* **the plugins' own checks** -- entry points in the group ``attnbench.checks`` (e.g. PSAL's
  native build, its backend per op, and its CUDA kernels against its CPU kernel).

Each check is ``ok``, ``failed`` (with the reason) or ``skipped`` (with why); the command exits 0
only when no check that could run failed.
"""
from __future__ import annotations

import statistics
import time
import traceback
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator, Optional

import torch

from .errors import Unavailable, Unsupported, UnsupportedRequest, UserError
from .interface import AttentionMechanism, ProblemShape

CHECK_GROUP = "attnbench.checks"
STATUSES = ("ok", "failed", "skipped")
#: the exact mechanism every "exact" setting is compared with
REFERENCE = "full"
TIMING_TOLERANCE = 0.05


class CheckSkipped(Exception):
    """Raised by a check that cannot run here; the message says why."""


@dataclass(frozen=True)
class CheckResult:
    group: str
    name: str
    status: str
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One named check: ``run()`` returns a detail line, raises CheckSkipped, or fails."""

    group: str
    name: str
    run: Callable[[], str]


def execute(check: Check) -> CheckResult:
    t0 = time.perf_counter()
    try:
        detail, status = check.run(), "ok"
    except CheckSkipped as exc:
        detail, status = str(exc), "skipped"
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 -- a failing check is a verdict, not a crash
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        detail += f" ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        status = "failed"
    return CheckResult(check.group, check.name, status, detail[:400], round(time.perf_counter() - t0, 3))


# ------------------------------------------------------------------------------ instruments
def _memory_check(device: str) -> str:
    from .measure.memory import measure_peak

    nbytes = 8 * 2**20  # a multiple of every allocator's rounding (CUDA rounds to 512 B blocks)

    def allocate() -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)

    _, peak = measure_peak(allocate, device)
    if peak != nbytes:
        raise AssertionError(f"allocated {nbytes} bytes, measured {peak}")
    return f"{nbytes} bytes allocated, {peak} measured"


def _flops_check(device: str) -> str:
    from .measure.flops import count_flops

    m, k, n = 64, 48, 32
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    _, counted = count_flops(lambda: a @ b)
    expected = 2 * m * k * n
    if counted.total != expected:
        raise AssertionError(f"({m}x{k}) @ ({k}x{n}): counted {counted.total} FLOPs, expected {expected}")
    return f"({m}x{k}) @ ({k}x{n}): {counted.total} FLOPs = 2 m k n"


def _timing_check(device: str) -> str:
    from .measure.timing import time_call

    if device.startswith("cuda"):
        # A device-side spin of known length: measure its length with CUDA events, then check
        # that the harness's timer (which must synchronise) reports the same.
        cycles = 20_000_000
        torch.cuda._sleep(cycles)  # warm-up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        torch.cuda.synchronize()
        known = start.elapsed_time(end) / 1e3
        fn: Callable[[], Any] = lambda: torch.cuda._sleep(cycles)  # noqa: E731
    else:
        # A 20 ms busy wait that also measures itself: the harness's timer must report the wall
        # time the calls really took (a stopwatch inside the call), whatever else loads the machine.
        inside: list[float] = []

        def fn() -> None:
            t0 = time.perf_counter()
            while time.perf_counter() < t0 + 0.02:
                pass
            inside.append(time.perf_counter() - t0)

    timing = time_call(fn, torch.device(device), min_run_time=0.3, max_repeats=10)
    if not device.startswith("cuda"):
        if not inside:
            raise AssertionError("the timer never called the function it timed")
        known = statistics.median(inside)
    error = abs(timing.median_s - known) / known
    if error > TIMING_TOLERANCE:
        raise AssertionError(f"a {known * 1e3:.2f} ms call was timed {timing.median_s * 1e3:.2f} ms ({error:.1%} off)")
    return f"a {known * 1e3:.2f} ms call timed {timing.median_s * 1e3:.2f} ms ({error:.1%} off, limit {TIMING_TOLERANCE:.0%})"


def instrument_checks(device: str) -> list[Check]:
    return [
        Check("instruments", "memory: a known allocation, to the byte", lambda: _memory_check(device)),
        Check("instruments", "flops: a known matmul", lambda: _flops_check(device)),
        Check("instruments", "time: a call of known length (synchronised)", lambda: _timing_check(device)),
    ]


# ------------------------------------------------------------------------------- mechanisms
@dataclass(frozen=True)
class Problem:
    """A small random attention problem (q, k, v, optional mask) used to compare mechanisms."""

    label: str
    batch: int
    channels: int
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]
    patch_size: int
    masked: bool = False

    def tensors(self, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(self.batch, self.channels, *self.query_hw, generator=g, dtype=torch.float64)
        k = torch.randn(self.batch, self.channels, *self.key_hw, generator=g, dtype=torch.float64)
        v = torch.randn(self.batch, 2, *self.key_hw, generator=g, dtype=torch.float64)
        mask = None
        if self.masked:
            mask = torch.zeros(self.batch, 1, *self.key_hw, dtype=torch.bool)
            hk, wk = self.key_hw
            mask[:, :, hk // 3 : hk // 3 + 2, wk // 3 : wk // 3 + 3] = True
            mask = mask.to(device)
        q, k, v = (t.to(device=device, dtype=dtype) for t in (q, k, v))
        return q, k, v, mask

    def shape(self) -> ProblemShape:
        return ProblemShape(self.batch, self.channels, 2, self.query_hw, self.key_hw, self.patch_size)

    def usable_keys(self) -> int:
        """Keys whose whole patch is inside the key image and off the mask (the fewest over the batch)."""
        from .patches import usable_keys, valid_key_grid

        _, _, _, mask = self.tensors("cpu", torch.float64)
        usable = usable_keys(mask, self.patch_size)
        if usable is None:
            gh, gw = valid_key_grid(self.key_hw, self.patch_size)
            return gh * gw
        return int(usable.sum(1).min())


PROBLEMS = (
    Problem("self-attention B=2", 2, 3, (9, 8), (9, 8), 3),
    Problem("cross-attention", 1, 3, (7, 9), (10, 11), 3),
    Problem("masked keys", 2, 3, (9, 10), (11, 12), 3, masked=True),
    Problem("p=5", 1, 2, (8, 8), (12, 12), 5),
)


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}[dtype]


def _check_output(out: Any, q: torch.Tensor, v: torch.Tensor, who: str) -> torch.Tensor:
    expected = (q.shape[0], v.shape[1], q.shape[2], q.shape[3])
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"{who} returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != expected:
        raise AssertionError(f"{who} output shape {tuple(out.shape)}, expected {expected}")
    if out.dtype != q.dtype or out.device != q.device:
        raise AssertionError(f"{who} output is {out.dtype} on {out.device}, inputs {q.dtype} on {q.device}")
    if not torch.isfinite(out).all():
        raise AssertionError(f"{who} output has {int((~torch.isfinite(out)).sum())} non-finite values")
    return out


def _build(name: str, **params: Any) -> AttentionMechanism:
    from .registry import mechanism

    try:
        return mechanism(name, **params)
    except Unavailable as exc:
        raise CheckSkipped(str(exc)) from None


def _contract_check(name: str, device: str) -> str:
    """Default parameters on every problem: right shape, dtype, device, finite; backward finite."""
    ran = []
    for problem in PROBLEMS:
        layer = _build(name, patch_size=problem.patch_size).to(device)
        if problem.masked and not layer.supports_mask:
            continue
        dtype = torch.float32 if torch.float32 in layer.dtypes else layer.dtypes[0]
        q, k, v, mask = problem.tensors(device, dtype)
        try:
            wrt = [t.requires_grad_() for n, t in zip("qkv", (q, k, v)) if n in layer.differentiable_wrt]
            out = _check_output(layer(q, k, v, mask), q, v, name)
        except (UnsupportedRequest, Unsupported) as exc:
            ran.append(f"{problem.label}: unsupported ({exc})")
            continue
        if wrt:
            grads = torch.autograd.grad(out.square().sum(), wrt)
            bad = [n for n, g in zip(layer.differentiable_wrt, grads) if not torch.isfinite(g).all()]
            if bad:
                raise AssertionError(f"{problem.label}: non-finite gradient for {', '.join(bad)}")
        ran.append(problem.label)
    return "; ".join(ran)


def exact_check(name: str, device: str, dtype: torch.dtype) -> str:
    """Where a setting of the mechanism is exact attention, it must equal Full's output."""
    cls = _build(name).__class__
    compared = []
    for problem in PROBLEMS:
        params = cls.exact_params(problem.shape(), problem.usable_keys())
        if params is None:
            raise CheckSkipped(f"{name} has no exact setting (approximate by design)")
        layer = _build(name, patch_size=problem.patch_size, **params).to(device)
        if dtype not in layer.dtypes:
            raise CheckSkipped(f"{name} does not support {str(dtype).replace('torch.', '')}")
        if problem.masked and not layer.supports_mask:
            continue
        reference = _build(REFERENCE, patch_size=problem.patch_size).to(device)
        q, k, v, mask = problem.tensors(device, dtype)
        ref_dtype = dtype if dtype in reference.dtypes else torch.float32
        expected = reference(q.to(ref_dtype), k.to(ref_dtype), v.to(ref_dtype), mask).to(dtype)
        try:
            got = _check_output(layer(q, k, v, mask), q, v, name)
        except (UnsupportedRequest, Unsupported) as exc:
            raise CheckSkipped(f"unsupported here: {exc}") from None
        err = (got.double() - expected.double()).abs().max().item()
        scale = max(expected.double().abs().max().item(), 1.0)
        if not err <= _tolerance(dtype) * scale:
            raise AssertionError(f"{problem.label} with {params}: max |{name} - {REFERENCE}| = {err:.3g}")
        compared.append(f"{problem.label} {err:.1e}")
    return f"= {REFERENCE} ({str(dtype).replace('torch.', '')}): " + ", ".join(compared)


def _gradcheck(name: str, device: str) -> str:
    """torch.autograd.gradcheck (float64) through an exact setting of the mechanism."""
    cls = _build(name).__class__
    problem = Problem("gradcheck", 1, 2, (5, 5), (6, 6), 3)
    params = cls.exact_params(problem.shape(), problem.usable_keys())
    if params is None:
        raise CheckSkipped(f"{name} has no exact (deterministic) setting to differentiate")
    layer = _build(name, patch_size=problem.patch_size, **params).to(device)
    if torch.float64 not in layer.dtypes:
        raise CheckSkipped(f"{name} does not support float64")
    if not layer.differentiable_wrt:
        raise CheckSkipped(f"{name} is not differentiable")
    q, k, v, _ = problem.tensors(device, torch.float64)
    inputs = {"q": q, "k": k, "v": v}
    wrt = [n for n in "qkv" if n in layer.differentiable_wrt]

    def f(*xs: torch.Tensor) -> torch.Tensor:
        args = dict(inputs, **dict(zip(wrt, xs)))
        return layer(args["q"], args["k"], args["v"])

    try:
        ok = torch.autograd.gradcheck(f, tuple(inputs[n].clone().requires_grad_() for n in wrt), eps=1e-6, atol=1e-5,
                                      rtol=1e-4)
    except (UnsupportedRequest, Unsupported) as exc:
        raise CheckSkipped(f"unsupported here: {exc}") from None
    if not ok:
        raise AssertionError("gradcheck returned False")
    return f"gradcheck w.r.t. {', '.join(wrt)} with {params}"


def mechanism_checks(device: str, names: Optional[list[str]] = None) -> Iterator[Check]:
    from .registry import plugins

    table = plugins()
    for name in names or sorted(table):
        info = table[name]
        group = f"mechanism {name}"
        if not info.availability.ok or info.cls is None:
            reason = str(info.availability)
            yield Check(group, "available", lambda reason=reason: (_ for _ in ()).throw(CheckSkipped(reason)))
            continue
        if device.split(":")[0] not in info.cls.devices:
            yield Check(group, "available", lambda n=name: (_ for _ in ()).throw(
                CheckSkipped(f"{n} does not run on {device}")))
            continue
        yield Check(group, "output shape, dtype, finite; gradients finite", lambda n=name: _contract_check(n, device))
        probe = PROBLEMS[0]
        if info.cls.exact_params(probe.shape(), probe.usable_keys()) is None:
            yield Check(group, f"exact setting = {REFERENCE}", lambda n=name: (_ for _ in ()).throw(
                CheckSkipped(f"{n} has no exact setting (approximate by design): contract checks only")))
            continue
        # float64 everywhere; float32 too on GPUs (TF32 and fused kernels); half types where supported
        wanted = (torch.float64, torch.float32) if device.startswith("cuda") else (torch.float64,)
        wanted += (torch.float16, torch.bfloat16)
        for dtype in (d for d in wanted if d in info.cls.dtypes):
            label = f"exact setting = {REFERENCE} ({str(dtype).replace('torch.', '')})"
            yield Check(group, label, lambda n=name, d=dtype: exact_check(n, device, d))
        yield Check(group, "gradcheck (float64)", lambda n=name: _gradcheck(n, device))


# ------------------------------------------------------------------------------- plugins' own
def plugin_checks(device: str, quick: bool) -> Iterator[Check]:
    """Checks that plugins contribute: entry point ``attnbench.checks`` -> ``fn(device, quick)``."""
    for ep in sorted(entry_points(group=CHECK_GROUP), key=lambda e: e.name):
        try:
            provider = ep.load()
            checks = list(provider(device, quick))
        except Exception as exc:  # noqa: BLE001 -- a broken plugin is a failed check, not a crash
            yield Check(f"plugin {ep.name}", "load its checks",
                        lambda exc=exc: (_ for _ in ()).throw(AssertionError(f"{type(exc).__name__}: {exc}")))
            continue
        yield from checks


def all_checks(device: str, quick: bool = False, mechanisms: Optional[list[str]] = None) -> list[Check]:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)")
    checks = instrument_checks(device)
    checks += list(plugin_checks(device, quick))
    checks += list(mechanism_checks(device, mechanisms))
    return checks


def verdict(results: list[CheckResult]) -> int:
    """0 when every check that could run passed, 1 otherwise."""
    return 1 if any(r.status == "failed" for r in results) else 0


def summary_line(results: list[CheckResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no checks"


__all__ = ["Check", "CheckResult", "CheckSkipped", "all_checks", "execute", "verdict", "summary_line"]
