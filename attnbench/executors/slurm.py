"""The Slurm executor: cells as Slurm job arrays, submitted and collected with submitit.

Cells that need the same resources (``resources.py``: CPUs, GPUs, memory, time limit) go into one
job array; each array task runs one cell exactly as locally (the local executor's single-cell
``run``, a fresh worker process with the cell's timeout), so a crash loses only that cell. The
cell is requeued when Slurm preempts it (submitit's checkpoint/requeue; a cell restarts from
scratch, it has no partial state worth keeping).

The job folder (``--slurm-folder``) is where finished records are collected from: submitit
writes each task's record there (``<job>_result.pkl``), and ``cells.jsonl`` there maps each cell
key to its job id as soon as the array is submitted. So if the driver dies, ``--resume``
re-attaches to the cells already submitted, collects those that finished meanwhile and waits for
the rest instead of running anything twice. The Slurm job id goes into the record's env.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ..cells import CellSpec
from ..errors import UserError
from ..schema import driver_record, submitted_now
from . import resources

#: Slurm states of a job that ended without a record, and the status its cell gets
ENDED = {"TIMEOUT": "timeout", "DEADLINE": "timeout", "OUT_OF_MEMORY": "oom", "FAILED": "error",
         "NODE_FAIL": "error", "BOOT_FAIL": "error"}


#: cells per job array: Slurm's default MaxArraySize is 1001
MAX_ARRAY = 1000


def _submitit():  # type: ignore[no-untyped-def]
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'attnbench[slurm]'") from None
    return submitit


class SlurmCell:
    """What one array task runs (pickled by submitit): one cell, in its own worker process."""

    def __call__(self, spec_dict: dict[str, Any]) -> dict[str, Any]:
        from .launch import SubprocessLauncher
        from .local import LocalProcessExecutor

        spec = CellSpec.from_dict(spec_dict)
        executor = LocalProcessExecutor(start_method="subprocess")
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:  # torch uses the CPUs Slurm gave the cell, not every core of the node
            executor.env.setdefault("OMP_NUM_THREADS", cpus)
        # the worker dies with this task (a requeue or scancel must not leave it running)
        executor.launcher = SubprocessLauncher(executor.python, executor.env, die_with_parent=True)
        try:
            record = executor.run(spec)
        finally:
            executor.close()
        job_id = _job_id()
        env = record.setdefault("env", {})
        env["slurm_job_id"] = job_id
        env["executor"] = {
            "name": "slurm", "slurm_job_id": job_id,
            "node": os.environ.get("SLURMD_NODENAME"), "partition": os.environ.get("SLURM_JOB_PARTITION"),
            "cpus": os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE"),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "mem_mb": os.environ.get("SLURM_MEM_PER_NODE"),
            "requeued": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        }
        return record

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or out of time: requeue the cell from the start (submitit calls this)."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _job_id() -> Optional[str]:
    try:
        return _submitit().JobEnvironment().job_id
    except Exception:  # noqa: BLE001 -- not inside a Slurm job (a test calling SlurmCell directly)
        return os.environ.get("SLURM_JOB_ID")


class SlurmExecutor:
    """Submits cells as job arrays and yields their records as the array tasks finish."""

    name = "slurm"

    def __init__(self, folder: str | Path = "results/runs/slurm", partition: Optional[str] = None,
                 time_limit_min: Optional[int] = None, cpus_per_cell: int = 1, gpus_per_cell: int = 1,
                 timing_cpus: Optional[int] = None, mem_per_cell_gb: Optional[float] = None,
                 array_parallelism: int = 256, poll_s: float = 2.0, slurm_options: Optional[dict[str, Any]] = None):
        self.folder = Path(folder).resolve()
        self.partition, self.time_limit_min = partition, time_limit_min
        self.cpus_per_cell, self.gpus_per_cell, self.timing_cpus = cpus_per_cell, gpus_per_cell, timing_cpus
        self.mem_per_cell_gb, self.array_parallelism, self.poll_s = mem_per_cell_gb, array_parallelism, poll_s
        self.slurm_options = dict(slurm_options or {})
        self._pending: dict[str, tuple[Any, CellSpec]] = {}
        #: job id -> when the driver submitted (or found) it (for the records the driver itself has to make)
        self._since: dict[str, tuple[str, float]] = {}

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:  # noqa: SLF001 -- argparse's own type
        group.add_argument("--partition", help="Slurm partition for the cells (default: the cluster's default)")
        group.add_argument("--time-limit", type=resources.parse_time_limit, help="Slurm time limit per cell, e.g. 48:00:00 (default: 1.5 x the "
                                                "cell's timeout + 5 min)")
        group.add_argument("--mem-per-cell", type=float, help="GB per cell (default: the mechanism's estimate + 1 GB)")
        group.add_argument("--slurm-folder", help="submitit job folder: logs, records, the cell -> job map "
                                                  "(default: slurm/ beside the results file)")
        group.add_argument("--array-parallelism", type=int, default=256, help="array tasks running at once (default 256)")
        resources.add_arguments(group)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SlurmExecutor":
        folder = getattr(args, "slurm_folder", None)
        if not folder:
            out = Path(getattr(args, "out", None) or "results/runs")
            folder = (out.parent if out.suffix == ".jsonl" else out) / "slurm"
        return cls(folder=folder, partition=getattr(args, "partition", None),
                   time_limit_min=getattr(args, "time_limit", None),
                   cpus_per_cell=getattr(args, "cpus_per_cell", 1) or 1, gpus_per_cell=getattr(args, "gpus_per_cell", 1),
                   timing_cpus=getattr(args, "timing_cpus", None), mem_per_cell_gb=getattr(args, "mem_per_cell", None),
                   array_parallelism=getattr(args, "array_parallelism", 256) or 256)

    # -- the cell -> job map in the job folder -------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.folder / "cells.jsonl"

    def submitted(self) -> dict[str, str]:
        """``{cell key: Slurm job id}`` of every cell submitted from this folder (the latest wins)."""
        found: dict[str, str] = {}
        if self.manifest.exists():
            for line in self.manifest.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                found[entry["key"]] = entry["job_id"]
        return found

    def _remember(self, entries: list[tuple[str, str]]) -> None:
        with open(self.manifest, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps({"key": k, "job_id": j}) + "\n" for k, j in entries))
            fh.flush()
            os.fsync(fh.fileno())

    # -- the contract --------------------------------------------------------------------------
    def run_cells(self, specs: Iterable[CellSpec]) -> Iterator[dict[str, Any]]:
        submitit = _submitit()
        specs = list(specs)
        if not specs:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        known = self.submitted()
        queue = _queue()
        fresh: list[CellSpec] = []
        for spec in specs:
            job_id = known.get(spec.key)
            if job_id is None:
                fresh.append(spec)
                continue
            job = submitit.SlurmJob(folder=self.folder, job_id=job_id)
            if job.paths.result_pickle.exists() or job_id in queue or _state(job_id) in ENDED:
                self._pending[job_id] = (job, spec)  # finished, running, or ended: collect, never re-run
                self._since[job_id] = submitted_now()  # submitted by a driver before this one: as seen from now
            else:
                fresh.append(spec)  # cancelled (or forgotten by Slurm) before it finished
        self._submit(submitit, fresh)
        absent: dict[str, int] = {}
        while self._pending:
            queue = _queue()
            present = set(os.listdir(self.folder))  # one directory read per poll, not a stat per cell
            for job_id, (job, spec) in list(self._pending.items()):
                if job.paths.result_pickle.name in present:
                    del self._pending[job_id]
                    yield self._collect(job, spec, self._since.pop(job_id))
                elif job_id not in queue:
                    absent[job_id] = absent.get(job_id, 0) + 1
                    if absent[job_id] >= 3:  # gone from the queue and still no record: it ended without one
                        del self._pending[job_id]
                        yield _ended_record(spec, job_id, self.folder, self._since.pop(job_id))
                else:
                    absent.pop(job_id, None)
            if self._pending:
                time.sleep(self.poll_s)

    def _submit(self, submitit: Any, specs: list[CellSpec]) -> None:
        groups: dict[tuple[int, int, Optional[int], int], list[CellSpec]] = {}
        for spec in specs:
            need = resources.cell_resources(spec, self.cpus_per_cell, self.gpus_per_cell, self.timing_cpus)
            mem_gb = (math.ceil(self.mem_per_cell_gb) if self.mem_per_cell_gb else
                      math.ceil(need.memory_bytes / 2**30) if need.memory_bytes else None)
            minutes = self.time_limit_min or math.ceil(spec.timeout_s * 1.5 / 60) + 5
            groups.setdefault((need.cpus, need.gpus, mem_gb, minutes), []).append(spec)
        chunks = [(need, group[i:i + MAX_ARRAY]) for need, group in groups.items() for i in range(0, len(group), MAX_ARRAY)]
        for (cpus, gpus, mem_gb, minutes), group in chunks:
            executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=0)
            params: dict[str, Any] = {"cpus_per_task": cpus, "time": minutes, "array_parallelism": self.array_parallelism,
                                      "job_name": f"attnbench-{group[0].suite}", **self.slurm_options}
            if self.partition:
                params["partition"] = self.partition
            if gpus:
                params["gpus_per_node"] = gpus
            if mem_gb:
                params["mem"] = f"{mem_gb}G"
            executor.update_parameters(**params)
            cell = SlurmCell()
            with executor.batch():
                jobs = [executor.submit(cell, spec.to_dict()) for spec in group]
            self._remember([(spec.key, job.job_id) for spec, job in zip(group, jobs)])
            for spec, job in zip(group, jobs):
                self._pending[job.job_id] = (job, spec)
                self._since[job.job_id] = submitted_now()

    @staticmethod
    def _collect(job: Any, spec: CellSpec, since: tuple[str, float]) -> dict[str, Any]:
        try:
            return job.result()
        except Exception as exc:  # noqa: BLE001 -- the task failed outside the cell's worker
            lines = [l for l in str(exc).strip().splitlines() if l.strip()]
            return driver_record(spec, "error", f"Slurm job {job.job_id} failed: {(lines[-1] if lines else type(exc).__name__)[:400]}",
                                 since, slurm_job_id=job.job_id)

    def close(self) -> None:
        """Cancel every cell of this run still queued or running (scancel). Idempotent."""
        ids, self._pending = list(self._pending), {}
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def _queue() -> set[str]:
    """Job ids (array tasks as ``JOB_TASK``) that Slurm still has queued or running."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-t", "PD,R,CG,CF,RQ,S,RS,SI,SO"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"--executor slurm: squeue failed: {exc}") from None
    if out.returncode != 0:
        raise UserError(f"--executor slurm: squeue failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return set(out.stdout.split())


def _state(job_id: str) -> str:
    """Slurm's last known state of a job (``scontrol``: kept ``MinJobAge`` after the end), or ''."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return ""


def _ended_record(spec: CellSpec, job_id: str, folder: Path, since: tuple[str, float]) -> dict[str, Any]:
    state = _state(job_id) or "ended"
    status = ENDED.get(state, "error")
    reason = {"timeout": "Slurm killed the cell at its time limit (raise --time-limit)",
              "oom": "Slurm killed the cell for exceeding its memory (raise --mem-per-cell)"}.get(
        status, f"the Slurm job ended ({state}) without a record; see {folder}/{job_id}_0_log.err")
    return driver_record(spec, status, f"job {job_id}: {reason}", since, slurm_job_id=job_id)
