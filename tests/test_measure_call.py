"""What a measured call's record says ran: the top ops of one profiled call, the backend line
(checked against the SDPA op the profiler saw), and the achieved rates as % of the yardsticks."""
from __future__ import annotations

from typing import Any, Optional

import pytest
import torch

from attnbench.measure import kernels
from attnbench.options import MeasureOptions
from attnbench.measure.call import AttentionCall, CallBudget, estimate_metrics, measure_call
from attnbench.registry import mechanism
from attnbench_plugins.flash import FlashAttention


def _measure(module: Any, metrics: set[str], size: int = 16, **budget: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, size, size, generator=gen) for _ in range(3))
    call = AttentionCall(module, q, k, v)
    known = estimate_metrics(module, call.shape())
    timing = {k: budget.pop(k) for k in ("min_run_time", "time_budget_s", "min_repeats") if k in budget}
    options = MeasureOptions(**{"min_run_time": 0.02, "time_budget_s": 0.1, "min_repeats": 2, **timing})
    _, measured = measure_call(call, CallBudget(metrics=frozenset(metrics), options=options, **budget), known=known)
    return {**known, **measured}


def test_a_record_lists_its_top_ops_by_self_time_and_names_the_sdpa_kernel_that_ran() -> None:
    m = _measure(mechanism("flash", patch_size=3), {"memory", "flops"})
    ops = m["kernels"]
    assert 1 <= len(ops) <= kernels.TOP and m["kernels_device"] == "cpu"
    assert all(set(op) == {"name", "self_time_us", "share", "calls"} for op in ops)
    assert [op["self_time_us"] for op in ops] == sorted((op["self_time_us"] for op in ops), reverse=True)
    assert 0 < sum(op["share"] for op in ops) <= 1.0 + 1e-6
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in {op["name"] for op in ops}
    assert m["backend"] == "sdpa-flash" and "backend_note" not in m


class _MathBehindFlash(FlashAttention):
    """A "flash" whose SDPA call is forced onto the math kernel: what a silent fallback looks like."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):
            return super().attend(q, k, v, key_mask)


def test_a_kernel_that_contradicts_the_declared_backend_is_what_the_record_names() -> None:
    m = _measure(_MathBehindFlash(patch_size=3), {"time"})
    assert m["backend"] == "sdpa-math" and m["backend_declared"] == "sdpa-flash"
    assert "sdpa-math" in m["backend_note"]


def test_the_profile_is_one_extra_call_and_skipped_when_the_timeout_cannot_hold_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = kernels.top_kernels

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "top_kernels", counted)
    m = _measure(mechanism("full", patch_size=3), {"memory", "flops", "time"})
    assert len(calls) == 1 and m["kernels"] and m["backend"] == "torch"
    m = _measure(mechanism("full", patch_size=3), {"memory", "flops"}, timeout_s=1e-3)
    assert len(calls) == 1 and "kernels" not in m
    assert m["kernels_note"].startswith("not profiled") and m["backend"] == "torch"


def test_psal_records_its_native_or_reference_backend() -> None:
    module = mechanism("psal-1", patch_size=3)
    m = _measure(module, {"memory"})
    assert m["backend"] == module.backend and module.backend in ("native", "reference")


def test_flex_records_whether_it_ran_compiled_or_eager() -> None:
    cls = type(mechanism("flex-local", patch_size=3, window=5, compile=False))
    if not cls.availability().ok:
        pytest.skip(str(cls.availability()))
    m = _measure(mechanism("flex-local", patch_size=3, window=5, compile=False), {"time"})
    assert m["backend"] == "flex-eager" and m["kernels"]


def test_timed_records_carry_achieved_rates_as_a_share_of_both_yardsticks() -> None:
    m = _measure(mechanism("full", patch_size=3), {"flops", "time"}, flops_per_s=2e9, bytes_per_s=4e9)
    median = m["time_median_s"]
    assert m["achieved_flops_from"] == "flops"
    assert m["achieved_flops_per_s"] == pytest.approx(m["flops"] / median)
    assert m["achieved_flops_pct"] == pytest.approx(100 * m["flops"] / median / 2e9, rel=1e-3)
    assert m["estimated_bytes_moved"] > 0
    assert m["achieved_bandwidth_pct"] == pytest.approx(100 * m["estimated_bytes_moved"] / median / 4e9, rel=1e-3)
    # time alone: the FLOPs come from the estimate, and the record says so
    t = _measure(mechanism("full", patch_size=3), {"time"})
    assert t["achieved_flops_from"] == "estimated_flops" and "achieved_flops_pct" not in t
    # not timed: no rate at all
    assert not {k for k in _measure(mechanism("full", patch_size=3), {"memory"}) if k.startswith("achieved")}


def test_bytes_moved_default_is_inputs_plus_the_working_set_written_and_read() -> None:
    from attnbench.interface import ProblemShape

    module = mechanism("local", patch_size=3)
    shape = ProblemShape.square(32, 4, 3)
    est = module.estimate(shape)
    assert module.estimate_bytes_moved(shape, est) == shape.input_bytes + 2 * est.memory_bytes
    assert shape.input_bytes == 3 * 4 * 32 * 32 * 4


def test_a_mechanism_far_below_the_matmul_rate_is_too_slow_up_front_not_a_timeout() -> None:
    # flex-local's compiled CPU kernel reaches ~20 % of the matmul yardstick: its 512 px cell was
    # let start at the matmul rate and timed out at 900 s; with its measured share it is skipped
    from dataclasses import replace

    from attnbench.errors import Infeasible
    from attnbench.interface import CostEstimate
    from attnbench.measure.call import check_feasible

    module = mechanism("full", patch_size=3)
    gen = torch.Generator().manual_seed(0)
    shape = AttentionCall(module, *(torch.randn(1, 4, 16, 16, generator=gen) for _ in range(3))).shape()
    est = CostEstimate(memory_bytes=1, flops=10**12)
    budget = CallBudget(metrics=frozenset({"memory"}), timeout_s=100.0, flops_per_s=1e11,
                        options=MeasureOptions(time_margin=0.25))
    check_feasible(module, shape, budget, {"estimated_memory_bytes": 1, "estimated_flops": 10**12})  # 10 s < 25 s
    slow = {"estimated_memory_bytes": 1, "estimated_flops": 10**12, "estimated_matmul_share": 0.2}
    with pytest.raises(Infeasible, match=r"estimated 50 s at 20 GFLOP/s \(20 % of the matmul yardstick"):
        check_feasible(module, shape, budget, slow)
    assert replace(est, matmul_share=0.2).seconds_at(1e11) == pytest.approx(50.0)
    known = estimate_metrics(mechanism("flex-local", patch_size=3), shape)
    assert known["estimated_matmul_share"] == pytest.approx(0.15)
