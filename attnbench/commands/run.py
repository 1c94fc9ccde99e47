"""``attnbench run SUITE``: expand a suite into cells, run each in a worker, append records."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import UserError

NAME = "run"
HELP = "run a suite (memory, speed, reconstruction, ...) and append one record per cell"
DEFAULT_OUT = Path("results/runs")

STATUS_STYLE = {"ok": "green", "infeasible": "yellow", "unavailable": "magenta", "oom": "red", "timeout": "red", "error": "red"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="suite name (see `attnbench list suites`) or path to a suite .toml")
    parser.add_argument("--preset", help="preset of the suite (default: the suite's default_preset)")
    parser.add_argument("--mechanisms", help="comma-separated names/specs, e.g. full,flash,psal-3,full[stride=2]")
    parser.add_argument("--sizes", help="comma-separated input sizes (H = W), e.g. 64,128")
    parser.add_argument("--mode", help="fwd, fwd+bwd, or both (comma-separated)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", help="float32, float64, float16, bfloat16")
    parser.add_argument("--channels", type=_int_arg("--channels"))
    parser.add_argument("--patch-size", type=_int_arg("--patch-size"))
    parser.add_argument("--batch", type=_int_arg("--batch"))
    parser.add_argument("--seed", type=_int_arg("--seed", allow_zero=True))
    parser.add_argument("--timeout", type=float, help="seconds per cell before it is recorded as timeout")
    parser.add_argument("--data", help="folder of user images for the task suites (see README)")
    parser.add_argument("--out", help=f"results folder or .jsonl file (default {DEFAULT_OUT}/)")
    parser.add_argument("--resume", action="store_true", help="keep the results file and skip cells already in it")
    parser.add_argument("--no-table", action="store_true", help="do not print the summary table at the end")
    from ..executors import add_executor_arguments

    add_executor_arguments(parser)


def _int_arg(flag: str, allow_zero: bool = False):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"{flag} must be an integer, got {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise UserError(f"{flag} must be positive, got {value}")
        return value
    return parse


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
    modes = ["fwd", "fwd+bwd"] if text.strip() == "both" else [m.strip() for m in text.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("fwd", "fwd+bwd"):
            raise UserError(f"unknown mode {mode!r}; valid: fwd, fwd+bwd, both")
    return modes


def results_path(out: Optional[str], suite: str, preset: str) -> Path:
    if out and out.endswith(".jsonl"):
        return Path(out)
    return Path(out or DEFAULT_OUT) / f"{suite}-{preset}.jsonl"


def _summary(record: dict[str, Any]) -> str:
    from ..metrics import summary_line

    parts = [summary_line(record.get("metrics", {}))]
    if record["status"] != "ok":
        parts.append(record.get("reason", "")[:160])
    return ", ".join(p for p in parts if p)


def run(args: argparse.Namespace) -> int:
    from .. import schema
    from ..executors import make_executor
    from ..registry import split_specs
    from ..suites import load

    suite = load(args.suite)
    overrides: dict[str, Any] = {
        "mechanisms": split_specs(args.mechanisms) if args.mechanisms else None,
        "sizes": parse_sizes(args.sizes) if args.sizes else None,
        "modes": parse_modes(args.mode) if args.mode else None,
        "device": args.device, "dtype": args.dtype, "channels": args.channels,
        "patch_size": args.patch_size, "batch": args.batch, "seed": args.seed, "timeout": args.timeout,
    }
    if args.data:
        data = Path(args.data)
        if not data.is_dir():
            raise UserError(f"--data {data}: not a folder; give a folder of image pairs or a DAVIS-style folder")
        overrides["options"] = {"data": str(data.resolve())}
    cells = suite.cells(args.preset, **overrides)
    preset = cells[0].preset if cells else (args.preset or suite.default_preset)
    out = results_path(args.out, suite.name, preset)

    done: set[str] = set()
    if args.resume:
        schema.drop_torn_tail(out)
        done = set(schema.iter_done_keys(out))
    elif out.exists():
        out.rename(out.with_name(out.name + f".{time.strftime('%Y%m%d-%H%M%S')}.prev"))
    todo = [c for c in cells if c.key not in done]

    console = Console(stderr=True)
    console.print(f"[bold]{suite.name}[/] ({preset}): {len(cells)} cells, {len(cells) - len(todo)} already done -> {out}")
    if todo and "time_margin" in todo[0].options and "flops_per_s" not in todo[0].options:
        from ..measure.timing import matmul_flops_per_s

        rate = matmul_flops_per_s(todo[0].device)
        todo = [c.__class__(**{**c.to_dict(), "options": {**c.options, "flops_per_s": rate}}) for c in todo]
        console.print(f"matmul yardstick: {rate / 1e9:.1f} GFLOP/s (used only to skip cells that cannot finish)")

    os.environ["ATTNBENCH_EXAMPLES_DIR"] = str(out.with_suffix(".examples"))  # task runners save images there
    executor = make_executor(args)
    counts: dict[str, int] = {}
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("starting", total=len(todo))
        by_key = {c.key: c for c in todo}
        try:
            records = executor.run_cells(todo)
            for record in records:
                schema.append(out, record)
                counts[record["status"]] = counts.get(record["status"], 0) + 1
                style = STATUS_STYLE.get(record["status"], "white")
                label = by_key[record["key"]].label if record.get("key") in by_key else record.get("key", "")
                progress.console.print(f"[{style}]{record['status']:>11}[/] {label}: {_summary(record)}")
                progress.advance(task)
        finally:
            executor.close()
        progress.update(task, description="done")

    console.print("cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; results in {out}")
    if not args.no_table:
        print_table(schema.read(out), suite.name)
    return 0


def print_table(records: list[dict[str, Any]], suite: str) -> None:
    """The suite's paper-shaped table, as `attnbench report` shows it."""
    from ..report.tables import render_rich, suite_table, wide_console

    table = suite_table(records, suite)
    wide_console().print(render_rich(table, table.attrs.get("title") or suite))
