"""Which kernels one call ran, and which SDPA backend they were: one extra call under torch.profiler.

Why: a mechanism can silently run another kernel than the one it is named for (``flash`` once ran
SDPA's math kernel on a GPU: 35 GiB instead of 1.3 GiB, caught by eye). NATTEN's profiler shows
the way: tabulate the ops that ran, by self time, from a profiler trace. Here:

* the call is run once more, after the measured ones, under ``torch.profiler`` with no other
  instrument (the FLOP counter's Python dispatch would inflate every op's self time, and the
  timed repeats must not carry the profiler's overhead);
* :func:`top_kernels` lists the ops with the most self time: CPU ops on CPU, the CUDA kernels
  (self device time) when the call ran on a GPU, each with its share of the profiled self time;
* :func:`observed_sdpa_backend` names the SDPA backend from the aten ops that ran (every op, not
  only the top ones): flash, efficient, cudnn or math.

A profiled call takes about as long as the call; it is skipped (and the record says why) when
it might not finish inside the cell's timeout (:func:`affordable`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

#: how many ops a record lists
TOP = 8
#: longest op name kept (CUDA template kernels run to kilobytes)
NAME_CHARS = 160
#: a profiled call is run only when this many calls' time fits in what is left of the cell's timeout
AFFORD_FACTOR = 2.0

#: aten ops (forward and backward) that name the SDPA backend that ran
SDPA_OPS: dict[str, str] = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "sdpa-flash",
    "aten::_scaled_dot_product_flash_attention": "sdpa-flash",
    "aten::_scaled_dot_product_efficient_attention": "sdpa-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "sdpa-cudnn",
    "aten::_scaled_dot_product_fused_attention_overrideable": "sdpa-overrideable",
    "aten::_scaled_dot_product_attention_math": "sdpa-math",
}
#: a declared backend that admits several observed ones (CUDA's flash plugin allows either fused kernel)
COMPATIBLE: dict[str, frozenset[str]] = {
    "sdpa-fused": frozenset({"sdpa-flash", "sdpa-efficient", "sdpa-cudnn"}),
}


@dataclass
class KernelProfile:
    """What one profiled call ran: the top ops by self time and every op name seen."""

    device: str
    kernels: list[dict[str, Any]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


def _self_us(event: Any, cuda: bool) -> float:
    return float(event.self_device_time_total if cuda else event.self_cpu_time_total)


def top_kernels(fn: Callable[[], Any], device: str | torch.device = "cpu", top: int = TOP) -> tuple[Any, KernelProfile]:
    """Run ``fn()`` once under torch.profiler; ``(result, KernelProfile)``."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=False, profile_memory=False) as prof:
        result = fn()
        if cuda:
            torch.cuda.synchronize(device)
    events = list(prof.key_averages())
    names = {e.key for e in events}
    if cuda:
        mine = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
        if not mine:  # no CUDA activity recorded (a CPU-only op path on a CUDA cell): CPU self times
            cuda = False
    if not cuda:
        mine = [e for e in events if e.self_cpu_time_total > 0]
    total = sum(_self_us(e, cuda) for e in mine)
    ranked = sorted(mine, key=lambda e: -_self_us(e, cuda))[:top]
    kernels = [{"name": e.key[:NAME_CHARS], "self_time_us": round(_self_us(e, cuda), 1),
                "share": round(_self_us(e, cuda) / total, 4) if total > 0 else 0.0, "calls": int(e.count)}
               for e in ranked]
    return result, KernelProfile("cuda" if cuda else "cpu", kernels, names)


def observed_sdpa_backend(names: set[str]) -> Optional[str]:
    """The SDPA backend(s) the op names show (``sdpa-flash``, ``sdpa-math``, ``sdpa-flash+sdpa-math``), or None."""
    seen = sorted({backend for op, backend in SDPA_OPS.items() if op in names or f"{op}_backward" in names})
    return "+".join(seen) if seen else None


def contradicts(declared: str, observed: Optional[str]) -> bool:
    """Whether what ran (``observed``) is not what the mechanism declared it would run."""
    if observed is None or not declared.startswith("sdpa"):
        return False
    allowed = COMPATIBLE.get(declared, frozenset({declared}))
    return any(part not in allowed for part in observed.split("+"))


def affordable(call_s: Optional[float], remaining_s: float) -> bool:
    """Whether one more call of ``call_s`` seconds (profiled) surely fits in ``remaining_s``."""
    return call_s is not None and AFFORD_FACTOR * call_s <= remaining_s
