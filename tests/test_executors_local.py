"""The local executor's fork server and --jobs: same records as a fresh interpreter, same isolation."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from attnbench.errors import UserError
from attnbench.executors import forkserver
from attnbench.executors.local import LocalProcessExecutor
from attnbench.suites import load

from cell_fixtures import CRASH, HANG, OK, RAISE, SPAWN_HANG, SPAWN_OK, SPAWN_ORPHAN, SPAWN_SELF_KILL
from conftest import write_suite

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="the fork server needs Linux (os.fork)")


def _trivial(n: int) -> list:
    base = load("memory").cells("ci", mechanisms=["linear", "full"], sizes=[16])
    return [dataclasses.replace(base[i % 2], seed=i // 2) for i in range(n)]


def _run(executor: LocalProcessExecutor, cells: list) -> dict[str, dict]:
    try:
        return {r["key"]: r for r in executor.run_cells(cells)}
    finally:
        executor.close()


def test_forked_cells_give_the_records_of_a_fresh_interpreter() -> None:
    cells = _trivial(2)
    forked = _run(LocalProcessExecutor(start_method="forkserver"), cells)
    fresh = _run(LocalProcessExecutor(start_method="subprocess"), cells)
    assert set(forked) == set(fresh) == {c.key for c in cells}
    for key, rec in forked.items():
        assert rec["status"] == fresh[key]["status"] == "ok"
        for metric in ("peak_memory_bytes", "estimated_memory_bytes", "flops", "estimated_flops"):
            assert rec["metrics"][metric] == fresh[key]["metrics"][metric], metric
        assert rec["env"]["threads"] == fresh[key]["env"]["threads"]
        assert rec["env"]["plugins"] == fresh[key]["env"]["plugins"]


def test_a_crash_a_hang_and_a_bug_in_forked_workers_lose_only_their_cells(tmp_path: Path, worker_path: Path) -> None:
    cells = load(str(write_suite(tmp_path, [OK, CRASH, HANG, RAISE], timeout=3))).cells()
    executor = LocalProcessExecutor(start_method="forkserver")
    records = _run(executor, cells)
    status = {c.size: records[c.key]["status"] for c in cells}
    assert status == {OK: "ok", CRASH: "error", HANG: "timeout", RAISE: "error"}
    assert "code -6" in records[cells[1].key]["reason"]  # SIGABRT, as from a subprocess


def test_close_kills_a_running_forked_worker(tmp_path: Path, worker_path: Path) -> None:
    spec = load(str(write_suite(tmp_path, [HANG]))).cells()[0]
    (tmp_path / "spec.json").write_text(__import__("json").dumps(spec.to_dict()))
    server = forkserver.ForkServer(env=dict(os.environ))
    child = server.spawn(str(tmp_path / "spec.json"), str(tmp_path / "out.json"), str(tmp_path / "log.txt"))
    assert child.poll() is None
    server.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"forked worker {child.pid} still running after close()")


def test_a_server_that_cannot_start_is_reported() -> None:
    server = forkserver.ForkServer(preload=("attnbench_no_such_module",))
    with pytest.raises(forkserver.ForkServerError, match="attnbench_no_such_module"):
        server.start()
    server.close()


def test_jobs_runs_every_cell_once_and_refuses_timing_suites() -> None:
    cells = _trivial(4)
    records = _run(LocalProcessExecutor(jobs=2), cells)
    assert sorted(records) == sorted(c.key for c in cells)
    assert all(r["status"] == "ok" for r in records.values())
    assert {r["env"]["threads"] for r in records.values()} == {max(1, (os.cpu_count() or 1) // 2)}
    speed = load("speed").cells("ci")[:2]
    with pytest.raises(UserError, match="--jobs 2"):
        _run(LocalProcessExecutor(jobs=2), speed)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has ended: only its exit status is left)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("method", ["subprocess", "forkserver"])
def test_what_a_cell_starts_in_a_session_of_its_own_ends_with_the_cell(
        method: str, tmp_path: Path, worker_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sleep 300` started with start_new_session=True (outside the worker's process group): gone
    after an ok cell, a timeout, a worker killed by SIGKILL, and when its own parent exited first."""
    monkeypatch.setenv("ATTNBENCH_TEST_PID_DIR", str(tmp_path))
    sizes = [SPAWN_OK, SPAWN_HANG, SPAWN_SELF_KILL, SPAWN_ORPHAN]
    cells = load(str(write_suite(tmp_path, sizes, timeout=20))).cells()  # a fresh interpreter may take 5 s to start
    records = _run(LocalProcessExecutor(start_method=method), cells)
    status = {c.size: records[c.key]["status"] for c in cells}
    assert status == {SPAWN_OK: "ok", SPAWN_HANG: "timeout", SPAWN_SELF_KILL: "killed", SPAWN_ORPHAN: "ok"}
    pids = {size: int((tmp_path / f"{size}.pid").read_text()) for size in sizes}
    deadline = time.monotonic() + 10  # SIGKILL is delivered at once; the kernel may take a moment to reap
    while time.monotonic() < deadline and any(_running(p) for p in pids.values()):
        time.sleep(0.05)
    assert {size: _running(pid) for size, pid in pids.items()} == dict.fromkeys(sizes, False)
@pytest.mark.parametrize("suite, preset, timed", [
    ("speed", "ci", True), ("reconstruction", "quick", True), ("search", "ci", True), ("memory", "ci", False),
    ("inpainting", "quick", False), ("colorization", "smoke", False),
])
def test_every_suite_that_records_a_time_is_refused_side_by_side(suite: str, preset: str, timed: bool) -> None:
    from attnbench.executors.launch import is_timing_cell

    cells = load(suite).cells(preset)[:2]
    assert all(is_timing_cell(c) == timed for c in cells)
    if timed:  # refused before any cell starts, whichever suite it is
        with pytest.raises(UserError, match=rf"--jobs 2: suite {suite} measures time"):
            _run(LocalProcessExecutor(jobs=2), cells)
    untimed = load("reconstruction").cells("quick", options={"timing": False})[:1]
    assert not is_timing_cell(untimed[0])
