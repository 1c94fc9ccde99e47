"""``attnbench run SUITE``: parse the command line, check it all, then hand the cells to the run loop.

Everything a user can get wrong is checked here before any worker starts (one line, exit 2): the
suite and its options, the grid, ``--timeout``, ``--data`` and ``--out`` (writable, not locked by
another run). The run itself is :func:`attnbench.runloop.run_cells`.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..cells import GridKey, grid_keys
from ..console import STATUS_STYLE
from ..errors import UserError
from ..prepare import DEFAULT_TIMEOUT_S as PREPARE_TIMEOUT_S
from ..argtypes import int_option

NAME = "run"
HELP = "run a suite (memory, speed, reconstruction, ...) and append one record per cell"
#: what attnbench's Ctrl-C message adds for this command (cli.main)
INTERRUPTED = "finished cells are saved (re-run with --resume)"
DEFAULT_OUT = Path("results/runs")
EPILOG = """exit status: 0 every cell ok, infeasible, unavailable or unsupported; 2 bad input (nothing ran);
3 some cell ended error, timeout, killed or oom (a summary names them); 4 the results file could
not be written (every complete record is kept: rerun with --resume); 130 interrupted (Ctrl-C, SIGTERM);
129 hung up (SIGHUP: the terminal closed; `nohup` keeps it running). Interrupted or hung up, the
workers are killed and every finished cell is kept: rerun with --resume."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("suite", help="suite name (see `attnbench list suites`) or path to a suite .toml")
    parser.add_argument("--preset", help="preset of the suite (default: the suite's default_preset; "
                        "`attnbench list suites` shows them)")
    for key in grid_keys():  # the grid's flags, declared once with CellSpec's fields
        parser.add_argument(key.flag, dest=key.name, type=_grid_parser(key), metavar=_METAVARS.get(key.name),
                            help=f"{key.help} (default: the preset's)")
    parser.add_argument("--data", metavar="DIR", help="your images for the image-task suites: NAME_a.png + NAME_b.png "
                        "pairs, sub-folders of two images, or a DAVIS JPEGImages/<res>/<sequence>/ tree "
                        "(default: the embedded pairs)")
    parser.add_argument("--out", default=f"{DEFAULT_OUT}/",
                        help=f"results folder (file SUITE-PRESET.jsonl in it; with --channels, --patch-size, --batch, "
                        "--dtype, --device or --seed other than the preset's, SUITE-PRESET-C8-p3-B2-float64-cuda-seed1.jsonl "
                        f"for the ones set) or .jsonl file (default: {DEFAULT_OUT}/); "
                        "an existing file is moved to NAME.<time>.prev unless --resume")
    parser.add_argument("--resume", action="store_true", help="keep the results file and skip cells already in it "
                        "(cells that ended error, timeout or killed run again)")
    parser.add_argument("--keep-failed", action="store_true", help="with --resume: do not run again cells that "
                        "ended error, timeout or killed")
    parser.add_argument("--prepare-timeout", type=_timeout_arg, default=PREPARE_TIMEOUT_S, metavar="SECONDS",
                        help="limit of the one-time preparation of mechanisms, e.g. PSAL's kernel build "
                             f"(default: {PREPARE_TIMEOUT_S:g})")
    parser.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    parser.add_argument("--no-table", action="store_true", help="do not print the summary table at the end")
    from ..executors import add_executor_arguments

    add_executor_arguments(parser)


#: how the command line spells a value of these grid keys (default: CellSpec's field type)
_METAVARS = {"channels": "C", "patch_size": "P", "batch": "B", "timeout": "SECONDS", "modes": "MODE", "sizes": "SIZES"}


def _grid_parser(key: GridKey) -> Any:
    """The argparse ``type`` of a grid flag: a comma-separated list for an axis, else one value in
    the range CellSpec declares."""
    if key.name == "mechanisms":
        from ..specs import split_specs

        return split_specs
    if key.name == "modes":
        return parse_modes
    if key.axis:
        return parse_sizes
    if key.type is int:
        return int_option(key.flag, minimum=int(key.minimum or 0), maximum=key.maximum)
    if key.type is float:
        return _timeout_arg
    return str


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--timeout must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--timeout must be a positive, finite number of seconds, got {text!r}")
    return value


