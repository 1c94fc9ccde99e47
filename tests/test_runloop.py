"""The run path: one measuring path, typed runner options, a typed run loop, records with env."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest
import torch

from attnbench import runloop, schema
from attnbench.cells import CellSpec
from attnbench.cli import main
from attnbench.errors import Infeasible
from attnbench.resultsfile import ResultsFile
from attnbench.suites import load

from conftest import write_suite
from cell_fixtures import HANG_AFTER_ESTIMATE


def _microbench_suite(tmp_path: Path, options: str = "", preset_options: str = "") -> Path:
    path = tmp_path / "micro.toml"
    path.write_text(f'''
name = "micro"
runner = "attnbench.runners.microbench:run"
[grid]
mechanisms = ["full"]
sizes = [16]
channels = 4
patch_size = 3
timeout = 60
[options]
{options}
[presets.p]
[presets.p.options]
{preset_options}
''')
    return path


@pytest.mark.parametrize("options, preset_options, preset", [
    ('metricz = ["memory"]', "", None),
    ("", "min_runtime = 0.1", "p"),
])
def test_an_unknown_runner_option_is_a_one_line_error_naming_the_key_and_the_valid_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture, options: str, preset_options: str, preset: str | None) -> None:
    suite = _microbench_suite(tmp_path, options, preset_options)
    argv = ["run", str(suite), "--out", str(tmp_path / "o.jsonl")] + (["--preset", preset] if preset else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    bad = "metricz" if options else "min_runtime"
    assert f"unknown option {bad!r}" in err and "valid:" in err and "min_run_time" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.jsonl").exists()


def test_a_runner_option_of_the_wrong_type_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = _microbench_suite(tmp_path, 'min_run_time = "fast"')
    assert main(["run", str(suite), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "option min_run_time must be a finite number" in capsys.readouterr().err


def test_every_shipped_suite_and_preset_parses_against_its_runner_options() -> None:
    from attnbench.options import runner_options
    from attnbench.suites import suite_names

    for name in suite_names():
        suite = load(name)
        assert runner_options(suite.runner) is not None, f"{name}: runner declares no OPTIONS"
        for preset in suite.preset_names():
            assert suite.cells(preset)  # parses every preset's options; raises on a typo


def test_the_yardstick_travels_outside_the_cell_identity() -> None:
    (cell,) = load("memory").cells("ci", mechanisms=["full"], sizes=[32], modes=["fwd"])
    calibrated = replace(cell, calibration={"flops_per_s": 1.0e9})
    assert calibrated.key == cell.key and "calibration" not in cell.identity()
    # declared by the runner: memory's options set time_margin, so the run must measure it
    (done,) = runloop.calibrate([cell])
    assert done.calibration["flops_per_s"] > 0 and done.key == cell.key


def _cell(suite: str, runner: str, **kw: Any) -> CellSpec:
    base = dict(suite=suite, runner=runner, mechanism="full", size=24, channels=3, patch_size=5, timeout_s=60.0)
    base.update(kw)
    return CellSpec(**base)


def test_a_task_suite_record_carries_time_samples_flops_by_op_and_estimates() -> None:
    from attnbench.runners.reconstruction import run

    spec = _cell("reconstruction", "attnbench.runners.reconstruction:run",
                 options={"pairs": 1, "min_run_time": 0.05, "time_budget_s": 0.5})
    metrics = run(spec)
    assert metrics["time_samples_s"] and all(t > 0 for t in metrics["time_samples_s"])
    assert metrics["flops_by_op"] and sum(metrics["flops_by_op"].values()) == metrics["flops"]
    assert "uncounted_ops" in metrics and metrics["estimated_memory_bytes"] > 0 and metrics["estimated_flops"] > 0
    assert metrics["peak_memory_bytes"] > 0 and "l2" in metrics


def test_task_and_microbench_cells_share_one_feasibility_rule() -> None:
    from attnbench.runners import microbench, reconstruction

    tiny = {"memory_fraction": 1e-12}
    for runner, module, extra in ((microbench, "microbench", {"channels": 4}),
                                  (reconstruction, "reconstruction", {"options": {"pairs": 1, **tiny}})):
        spec = _cell("x", f"attnbench.runners.{module}:run", **{"options": tiny, **extra})
        with pytest.raises(Infeasible) as info:
            runner.run(spec)
        assert "GiB available" in str(info.value) and "inputs subtracted" in str(info.value)
        assert info.value.metrics["estimated_memory_bytes"] > 0


def test_forward_and_backward_are_timed_separately() -> None:
    from attnbench.runners.microbench import run

    spec = _cell("speed", "attnbench.runners.microbench:run", size=16, channels=4, mode="fwd+bwd",
                 options={"metrics": ["time"], "min_run_time": 0.02, "time_budget_s": 0.2})
    m = run(spec)
    for part in ("", "_fwd", "_bwd"):
        assert m[f"time{part}_median_s"] > 0 and m[f"time{part}_iqr_s"] >= 0
    assert m["time_fwd_median_s"] < m["time_median_s"]  # the whole call includes the forward


def test_a_timeout_record_has_env_start_duration_and_keeps_the_estimate(tmp_path: Path, worker_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    # the timeout leaves a loaded machine time to start the worker (torch import) before it hangs
    assert main(["run", str(write_suite(tmp_path, [HANG_AFTER_ESTIMATE], timeout=25)), "--out", str(out), "--no-table"]) == 3
    (rec,) = schema.read(out)
    assert rec["status"] == "timeout"
    assert rec["env"]["torch"] == torch.__version__ and rec["env"]["cpu"] and rec["started_at"]
    assert rec["duration_s"] >= 25
    assert rec["metrics"]["estimated_memory_bytes"] == 12345
    # the executor read the load when it started the cell: steal is a figure over the 25 s, not unknown
    assert rec["load"]["loadavg_1m_start"] is not None and rec["load"]["steal_pct"] is not None


class _FakeExecutor:
    """An injected executor: records made here, in completion order (reversed)."""

    name = "fake"

    def __init__(self) -> None:
        self.closed = 0

    def run_cells(self, specs: Iterable[CellSpec]) -> Iterator[dict[str, Any]]:
        for spec in reversed(list(specs)):
            yield schema.make_record(spec, "error" if spec.size == 2 else "ok", metrics={"v": spec.size},
                                     env={"fake": True}, started_at="t", duration_s=0.0)

    def close(self) -> None:
        self.closed += 1


def test_run_cells_takes_an_injected_executor_and_reports_what_happened(tmp_path: Path) -> None:
    cells = load(str(write_suite(tmp_path, [1, 2, 3]))).cells()
    seen: list[int] = []
    executor = _FakeExecutor()
    with ResultsFile.open(tmp_path / "r.jsonl") as results:
        summary = runloop.run_cells(cells, results, executor, on_record=lambda r: seen.append(r["size"]))
    assert seen == [3, 2, 1] and executor.closed >= 1
    assert summary.counts == {"ok": 2, "error": 1} and summary.exit_code == runloop.EXIT_CELLS_FAILED
    assert [r["size"] for r in schema.read(tmp_path / "r.jsonl")] == [3, 2, 1]
    assert json.loads(json.dumps(summary.to_json()))["failed"] == [f"{cells[1].label}: error"]


def test_a_record_the_cluster_driver_makes_has_times_and_says_who_made_it() -> None:
    """Ray/Slurm driver records (a task the engine killed) carry started_at, duration_s and env, and
    never pass the driver's machine off as the node's."""
    import time

    from attnbench.cells import CellSpec
    from attnbench.schema import check_record, driver_record, submitted_now

    spec = CellSpec(suite="memory", runner="attnbench.runners.microbench:run", mechanism="full")
    since = submitted_now()
    time.sleep(0.01)
    rec = driver_record(spec, "error", "job 7: the Slurm job ended (FAILED)", since, slurm_job_id="7")
    assert check_record(rec) == ""
    assert rec["started_at"] == since[0] and rec["duration_s"] >= 0.01
    assert rec["env"] == {"recorded_by": "driver", "slurm_job_id": "7"}


def test_the_triad_counts_three_arrays_of_float32_and_takes_the_best_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import benchmark

    from attnbench.measure import timing

    class _Runs:
        times = [0.5, 0.25, 0.4]

    monkeypatch.setattr(benchmark.Timer, "blocked_autorange", lambda self, min_run_time: _Runs())
    n = 1 << 16
    assert timing.triad_bytes_per_s("cpu", n=n) == pytest.approx(3 * 4 * n / 0.25)
    monkeypatch.undo()
    assert 1e6 < timing.triad_bytes_per_s("cpu", n=1 << 20) < 1e13


def test_timed_cells_get_both_yardsticks_once_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[str] = []
    monkeypatch.setattr(runloop, "_calibration_functions", lambda: {
        "flops_per_s": lambda d: measured.append("flops_per_s") or 1e9,
        "bytes_per_s": lambda d: measured.append("bytes_per_s") or 2e9})
    timed = load("speed").cells("quick", mechanisms=["full", "flash"], sizes=[64])
    untimed = load("memory").cells("ci", mechanisms=["full"], sizes=[32], modes=["fwd"])
    done = runloop.calibrate(timed + untimed)
    assert sorted(measured) == ["bytes_per_s", "flops_per_s"]
    assert all(c.calibration == {"flops_per_s": 1e9, "bytes_per_s": 2e9} for c in done[:2])
    assert done[2].calibration == {"flops_per_s": 1e9}  # memory cells need the time check's yardstick only
    assert [c.key for c in done] == [c.key for c in timed + untimed]


def _fake_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loadavg: float, total: int, steal: int) -> None:
    from attnbench import load as loadmod

    (tmp_path / "loadavg").write_text(f"{loadavg} 1.0 1.0 2/100 123\n")
    idle = total - steal - 100
    (tmp_path / "stat").write_text(f"cpu  100 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3\n")
    monkeypatch.setattr(loadmod, "PROC_LOADAVG", tmp_path / "loadavg")
    monkeypatch.setattr(loadmod, "PROC_STAT", tmp_path / "stat")


def test_load_is_read_at_start_and_end_and_steal_over_the_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench import load as loadmod

    _fake_proc(tmp_path, monkeypatch, 0.5, total=10_000, steal=100)
    start = loadmod.mark()
    _fake_proc(tmp_path, monkeypatch, 7.5, total=12_000, steal=600)  # 500 of 2000 ticks stolen
    rec = loadmod.load_record(start)
    assert rec["loadavg_1m_start"] == 0.5 and rec["loadavg_1m_end"] == 7.5 and rec["steal_pct"] == 25.0
    assert loadmod.is_loaded(dict(rec, cpus=8)) is False and loadmod.is_loaded(dict(rec, cpus=2)) is True
    assert loadmod.is_loaded(None) is None and loadmod.is_loaded({"cpus": 2}) is None
    monkeypatch.setattr(loadmod, "PROC_STAT", tmp_path / "missing")
    monkeypatch.setattr(loadmod, "PROC_LOADAVG", tmp_path / "missing")
    unknown = loadmod.load_record(loadmod.mark())
    assert unknown["loadavg_1m_start"] is None and unknown["steal_pct"] is None  # unknown, never zero


def test_worker_and_executor_records_carry_the_load(tmp_path: Path) -> None:
    from attnbench.worker import execute

    (cell,) = load("memory").cells("ci", mechanisms=["full"], sizes=[32], modes=["fwd"])
    for rec in (execute(replace(cell, channels=2)), schema.outside_record(cell, "timeout", "t", started_at="x",
                                                                           duration_s=1.0)):
        assert set(rec["load"]) == {"loadavg_1m_start", "loadavg_1m_end", "steal_pct", "cpus"}
        assert rec["load"]["loadavg_1m_end"] >= 0 and rec["load"]["cpus"] >= 1
        assert schema.check_record(rec) == ""
    assert schema.check_record(dict(rec, load=3.0)).startswith("field 'load' must be an object")
