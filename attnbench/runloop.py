"""The run loop: cells in, records appended, a summary out (``attnbench run`` is argparse around it).

Why a module: the CLI, tests and other front ends run cells the same way. The loop owns the
order of things that make a run trustworthy:

1. :func:`calibrate`: measure once per device what the runners declare they need (the matmul
   yardstick ``flops_per_s``; for timed cells also the triad's ``bytes_per_s``), carried in
   ``CellSpec.calibration``, which is not part of a cell's identity;
2. :func:`prepare`: one-time set-up of the mechanisms (a kernel build) in the parent, with a
   timeout (:mod:`attnbench.prepare`);
3. :func:`run_cells`: dispatch to an injected executor, append each record as it arrives, stop
   cleanly on a write error (every complete record kept) and, on any exit (normal, Ctrl-C,
   SIGTERM, SIGHUP), close the executor so that no worker outlives the run.

Exit statuses (:class:`RunSummary.exit_code`): 0 every cell ok, infeasible, unavailable or unsupported;
3 a cell ended error, timeout, killed or oom; 4 results could not be written; 2 (bad input),
130 (interrupted: Ctrl-C, SIGTERM) and 129 (SIGHUP: the terminal closed) come from the CLI.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .cells import FAILED_STATUSES, CellSpec
from .executors import Executor
from .resultsfile import ResultsFile, ResultsWriteError

EXIT_OK = 0
EXIT_CELLS_FAILED = 3
EXIT_WRITE_FAILED = 4

Note = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class RunSummary:
    """What a run did: counts per status, the cells that failed, and why it stopped early if it did."""

    out: Path
    total: int
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    write_error: Optional[str] = None

    @property
    def ran(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        if self.write_error:
            return EXIT_WRITE_FAILED
        return EXIT_CELLS_FAILED if any(self.counts.get(s) for s in FAILED_STATUSES) else EXIT_OK

    def line(self) -> str:
        """One line for a person: what ran, what failed, where the results are."""
        if self.total and self.skipped == self.total:
            return f"nothing to run: all {self.total} cells are already in {self.out}"
        done = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "no cell finished"
        text = f"cells: {done}" + (f" ({self.skipped} already done)" if self.skipped else "") + f"; results in {self.out}"
        if self.write_error:
            text += f"; stopped: {self.write_error}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "total": self.total, "skipped": self.skipped, "counts": dict(self.counts),
                "failed": list(self.failed), "write_error": self.write_error, "exit_code": self.exit_code}


# ----------------------------------------------------------------------------- before dispatch
def _calibration_functions() -> dict[str, Callable[[str], float]]:
    from .measure.timing import matmul_flops_per_s, triad_bytes_per_s

    return {"flops_per_s": matmul_flops_per_s, "bytes_per_s": triad_bytes_per_s}


def calibrate(cells: Sequence[CellSpec], note: Note = _quiet) -> list[CellSpec]:
    """Measure, once per device, what the cells' runners declare they need (``OPTIONS.calibrations``)."""
    from .options import runner_options

    functions = _calibration_functions()
    measured: dict[tuple[str, str], float] = {}
    out = []
    for cell in cells:
        cls = runner_options(cell.runner)
        needs = cls.of(cell).calibrations() if cls is not None else ()
        values = dict(cell.calibration)
        for name in needs:
            if name in values:
                continue
            if (name, cell.device) not in measured:
                note(f"measuring {name} on {cell.device} (a yardstick, once per run)...")
                measured[name, cell.device] = functions[name](cell.device)
                if name == "flops_per_s":
                    note(f"matmul yardstick: {measured[name, cell.device] / 1e9:.1f} GFLOP/s "
                         "(skips cells that cannot finish; timed cells report their FLOP/s as % of it)")
                elif name == "bytes_per_s":
                    note(f"triad yardstick: {measured[name, cell.device] / 1e9:.1f} GB/s "
                         "(timed cells report their bytes/s as % of it)")
            values[name] = measured[name, cell.device]
        out.append(replace(cell, calibration=values) if values != cell.calibration else cell)
    return out


def prepare(cells: Sequence[CellSpec], timeout_s: float, note: Note = _quiet) -> dict[str, str]:
    """One-time set-up of the cells' mechanisms in the parent; returns mechanism name -> failure."""
    from .prepare import plugins_to_prepare, prepare_plugins
    from .registry import resolve

    failed_plugins = prepare_plugins(plugins_to_prepare(cells), timeout_s, note)
    return {c.mechanism: failed_plugins[resolve(c.mechanism)[0].name] for c in cells
            if resolve(c.mechanism)[0].name in failed_plugins}


# ----------------------------------------------------------------------------- the loop
class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: workers killed, finished records kept, one line."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """130 as Ctrl-C for SIGTERM (documented so), 129 (128 + 1, what a shell expects) for SIGHUP."""
        return 129 if self.signum == signal.SIGHUP else 130


def _on_signal(signum: int, frame: Any) -> None:
    raise Terminated(signum)


#: signals that end a run as Ctrl-C does; SIGHUP: the terminal closed (an ssh session dropped)
INTERRUPTING = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise KeyboardInterrupt (so every ``finally`` runs and kills
    workers). A SIGHUP ignored by the caller (``nohup``) stays ignored: the run goes on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in INTERRUPTING:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _failed_preparation(cells: Sequence[CellSpec], failures: dict[str, str]) -> Iterator[dict[str, Any]]:
    from .schema import now_iso, outside_record

    for cell in cells:
        yield outside_record(cell, "error", failures[cell.mechanism], started_at=now_iso(), duration_s=0.0)


def run_cells(cells: Sequence[CellSpec], results: ResultsFile, executor: Executor,
              on_record: Optional[Callable[[dict[str, Any]], None]] = None,
              failed_preparation: Optional[dict[str, str]] = None) -> RunSummary:
    """Run ``cells`` (those ``results.todo`` leaves: not finished, or finished under another definition)
    on ``executor``, appending each record.

    Never raises for a cell's failure; a results write error stops the run (``summary.write_error``);
    Ctrl-C and SIGTERM raise KeyboardInterrupt after the executor is closed.
    """
    failures = failed_preparation or {}
    todo = results.todo(cells)
    summary = RunSummary(results.path, total=len(cells), skipped=len(cells) - len(todo))
    labels = {c.key: c.label for c in cells}
    dispatch = [c for c in todo if c.mechanism not in failures]
    unprepared = [c for c in todo if c.mechanism in failures]

    sources = (_failed_preparation(unprepared, failures), executor.run_cells(dispatch) if dispatch else iter(()))
    try:
        with sigterm_as_interrupt():
            for record in (r for source in sources for r in source):
                try:
                    results.append(record)
                except ResultsWriteError as exc:
                    summary.write_error = (f"{exc}; {results.written} complete records kept; free space, then run "
                                           "the same command with --resume to continue")
                    return summary
                status = record.get("status", "error")
                summary.counts[status] = summary.counts.get(status, 0) + 1
                if status in FAILED_STATUSES:
                    summary.failed.append(f"{labels.get(record.get('key', ''), record.get('key', '?'))}: {status}")
                if on_record is not None:
                    on_record(record)
    finally:
        executor.close()
    return summary