def parse_sizes(text: str) -> list[int]:
    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            size = int(item)
        except ValueError:
            raise UserError(f"bad size {item!r} in --sizes; sizes are positive integers, e.g. --sizes 64,128") from None
        if size <= 0:
            raise UserError(f"bad size {size} in --sizes; sizes are positive integers, e.g. --sizes 64,128")
        sizes.append(size)
    if not sizes:
        raise UserError("--sizes is empty; e.g. --sizes 64,128")
    return sizes


def parse_modes(text: str) -> list[str]:
    from ..cells import MODES

    modes = list(MODES) if text.strip() == "both" else [m.strip() for m in text.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}, both")
    return modes


def grid_tag(preset_grid: dict[str, Any], overrides: dict[str, Any]) -> str:
    """``-C8-p3``: the grid settings with a tag (CellSpec declares which) that the command line
    changed from the preset's, so that a run of another setting never takes (and moves aside) the
    preset's file. Mechanisms, sizes, modes and the timeout only choose which cells of the preset's
    setting run: no tag."""
    tags = [f"{key.tag}{overrides[key.name]}".replace(":", "") for key in grid_keys() if key.tag is not None
            and overrides.get(key.name) is not None and overrides[key.name] != preset_grid.get(key.name, key.default)]
    return "".join(f"-{t}" for t in tags)


def results_path(out: Optional[str], suite: str, preset: str, tag: str = "") -> Path:
    """``--out FILE.jsonl`` as given, else ``FOLDER/SUITE-PRESET[TAG].jsonl`` (see :func:`grid_tag`)."""
    if out and out.endswith(".jsonl"):
        return Path(out)
    folder = Path(out or DEFAULT_OUT)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: not a folder; give a folder or a .jsonl file")
    return folder / f"{suite}-{preset}{tag}.jsonl"


def _summary(record: dict[str, Any]) -> str:
    from ..metrics import summary_line

    parts = [summary_line(record.get("metrics", {}))]
    if record["status"] != "ok":
        parts.append(str(record.get("reason", ""))[:160])
    return ", ".join(p for p in parts if p)


def check_data(folder: str, cells: list, runner: str, suite: str) -> str:
    """``--data``: a folder the suite can use, whose images the cells need all decode (else UserError)."""
    from ..options import runner_options
    from ..tasks.data import check_user_images

    cls = runner_options(runner)
    if cls is None or not cls.uses_images():
        raise UserError(f"--data: suite {suite!r} uses no images (it runs on random inputs); drop --data")
    data = Path(folder)
    if not data.is_dir():
        raise UserError(f"--data {data}: not a folder; give a folder of image pairs or a DAVIS-style folder")
    needed = max((cls.of(c).images_needed() for c in cells), default=1)
    found = check_user_images(data, needed, size=max((c.size for c in cells), default=None))
    from ..console import make_console, plain

    make_console(stderr=True).print(plain(f"--data {data}: {found} image pairs found, the first {min(needed, found)} "
                                          "used and all of them readable"))
    return str(data.resolve())


def _cells(args: argparse.Namespace) -> tuple[Any, list, dict[str, Any]]:
    """The suite, its cells with the command line's overrides, every check on them that needs no
    work done (specs, --jobs, the machine, --data): bad input fails here, before anything runs."""
    from ..executors import check_executor_options
    from ..options import runner_options
    from ..registry import validate_specs
    from ..suites import load

    check_executor_options(args)
    suite = load(args.suite)
    overrides: dict[str, Any] = {key.name: getattr(args, key.name) for key in grid_keys()}
    cells = suite.cells(args.preset, **overrides)
    validate_specs(cells)  # bad mechanism parameters or seed: one line, exit 2, before any worker
    if (getattr(args, "executor", None) or "local") == "local":
        from ..executors.launch import check_jobs

        check_jobs(getattr(args, "jobs", None) or 1, cells)
    options_cls = runner_options(suite.runner)
    if options_cls is not None and cells:
        options_cls.of(cells[0]).check_machine()  # e.g. an unwritable ATTNBENCH_CACHE, named once
    if not args.data and any(c.options.get("require_data") for c in cells):
        raise UserError(f"suite {suite.name!r} preset {cells[0].preset!r} measures your own image pair: pass --data DIR "
                        "(a folder of NAME_a/NAME_b images, or of sub-folders of two frames; see README)")
    if args.data:
        data = check_data(args.data, cells, suite.runner, suite.name)
        cells = suite.cells(args.preset, **overrides, options={"data": data})
    return suite, cells, overrides


