"""`attnbench check`: verdicts that can fail, and the command's exit statuses."""
from __future__ import annotations

import json
import os

import pytest
import torch

from attnbench import selfcheck
from attnbench.selfcheck import Check, CheckSkipped, execute, verdict
from helpers import cli_process


def _raise(exc: BaseException):  # noqa: ANN202
    def run() -> str:
        raise exc
    return run


def test_verdicts_ok_failed_skipped_and_exit_status() -> None:
    ok = execute(Check("g", "ok", lambda: "fine"))
    failed = execute(Check("g", "bad", _raise(AssertionError("measured 3, expected 4"))))
    skipped = execute(Check("g", "skip", _raise(CheckSkipped("needs --device cuda"))))
    assert (ok.status, failed.status, skipped.status) == ("ok", "failed", "skipped")
    assert "measured 3, expected 4" in failed.detail and "test_check.py" in failed.detail
    assert skipped.detail == "needs --device cuda"
    assert verdict([ok, skipped]) == 0
    assert verdict([ok, skipped, failed]) == 1


def _oversubscribed() -> bool:
    """Wall-clock checks mean nothing when more processes want the CPU than it has."""
    return os.getloadavg()[0] > (os.cpu_count() or 1)


def test_instruments_pass_on_cpu() -> None:
    results = [execute(c) for c in selfcheck.instrument_checks("cpu")]
    assert [r.status for r in results[:2]] == ["ok", "ok"], results
    assert "8388608 bytes allocated, 8388608 measured" in results[0].detail
    if _oversubscribed():
        pytest.skip(f"load average {os.getloadavg()[0]:.0f} on {os.cpu_count()} CPUs: the timing verdict is not meaningful")
    assert results[2].status == "ok", results[2]


def test_memory_check_fails_when_the_instrument_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.measure import memory

    monkeypatch.setattr(memory, "measure_peak", lambda fn, device: (fn(), 123))
    result = execute(selfcheck.instrument_checks("cpu")[0])
    assert result.status == "failed" and "measured 123" in result.detail


def test_timing_check_fails_when_the_timer_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.measure import timing

    real = timing.time_call
    monkeypatch.setattr(timing, "time_call", lambda fn, device, **kw: real(lambda: None, device, **kw))
    result = execute(selfcheck.instrument_checks("cpu")[2])
    assert result.status == "failed" and "never called" in result.detail


def test_output_checks_reject_wrong_shape_and_non_finite() -> None:
    q, v = torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 5, 5)
    with pytest.raises(AssertionError, match="shape"):
        selfcheck._check_output(torch.zeros(1, 2, 4, 3), q, v, "m")
    with pytest.raises(AssertionError, match="non-finite"):
        selfcheck._check_output(torch.full((1, 2, 4, 4), float("nan")), q, v, "m")
    with pytest.raises(AssertionError, match="dtype|float64"):
        selfcheck._check_output(torch.zeros(1, 2, 4, 4, dtype=torch.float64), q, v, "m")


def test_exact_check_catches_a_false_exactness_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mechanism claiming exactness for a setting that is not exact fails the check."""
    from attnbench_plugins.local import LocalAttention

    assert execute(Check("g", "local", lambda: selfcheck.exact_check("local", "cpu", torch.float64))).status == "ok"
    monkeypatch.setattr(LocalAttention, "exact_params", classmethod(lambda cls, shape, usable: {"window": 1}))
    result = execute(Check("g", "local", lambda: selfcheck.exact_check("local", "cpu", torch.float64)))
    assert result.status == "failed" and "max |local - full|" in result.detail


def test_approximate_mechanisms_are_skipped_with_the_reason() -> None:
    checks = list(selfcheck.mechanism_checks("cpu", ["linear"]))
    results = [execute(c) for c in checks]
    assert [r.status for r in results] == ["ok", "skipped"]
    assert "approximate by design" in results[1].detail


@pytest.mark.slow
def test_cli_cpu_half_passes_and_reports_json() -> None:
    res = cli_process("check", "--quick", "--mechanisms", "full,psal", "--json", timeout=900)
    report = json.loads(res.stdout)
    by_name = {(c["group"], c["name"]): c for c in report["checks"]}
    failed = [c for c in report["checks"] if c["status"] == "failed"]
    if _oversubscribed():  # only the wall-clock verdict may fail on an oversubscribed machine
        failed = [c for c in failed if not c["name"].startswith("time:")]
    else:
        assert res.returncode == 0 and report["exit_status"] == 0, res.stderr[-3000:]
    assert not failed, failed
    assert by_name[("mechanism psal", "exact setting = full (float64)")]["status"] == "ok"
    assert by_name[("plugin psal", "a refused request on cpu raises (no crash)")]["status"] == "ok"
    assert by_name[("plugin psal", "CUDA search = CPU search (matches, evaluation counts)")]["status"] == "skipped"


def test_cli_bad_input_is_one_line_exit_2() -> None:
    res = cli_process("check", "--mechanisms", "nosuch", timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown mechanism" in res.stderr
    if not torch.cuda.is_available():
        res = cli_process("check", "--device", "cuda", timeout=300)
        assert res.returncode == 2 and "no CUDA device" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.gpu
def test_cli_cuda_passes() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    res = cli_process("check", "--device", "cuda", "--json", timeout=900)
    report = json.loads(res.stdout)
    failed = [c for c in report["checks"] if c["status"] == "failed"]
    assert res.returncode == 0 and not failed, failed
