"""The timing instrument (attnbench.measure.timing): repeats taken whatever the budget, the
budget honoured for long calls, median and IQR of the samples, the two yardsticks positive.
Behaviour only: no figure here is a speed claim."""
from __future__ import annotations

import time

import pytest

from attnbench.measure import timing
from attnbench.options import MeasureOptions


def test_min_repeats_are_honoured_even_past_the_budget() -> None:
    calls = []
    t = timing.time_call(lambda: calls.append(1) or sum(range(20000)), min_run_time=0.0, budget_s=0.0,
                         min_repeats=4)
    assert t.repeats >= 4 and len(t.samples_s) == t.repeats
    assert len(calls) >= t.repeats + 1  # the warm-up call is not a sample


def test_a_long_call_runs_once_per_sample_plus_the_warm_up() -> None:
    # torch's Timer.timeit(1) runs two untimed calls before its timed one: a call of seconds would
    # cost three times its samples
    calls = []
    t = timing.time_call(lambda: calls.append(1) or time.sleep(0.02), min_run_time=0.01, budget_s=0.0, min_repeats=3)
    assert t.repeats == len(t.samples_s) == 3 and len(calls) == 3 + 1
    assert all(s >= 0.02 for s in t.samples_s)
    calls.clear()
    timing.time_call(lambda: calls.append(1) or time.sleep(0.02), min_run_time=0.01, budget_s=0.0, min_repeats=3,
                     warmup=lambda: None)
    assert len(calls) == 3  # the caller warmed up: every call is a sample


def test_short_calls_get_the_repeats_too() -> None:
    # blocks of runs until min_run_time, then more blocks until min_repeats: a median of one or two
    # blocks is no median
    t = timing.time_call(lambda: sum(range(2000)), min_run_time=0.01, min_repeats=5)
    assert len(t.samples_s) >= 5 and t.repeats % len(t.samples_s) == 0
    assert min(t.samples_s) <= t.median_s <= max(t.samples_s)


def test_the_defaults_are_the_suites_measuring_options() -> None:
    import inspect

    params = inspect.signature(timing.time_call).parameters
    assert params["min_run_time"].default == MeasureOptions.min_run_time
    assert params["budget_s"].default == MeasureOptions.time_budget_s
    assert params["min_repeats"].default == MeasureOptions.min_repeats


@pytest.mark.parametrize("samples, median, iqr", [([1.0], 1.0, 0.0), ([1.0, 2.0, 3.0, 4.0, 5.0], 3.0, 3.0)])
def test_median_and_iqr(samples: list[float], median: float, iqr: float) -> None:
    assert timing.median_iqr(samples) == pytest.approx((median, iqr))


def test_yardsticks_are_positive_rates() -> None:
    assert timing.matmul_flops_per_s("cpu", n=128) > 0
    assert timing.triad_bytes_per_s("cpu", n=1 << 18) > 0
