"""`attnbench run` (commands/run.py) end to end under faults: wrong outputs, kills and OOMs, the
exit status, the PSAL build and one-time preparation, interrupts, an unusable --out, bad input
before any worker. Each test reproduces a failure seen before and asserts the behaviour now."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench import schema
from attnbench.executors.outcome import Exit, classify
from attnbench.errors import UserError
from attnbench.resultsfile import ResultsFile
from attnbench.suites import load

from conftest import TESTS, write_suite
from helpers import one_line_exit_2 as _one_line_exit_2, run_cli, wait_until
from cell_fixtures import CRASH, HANG, OK, RAISE, SELF_KILL
from hostile import hostile, register


# ----------------------------------------------------------------------------- 3: outputs checked
@pytest.mark.parametrize("kind, needle", [("shape", "output shape (3,), expected (1, 4, 16, 16)"),
                                          ("dtype", "output dtype float64, expected float32"),
                                          ("nan", "non-finite values (NaN)"), ("inf", "non-finite values (Inf)"),
                                          ("meta", "output is on device meta, expected cpu")])
def test_a_wrong_output_is_an_error_saying_what_was_wrong(monkeypatch: pytest.MonkeyPatch, kind: str, needle: str) -> None:
    from attnbench.worker import execute

    register(monkeypatch, hostile(kind, name="bad"))
    for metrics in (["memory", "flops"], ["time"]):
        (cell,) = load("memory").cells("ci", mechanisms=["bad"], sizes=[16], modes=["fwd"], channels=4, patch_size=3)
        cell = cell.__class__(**{**cell.to_dict(), "options": {"metrics": metrics, "min_run_time": 0.01}})
        rec = execute(cell)
        assert rec["status"] == "error" and needle in rec["reason"], rec["reason"]
        assert rec["metrics"]["estimated_memory_bytes"] == 1000  # the estimate stays in the record


# ----------------------------------------------------------------------------- 4: kill vs OOM
def test_kill_9_of_a_worker_is_killed_with_the_signal_name_not_oom(tmp_path: Path, worker_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(write_suite(tmp_path, [SELF_KILL, CRASH])), "--out", str(out), "--no-table") == 3
    by_size = {r["size"]: r for r in schema.read(out)}
    killed, crashed = by_size[SELF_KILL], by_size[CRASH]
    assert killed["status"] == "killed" and "SIGKILL" in killed["reason"] and "OOM" not in killed["reason"]
    assert crashed["status"] == "error" and "SIGABRT" in crashed["reason"]  # item 15: signals are named
    assert killed["env"]["torch"] and killed["started_at"] and "duration_s" in killed


def test_possibly_oom_only_with_evidence() -> None:
    limit = 10 * 2**30
    assert classify(Exit(-9, peak_rss_bytes=2**20), limit_bytes=limit)[0] == "killed"
    status, reason = classify(Exit(-9, peak_rss_bytes=int(0.95 * limit)), limit_bytes=limit)
    assert status == "killed" and "possibly OOM" in reason and "SIGKILL" in reason
    status, reason = classify(Exit(-9, oom_kills_before=1, oom_kills_after=2), limit_bytes=limit)
    assert status == "oom" and "OOM killer" in reason
    assert classify(Exit(-11), limit_bytes=limit) == ("error", "worker crashed: SIGSEGV (exit code -11)")
    assert classify(Exit(-15), limit_bytes=limit)[0] == "killed"


def test_resume_runs_failed_cells_again_unless_asked_to_keep_them(tmp_path: Path, worker_path: Path) -> None:
    suite = write_suite(tmp_path, [OK, 7])
    cells = load(str(suite)).cells()
    out = tmp_path / "out.jsonl"
    lines = [schema.make_record(cells[0], "ok", metrics={"value": -1}), schema.make_record(cells[1], "killed", "was killed")]
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert run_cli("run", str(suite), "--out", str(out), "--resume", "--keep-failed", "--no-table") == 0
    assert len(schema.read(out)) == 2  # nothing ran
    assert run_cli("run", str(suite), "--out", str(out), "--resume", "--no-table") == 0
    records = schema.read(out)
    assert [r["status"] for r in records] == ["ok", "killed", "ok"] and records[2]["size"] == 7
    assert records[0]["metrics"]["value"] == -1  # the finished cell was not run again


# ----------------------------------------------------------------------------- 5: exit status
def test_exit_status_says_cells_failed_with_a_summary(tmp_path: Path, worker_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.jsonl"
    assert run_cli("run", str(write_suite(tmp_path, [OK, RAISE])), "--out", str(out), "--no-table", "--json") == 3
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["counts"] == {"ok": 1, "error": 1} and summary["exit_code"] == 3 and len(summary["failed"]) == 1
    assert "failed cells (1)" in captured.err and "--resume" in captured.err
    out.unlink()
    assert run_cli("run", str(write_suite(tmp_path, [OK])), "--out", str(out), "--no-table") == 0


# ----------------------------------------------------------------------------- 6: the PSAL build
def test_a_stale_build_lock_whose_owner_died_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench_plugins import psal_build

    directory = tmp_path / "build"
    directory.mkdir()
    (directory / "lock").write_text("")  # torch's FileBaton left by a builder killed mid-build
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        with psal_build._BuildLock(directory):
            assert not (directory / "lock").exists()


def test_the_build_cache_key_includes_the_source_location(tmp_path: Path) -> None:
    from attnbench_plugins import psal_build

    src = psal_build.source_dir()
    copies = []
    for name in ("checkout-a", "checkout-b"):
        folder = tmp_path / name
        folder.mkdir()
        for f in src.iterdir():
            if f.suffix in (".cpp", ".h", ".cuh", ".cu"):
                (folder / f.name).write_bytes(f.read_bytes())
        copies.append(psal_build._module_name([folder / "psal_cpu.cpp"], False))
    assert copies[0] != copies[1]


def test_preparation_has_its_own_timeout_and_kills_what_it_started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from attnbench import prepare

    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    monkeypatch.setattr(prepare, "prepare_command", lambda name: [sys.executable, "-c", script])
    notes: list[str] = []
    t0 = time.monotonic()
    failed = prepare.prepare_plugins(["psal"], 3.0, notes.append)
    assert time.monotonic() - t0 < 30
    assert "did not finish within 3 s" in failed["psal"] and any("did not finish" in n for n in notes)
    grandchild = int(pid_file.read_text())
    assert wait_until(lambda: not _alive(grandchild), timeout=10)  # the "compiler" went with its group


def test_cells_of_a_mechanism_whose_preparation_failed_are_errors_that_say_why(tmp_path: Path) -> None:
    from attnbench import runloop

    from test_runloop import _FakeExecutor

    cells = load(str(write_suite(tmp_path, [1, 2], mechanisms=("full", "psal-3")))).cells()
    with ResultsFile.open(tmp_path / "r.jsonl") as results:
        summary = runloop.run_cells(cells, results, _FakeExecutor(),
                                    failed_preparation={"psal-3": "preparation of psal did not finish within 5 s"})
    recs = {(r["mechanism"], r["size"]): r for r in schema.read(tmp_path / "r.jsonl")}
    assert recs["psal-3", 1]["status"] == "error" and "did not finish" in recs["psal-3", 1]["reason"]
    assert recs["psal-3", 1]["env"] and recs["full", 1]["status"] == "ok" and summary.exit_code == 3


# ----------------------------------------------------------------------------- 7: no worker outlives the run
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return [c for c in found if b"attnbench.worker" in Path(f"/proc/{c}/cmdline").read_bytes()] if found else []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGHUP, 129)])
def test_interrupting_the_run_kills_the_running_worker(tmp_path: Path, worker_path: Path, sig: int, code: int) -> None:
    out = tmp_path / "out.jsonl"
    # the hanging cell's timeout far above the wait for it: on a loaded CI machine a 120 s timeout
    # once ended the cell before the signal reached the run
    proc = subprocess.Popen([sys.executable, "-m", "attnbench.cli", "run", str(write_suite(tmp_path, [OK, HANG], timeout=900)),
                             "--out", str(out), "--no-table"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NO_COLOR": "1"},
                            # a shell's background job ignores SIGINT, and children inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    workers: list[int] = []

    def hanging_cell_started() -> bool:  # the ok cell recorded, the hanging one's worker running
        workers[:] = _workers_of(proc.pid) or workers
        return bool(workers) and out.exists() and len(schema.read(out)) == 1

    assert wait_until(hanging_cell_started, timeout=400), "the hanging cell's worker never started"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code and b"resume" in err and len(err.strip().splitlines()[-1:]) == 1, err
    assert err.strip().splitlines()[-1].startswith(b"attnbench: interrupted"), err
    assert wait_until(lambda: not any(_alive(w) for w in workers), timeout=10), "a worker outlived the run"
    assert [r["size"] for r in schema.read(out)] == [OK]  # the finished cell is kept


# ----------------------------------------------------------------------------- 8: --out checked first
def test_an_unusable_out_is_refused_before_any_cell(tmp_path: Path, worker_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite = str(write_suite(tmp_path, [OK]))
    not_results = tmp_path / "notes.jsonl"
    not_results.write_text("my notes, not JSON\n")
    _one_line_exit_2(run_cli("run", suite, "--out", str(not_results)), capsys, "is not an attnbench results file")
    assert not_results.read_text() == "my notes, not JSON\n" and not list(tmp_path.glob("*.prev"))
    _one_line_exit_2(run_cli("run", suite, "--out", "/dev/full"), capsys, "not a folder")
    _one_line_exit_2(run_cli("run", suite, "--out", "/proc/attnbench.jsonl"), capsys, "--out /proc/attnbench.jsonl")
    _one_line_exit_2(run_cli("run", suite, "--out", str(tmp_path / ("x" * 300 + ".jsonl"))), capsys, "too long")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            _one_line_exit_2(run_cli("run", suite, "--out", str(ro)), capsys, "Permission denied")
        finally:
            ro.chmod(0o755)


def test_a_write_error_later_stops_cleanly_keeping_every_complete_record(tmp_path: Path, worker_path: Path) -> None:
    # stand-in for a full disk: RLIMIT_FSIZE lets the first record in and fails the second write
    suite = str(write_suite(tmp_path, [OK, 7, 8]))
    probe = tmp_path / "probe.jsonl"
    assert run_cli("run", suite, "--out", str(probe), "--no-table") == 0
    one = max(len(line) + 1 for line in probe.read_text().splitlines())
    limit = int(one * 1.5)

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "attnbench.cli", "run", suite, "--out", str(out), "--no-table"],
                          capture_output=True, text=True, preexec_fn=small_disk, env={**os.environ, "NO_COLOR": "1"},
                          timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and "--resume" in proc.stderr and "1 complete records kept" in proc.stderr
    (rec,) = schema.read(out)  # the complete record, no torn line after it
    assert out.read_text().endswith("\n") and rec["size"] == OK


# ----------------------------------------------------------------------------- 12: bad input, before any worker
def _png(path: Path, size: int = 128) -> None:
    from skimage import io
    import numpy as np

    io.imsave(str(path), (np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8"), check_contrast=False)


@pytest.mark.parametrize("argv, needle", [
    (["run", "memory", "--sizes", "8", "--patch-size", "9"], "patch size 9 is larger than the image (8 px)"),
    (["run", "memory", "--timeout", "0"], "--timeout must be a positive, finite number"),
    (["run", "memory", "--timeout", "-5"], "--timeout must be a positive, finite number"),
    (["run", "memory", "--timeout", "nan"], "--timeout must be a positive, finite number"),
    (["run", "memory", "--timeout", "inf"], "--timeout must be a positive, finite number"),
    (["run", "memory", "--timeout", "soon"], "--timeout must be a number of seconds"),
    (["run", "/dev/zero"], "not a regular file"),
    (["run", "memory", "--data", str(TESTS)], "suite 'memory' uses no images"),
])
def test_bad_run_input_is_one_line_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    _one_line_exit_2(run_cli(*argv, "--out", str(tmp_path / "o.jsonl")), capsys, needle)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("layout, needle", [
    ("empty", "no image pairs found"),
    ("no-images", "no image pairs found"),
    ("unreadable", "cannot read image"),
    ("truncated", "cannot read image"),
])
def test_bad_data_folders_are_refused_before_any_worker(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        layout: str, needle: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if layout == "no-images":
        (data / "readme.txt").write_text("no pictures here")
    elif layout in ("unreadable", "truncated"):
        _png(data / "p_a.png")
        _png(data / "p_b.png")
        bad = data / "p_b.png"
        bad.write_bytes(b"not a png at all" if layout == "unreadable" else bad.read_bytes()[: len(bad.read_bytes()) // 2])
    out = tmp_path / "o.jsonl"
    _one_line_exit_2(run_cli("run", "reconstruction", "--data", str(data), "--out", str(out)), capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("line, needle", [
    ('timeout = "abc"', "grid key timeout must be a finite number, got 'abc'"),
    ('mechanisms = "full"', "mechanisms must be a list of strings"),
    ('sizes = 64', "sizes must be a list of integers, got 64"),
])
def test_bad_suite_file_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, line: str, needle: str) -> None:
    text = write_suite(tmp_path, [OK]).read_text()
    key = line.split(" =")[0]
    text = "\n".join(line if l.startswith(f"{key} =") else l for l in text.splitlines())
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    _one_line_exit_2(run_cli("run", str(bad), "--out", str(tmp_path / "o.jsonl")), capsys, needle)


def test_a_torn_last_record_is_announced_on_read_and_a_corrupt_complete_one_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cell = load(str(write_suite(tmp_path, [OK]))).cells()[0]
    good = json.dumps(schema.make_record(cell, "ok")) + "\n"
    torn = tmp_path / "torn.jsonl"
    torn.write_text(good + '{"schema": 1, "su')
    assert len(schema.read(torn)) == 1
    assert f"{torn}:2: unfinished last record skipped" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(good + "{garbage\n")
    with pytest.raises(UserError, match="corrupt.jsonl:2: not a JSON record"):
        schema.read(corrupt)
