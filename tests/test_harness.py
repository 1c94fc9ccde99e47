"""The harness spine: worker isolation, resume, memory measurement, records, CLI errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench import schema
from attnbench.measure.memory import measure_memory
from attnbench.suites import load

from conftest import write_suite
from helpers import run_cli
from cell_fixtures import ALLOC, CRASH, HANG, OK, OOM, RAISE


def test_cpu_peak_memory_matches_known_allocations_within_5_percent() -> None:
    def work() -> torch.Tensor:
        a = torch.empty(10_000_000, dtype=torch.float32)   # 40 MB, never written (RSS would miss it)
        b = torch.empty(5_000_000, dtype=torch.float32)    # 20 MB -> peak 60 MB
        del a
        return torch.empty(2_500_000, dtype=torch.float32)  # 10 MB, kept alive with b freed
    _, peak = measure_memory(work)  # the allocator's figure: exact, whatever the process's malloc history
    assert abs(peak.allocator_bytes - 60_000_000) <= 0.05 * 60_000_000


def test_peak_memory_is_net_of_existing_tensors() -> None:
    big = torch.ones(20_000_000)  # 80 MB allocated before: must not count
    _, peak = measure_memory(lambda: big[:1_000_000] * 2)  # 4 MB
    assert abs(peak.allocator_bytes - 4_000_000) <= 0.05 * 4_000_000


def test_a_crash_an_oom_a_hang_and_a_bug_lose_only_their_own_cells(tmp_path: Path, worker_path: Path) -> None:
    suite = write_suite(tmp_path, [OK, CRASH, OOM, HANG, RAISE, ALLOC], timeout=20)
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(suite), "--out", str(out), "--no-table") == 3  # cells failed: exit status says so
    by_size = {r["size"]: r for r in schema.read(out)}
    assert set(by_size) == {OK, CRASH, OOM, HANG, RAISE, ALLOC}
    assert by_size[OK]["status"] == "ok" and by_size[OK]["metrics"]["value"] == 10
    assert by_size[CRASH]["status"] == "error" and "code" in by_size[CRASH]["reason"]
    assert by_size[OOM]["status"] == "oom"
    assert by_size[HANG]["status"] == "timeout"
    assert by_size[RAISE]["status"] == "error" and "ValueError: a bug in a runner" in by_size[RAISE]["reason"]
    assert abs(by_size[ALLOC]["metrics"]["peak_memory_bytes"] - 10_000_000) < 500_000


def test_records_carry_schema_identity_and_environment(tmp_path: Path, worker_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(write_suite(tmp_path, [OK])), "--out", str(out), "--no-table") == 0
    (rec,) = schema.read(out)
    for field in schema.REQUIRED:
        assert field in rec
    assert rec["schema"] == schema.SCHEMA_VERSION and rec["seed"] == 3 and rec["metrics"]["seed"] == 3
    env = rec["env"]
    assert env["torch"] == torch.__version__ and env["threads"] >= 1 and env["cpu"]
    assert "full" in env["plugins"] and env["seed"] == 3 and "commit" in env


def test_resume_skips_finished_cells_and_a_fresh_run_starts_over(tmp_path: Path, worker_path: Path) -> None:
    suite = write_suite(tmp_path, [OK, 7, 8])
    out = tmp_path / "out.jsonl"
    # a run killed after its first cell: the file holds one finished record and a torn line
    cells = load(str(suite)).cells()
    first = schema.make_record(cells[0], "ok", metrics={"value": -1})
    out.write_text(json.dumps(first) + "\n" + '{"schema": 1, "su')
    assert run_cli("run", str(suite), "--out", str(out), "--resume", "--no-table") == 0
    records = schema.read(out)
    assert sorted(r["size"] for r in records) == [OK, 7, 8]
    assert next(r for r in records if r["size"] == OK)["metrics"]["value"] == -1  # not re-run
    assert run_cli("run", str(suite), "--out", str(out), "--no-table") == 0
    assert len(schema.read(out)) == 3  # the old file was moved aside
    assert list(tmp_path.glob("out.jsonl.*.prev"))


def test_resume_recognises_cells_whose_run_measured_the_yardstick(tmp_path: Path) -> None:
    # time_margin makes the runner declare the matmul yardstick; the run measures it once and
    # carries it in each cell's calibration, which is not part of the cell's key
    argv = ["run", "memory", "--preset", "ci", "--mechanisms", "psal-1", "--sizes", "32", "--mode", "fwd",
            "--no-table", "--out", str(tmp_path / "m.jsonl")]
    assert run_cli(*argv) == 0
    (first,) = schema.read(tmp_path / "m.jsonl")
    assert "flops_per_s" in first["calibration"] and first["key"] == load("memory").cells("ci", mechanisms=["psal-1"], sizes=[32], modes=["fwd"])[0].key
    assert run_cli(*argv, "--resume") == 0
    assert len(schema.read(tmp_path / "m.jsonl")) == 1  # nothing re-run


@pytest.mark.parametrize("argv, needle", [
    (["run", "memory", "--mechanisms", "nope"], "unknown mechanism 'nope'; valid:"),
    (["run", "nosuchsuite"], "unknown suite 'nosuchsuite'; valid:"),
    (["run", "memory", "--sizes", "abc"], "bad size 'abc'"),
    (["run", "memory", "--sizes", "0"], "bad size 0"),
    (["run", "memory", "--sizes", "-64"], "bad size -64"),
    (["run", "memory", "--sizes", "64.5"], "bad size '64.5'"),
    (["run", "memory", "--patch-size", "4"], "patch size must be odd"),
    (["run", "memory", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "memory", "--mode", "sideways"], "unknown mode 'sideways'"),
    (["run", "memory", "--preset", "nope"], "has no preset 'nope'"),
    (["run", "/nonexistent/suite.toml"], "cannot read suite file"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_cuda_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run_cli("run", "memory", "--device", "cuda") == 2
    assert "not available here" in capsys.readouterr().err


def test_corrupt_suite_file_and_corrupt_results_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    assert run_cli("run", str(bad)) == 2
    assert "not valid TOML" in capsys.readouterr().err
    results = tmp_path / "r.jsonl"
    results.write_text("garbage\n{}\n")
    with pytest.raises(Exception, match="corrupt"):
        schema.read(results)


def test_console_script_reports_errors_without_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "attnbench.cli", "run", "memory", "--sizes", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bad size" in proc.stderr