def run(args: argparse.Namespace) -> int:
    from .. import runloop
    from ..console import make_console, plain
    from ..resultsfile import ResultsFile

    suite, cells, overrides = _cells(args)
    preset = cells[0].preset if cells else (args.preset or suite.default_preset)
    out = results_path(args.out, suite.name, preset, grid_tag(suite.resolved(preset)[1], overrides))
    console = make_console(stderr=True)

    def note(msg: str) -> None:
        console.print(plain(msg))

    with runloop.sigterm_as_interrupt(), \
            ResultsFile.open(out, resume=args.resume, keep_failed=args.keep_failed, note=note,
                             suite=suite.name) as results:
        todo = results.todo(cells, note)
        console.print(f"[bold]{plain(suite.name)}[/] ({plain(preset)}): {len(cells)} cells, "
                      f"{len(cells) - len(todo)} already done -> {plain(out)}")
        failures: dict[str, str] = {}
        if todo:
            calibrated = {c.key: c for c in runloop.calibrate(todo, note)}
            cells = [calibrated.get(c.key, c) for c in cells]
            todo = [calibrated[c.key] for c in todo]
            failures = runloop.prepare(todo, args.prepare_timeout, note)
        summary = _run_with_progress(todo, cells, results, args, console, failures)
    console.print(plain(summary.line()))
    if summary.failed and not (summary.total and summary.skipped == summary.total):
        console.print(plain(f"failed cells ({len(summary.failed)}): " + "; ".join(summary.failed[:10])
                            + (" ..." if len(summary.failed) > 10 else "") + " -- `--resume` runs them again"))
    if args.json:
        print(json.dumps({"suite": suite.name, "preset": preset, **summary.to_json()}))
    elif not args.no_table and not summary.write_error:
        from .. import schema

        print_table(schema.read(out), suite.name)
    return summary.exit_code


def _run_with_progress(todo: list, cells: list, results: Any, args: argparse.Namespace, console: Any,
                       failures: dict[str, str]) -> Any:
    from dataclasses import replace

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    from .. import runloop
    from ..context import RunContext
    from ..executors import make_executor

    by_key = {c.key: c for c in cells}
    if not todo:  # everything is in the file already: no bar, no executor
        return runloop.run_cells(cells, results, _NoExecutor())
    resized = tempfile.TemporaryDirectory(prefix="attnbench-resized-")  # --data images, resized once per run
    context = RunContext(examples_dir=str(results.path.with_suffix(".examples")), resized_images=resized.name,
                         prepared=True).to_dict()  # one-time set-up was tried by this run (runloop.prepare)
    cells = [replace(c, context=context) for c in cells]
    todo = [replace(c, context=context) for c in todo]
    try:
        executor = make_executor(args)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False) as progress:
            task = progress.add_task(f"running {todo[0].label}" if todo else "nothing to run", total=len(todo))
            remaining = [c.key for c in todo]

            def on_record(record: dict[str, Any]) -> None:
                key = record.get("key", "")
                if key in remaining:
                    remaining.remove(key)
                status = record["status"]
                label = by_key[key].label if key in by_key else key
                line = Text(f"{status:>11}", style=STATUS_STYLE.get(status, "")) + Text(f" {label}: {_summary(record)}")
                progress.console.print(line)
                progress.update(task, advance=1, description=f"running {by_key[remaining[0]].label}" if remaining
                                else "done")

            summary = runloop.run_cells(cells, results, executor, on_record=on_record, failed_preparation=failures)
            progress.update(task, description="done" if not summary.write_error else "stopped")
    finally:
        resized.cleanup()
    return summary


class _NoExecutor:
    name = "none"

    def run_cells(self, specs: Any) -> Any:
        return iter(())

    def close(self) -> None:
        pass


def print_table(records: list[dict[str, Any]], suite: str) -> None:
    """The suite's paper-shaped table, as `attnbench report` shows it."""
    from ..report.tables import render_rich, suite_table, wide_console

    table = suite_table(records, suite)
    wide_console().print(render_rich(table, table.attrs.get("title") or suite))
