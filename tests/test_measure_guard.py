"""The input guard of the one measuring path (attnbench.measure.guard, called by measure.call):
outputs that are the inputs and inputs changed in place are ``error``, in micro-benchmarks and
task suites alike."""
from __future__ import annotations

import pytest
import torch

from attnbench.errors import InvalidOutput
from attnbench.interface import AttentionMechanism
from attnbench.options import MeasureOptions
from attnbench.measure.call import AttentionCall, CallBudget, measure_call
from attnbench.suites import load
from hostile import Hostile, hostile, register


def _cheat(kind: str) -> AttentionMechanism:
    return hostile(kind)(patch_size=1)


def _call(kind: str, mode: str = "fwd") -> AttentionCall:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    return AttentionCall(_cheat(kind), q, k, v, mode=mode)


BUDGETS = {"memory+flops": CallBudget(metrics=frozenset({"memory", "flops"})),
           "time": CallBudget(metrics=frozenset({"time"}), options=MeasureOptions(min_run_time=0.01, time_budget_s=0.1))}
CHEATS = {"returns_q": "shares memory with input q", "returns_view": "shares memory with input q",
          "scales_q": "input q was modified in place", "scales_and_restores": "input q was modified in place",
          "writes_data": "input q changed during"}


@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("kind", list(CHEATS))
def test_an_output_that_is_an_input_or_an_input_changed_is_invalid(kind: str, budget: str) -> None:
    with pytest.raises(InvalidOutput, match=CHEATS[kind]):
        measure_call(_call(kind), BUDGETS[budget])


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_an_output_aliasing_q_is_caught_and_an_honest_one_passes_at_no_memory_cost(mode: str) -> None:
    """The guard's copy of the inputs is taken before the measurement: not in the call's peak."""
    budget = CallBudget(metrics=frozenset({"memory", "flops", "time"}), options=MeasureOptions(min_run_time=0.01, time_budget_s=0.1))
    q = torch.randn(1, 64, 64, 64)  # 1 MiB each: a copy of q, k, v inside the measurement would show
    out, metrics = measure_call(AttentionCall(_cheat("honest"), q, q.clone(), q.clone(), mode=mode), budget)
    assert out is not None and metrics["time_repeats"] >= 1
    assert metrics["peak_memory_bytes"] < 3 * q.nbytes + 2**16  # v.clone(), the sum (and a grad for fwd+bwd)
    with pytest.raises(InvalidOutput, match="shares memory with input q"):
        measure_call(AttentionCall(_cheat("returns_view"), q.clone(), q.clone(), q.clone(), mode=mode), budget)


def test_in_place_writes_during_the_timing_loop_alone_are_caught() -> None:
    """A call that behaves on its first run and writes from the second on: the loop's counters tell."""

    class Later(Hostile):
        calls = 0

        def attend(self, q, k, v, key_mask=None):  # type: ignore[override]
            type(self).calls += 1
            # after the memory warm-up, the two memory calls (resident, profiled) and the first timed call
            if type(self).calls > 4:
                q.mul_(2.0)
            return v.clone()

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    budget = CallBudget(metrics=frozenset({"memory", "time"}), options=MeasureOptions(min_run_time=0.01, time_budget_s=0.1))
    with pytest.raises(InvalidOutput, match="modified in place during the timed calls"):
        measure_call(AttentionCall(Later(patch_size=1), q, k, v), budget)


@pytest.mark.parametrize("suite, preset", [("memory", "ci"), ("reconstruction", "quick")])
def test_suites_record_a_cheating_layer_as_error(monkeypatch: pytest.MonkeyPatch, suite: str, preset: str) -> None:
    """Micro-benchmarks and task suites (tasks/costs.py) both go through the guarded path."""
    from attnbench.worker import execute

    register(monkeypatch, hostile("returns_view", name="cheat"))
    cell = load(suite).cells(preset, mechanisms=["cheat"])[0]
    rec = execute(cell)
    assert rec["status"] == "error" and "shares memory with input q" in rec["reason"], rec["reason"]
