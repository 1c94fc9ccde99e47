"""The Slurm executor on a real single-node Slurm (.ci/slurm-up.sh), through submitit.

The memory ci preset (at 32 px, forward: one cell per mechanism) runs as a job array and must match a local run's cells; a driver
killed mid-run and resumed must collect the cells that finished on the cluster, lose none, and
run none twice (one submission per cell in the job folder's cell -> job map, one record each).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason="submitit is not installed (pip install 'attnbench[slurm]')")

from attnbench import schema  # noqa: E402
from attnbench.executors.local import LocalProcessExecutor  # noqa: E402
from attnbench.executors.slurm import SlurmExecutor  # noqa: E402
from attnbench.suites import load  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _node_idle() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm() -> None:
    """A Slurm cluster that accepts jobs: the one running, or the project's own (root, Slurm installed)."""
    if _node_idle():
        return
    if not (shutil.which("slurmctld") and shutil.which("sbatch")):
        pytest.skip("Slurm cannot start here: slurm-wlm is not installed (.ci/slurm-up.sh installs and starts it)")
    if os.geteuid() != 0:
        pytest.skip("Slurm cannot start here: no node accepts jobs and .ci/slurm-up.sh needs root")
    result = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or not _node_idle():
        pytest.skip(f"Slurm cannot start here: .ci/slurm-up.sh failed: {result.stderr.strip()[-300:]}")


def test_memory_ci_cells_as_a_job_array_match_a_local_run(slurm: None, tmp_path: Path) -> None:
    cells = load("memory").cells("ci", sizes=[32], modes=["fwd"])
    executor = SlurmExecutor(folder=tmp_path / "jobs", poll_s=1.0)
    try:
        remote = {r["key"]: r for r in executor.run_cells(cells)}
    finally:
        executor.close()
    local_executor = LocalProcessExecutor()
    try:
        local = {r["key"]: r for r in local_executor.run_cells(cells)}
    finally:
        local_executor.close()

    assert sorted(remote) == sorted(c.key for c in cells)
    for cell in cells:
        r, l = remote[cell.key], local[cell.key]
        assert (r["mechanism"], r["size"], r["status"]) == (l["mechanism"], l["size"], l["status"]), r["reason"]
        for metric in ("estimated_memory_bytes", "estimated_flops", "flops"):
            assert r["metrics"].get(metric) == l["metrics"].get(metric), (cell.label, metric)
    job_ids = [r["env"]["slurm_job_id"] for r in remote.values()]
    assert len(set(job_ids)) == len(cells) and all("_" in j for j in job_ids)  # one array task per cell
    assert len({j.split("_")[0] for j in job_ids}) == 1  # one array for cells of equal resources
    assert executor.submitted() == {k: r["env"]["slurm_job_id"] for k, r in remote.items()}


def test_a_killed_driver_resumes_without_losing_or_rerunning_a_cell(slurm: None, tmp_path: Path) -> None:
    out, folder = tmp_path / "memory.jsonl", tmp_path / "jobs"
    argv = [sys.executable, "-m", "attnbench.cli", "run", "memory", "--preset", "ci", "--sizes", "32",
            "--mechanisms", "full,linear,local,performer,reformer,psal-3", "--mode", "fwd", "--executor", "slurm",
            "--slurm-folder", str(folder), "--out", str(out), "--no-table"]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out.exists() and len(schema.read(out)) >= 2):
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)  # no close(): the submitted cells keep running on the cluster
    driver.wait()
    before = {r["key"] for r in schema.read(out)}
    assert 2 <= len(before) < 6, "the driver should die mid-run"
    submitted = SlurmExecutor(folder=folder).submitted()
    assert len(submitted) == 6

    result = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-1000:]
    records = schema.read(out)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 6  # nothing lost, nothing recorded twice
    assert all(r["status"] == "ok" for r in records), [r["reason"] for r in records]
    # nothing ran twice: still one submission per cell, and each record came from that submission
    assert SlurmExecutor(folder=folder).submitted() == submitted
    assert {r["key"]: r["env"]["slurm_job_id"] for r in records} == submitted
    assert len(list(folder.glob("*_result.pkl"))) == 6
