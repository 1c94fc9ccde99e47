"""``attnbench estimate``: which attention fits my memory, and how fast, without running a suite.

Answers "at my size, channels and patch size, fwd or fwd+bwd, which mechanism fits in my memory
budget and how long does it take" in seconds, from each plugin's analytic estimate:

* memory: the plugin's estimated peak (net of the inputs) plus the inputs (q, k, v and the
  output), compared with ``--budget`` (default: the memory available on the device now);
* time: estimated FLOPs divided by a yardstick, this machine's measured float32 matmul rate.
  It is a prediction, not a measurement: gathers, sorts and memory traffic are slower than
  matmul FLOPs, so mechanisms dominated by them (PSAL, local) take longer than predicted.

``--measure`` confirms the mechanisms that fit by running them as cells of the ``memory`` suite
(same runner, worker processes and records as ``attnbench run``), memory, FLOPs and time.
Units: GiB (2^30 bytes), GFLOP, seconds.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Optional

from ..cells import MODES
from ..metrics import GIB, parse_budget
from ..argtypes import int_option

NAME = "estimate"
HELP = "which mechanisms fit a memory budget at a size, and how fast: estimates in seconds (--measure confirms)"
GiB = GIB  # the one gibibyte (attnbench.metrics)


def parse_bytes(text: str) -> int:
    """``"4GiB"`` -> 4294967296: :func:`attnbench.metrics.parse_budget`, in whole bytes."""
    return int(parse_budget(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int_option("--size", maximum=1_000_000), required=True, help="input size H = W in pixels")
    parser.add_argument("--channels", type=int_option("--channels", maximum=1_000_000), default=16, help="channels C (default 16)")
    parser.add_argument("--patch-size", type=int_option("--patch-size", maximum=1_000_000, odd=True), default=7,
                        help="patch size p, odd (default 7)")
    parser.add_argument("--batch", type=int_option("--batch", maximum=1_000_000), default=1, help="batch size B (default 1)")
    parser.add_argument("--mode", choices=MODES, default=MODES[0],
                        help="forward only (inference) or forward + backward (training); default fwd")
    parser.add_argument("--dtype", default="float32", help="float32 (default), float64, float16, bfloat16")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--budget", default=None,
                        help="memory budget, e.g. 4GiB or 512MiB (default: memory available on the device now)")
    parser.add_argument("--mechanisms", default=None,
                        help="comma-separated names/specs (default: every available mechanism variant)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--measure", action="store_true",
                        help="run the mechanisms that fit as memory-suite cells to confirm memory and time")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="with --measure: seconds per cell (default 300)")
    parser.add_argument("--out", default=None, help="with --measure: also append the records to this .jsonl file")
    from ..executors import add_executor_arguments

    add_executor_arguments(parser)


def default_specs() -> list[str]:
    """Every variant of every available plugin (``psal-1``, ``psal-3``, ``psal-aggreg``, ``full``...)."""
    from ..registry import plugins

    return [v for info in plugins().values() if info.availability.ok and info.cls is not None for v in info.variants]


def estimate_rows(specs: list[str], shape: Any, budget: int, rate: float) -> list[dict[str, Any]]:
    """One row per spec: estimated memory (bytes, GiB), FLOPs, expected seconds, whether it fits."""
    from ..errors import Unavailable, UserError
    from ..registry import mechanism

    input_bytes = (2 * shape.channels + 2 * shape.value_channels) * shape.batch * shape.n_queries * shape.dtype_bytes
    rows = []
    for spec in specs:
        row: dict[str, Any] = {"mechanism": spec, "status": "ok", "reason": ""}
        try:
            module = mechanism(spec, patch_size=shape.patch_size)
            est = module.estimate(shape)
        except Unavailable as exc:
            row.update(status="unavailable", reason=str(exc))
        except UserError as exc:
            raise exc
        except Exception as exc:  # noqa: BLE001 -- one plugin's failure is its row, not the command's
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row.update(status="error", reason=f"{type(exc).__name__}: {text}"[:300])
        else:
            needed = int(est.memory_bytes) + input_bytes
            row.update(
                params=module.params(), complexity=est.formula or module.complexity,
                memory_bytes=int(est.memory_bytes), input_bytes=input_bytes, needed_bytes=needed,
                memory_gib=est.memory_bytes / GiB, needed_gib=needed / GiB,
                flops=int(est.flops), gflop=est.flops / 1e9,
                expected_time_s=est.seconds_at(rate) if rate > 0 else None, matmul_share=est.matmul_share,
                fits=needed <= budget,
            )
        rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    ok.sort(key=lambda r: (not r["fits"], r["needed_bytes"]))
    return ok + [r for r in rows if r["status"] != "ok"]


def _g(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def measure(rows: list[dict[str, Any]], args: argparse.Namespace, rate: float, console: Any) -> None:
    """Run the fitting rows as memory-suite cells (memory, FLOPs, time); add what was measured."""
    import contextlib
    from dataclasses import replace
    from pathlib import Path

    from ..executors import make_executor
    from ..resultsfile import ResultsFile
    from ..suites import load

    fitting = [r for r in rows if r["status"] == "ok" and r["fits"]]
    if not fitting:
        return
    cells = load("memory").cells(
        "table1", mechanisms=[r["mechanism"] for r in fitting], sizes=[args.size], modes=[args.mode],
        channels=args.channels, patch_size=args.patch_size, batch=args.batch, device=args.device,
        dtype=args.dtype, timeout=args.timeout,
        options={"metrics": ["memory", "flops", "time"], "time_margin": 1.0},
    )
    # the yardstick this command already measured travels as the cells' calibration (not their identity)
    cells = [replace(c, calibration={**c.calibration, "flops_per_s": rate}) for c in cells]
    by_key = {c.key: r for c, r in zip(cells, fitting)}
    console.print(f"measuring {len(cells)} cells of the memory suite (timeout {args.timeout:g} s each)...")
    executor = make_executor(args)
    # the run's own results file: checked, locked, appended and fsynced as `attnbench run` does
    results = ResultsFile.open(Path(args.out), suite="memory") if args.out else contextlib.nullcontext()
    try:
        with results:
            _measured_rows(executor.run_cells(cells), results if args.out else None, by_key, console)
    finally:
        executor.close()


def _measured_rows(records: Any, results: Any, by_key: dict[str, dict[str, Any]], console: Any) -> None:
    """Each measured record into its row (and the results file, when one was asked for)."""
    for record in records:
        if results is not None:
            results.append(record)
        row = by_key.get(record["key"])
        if row is None:
            continue
        m = record.get("metrics") or {}
        row["measured"] = {"status": record["status"], "reason": record.get("reason", ""),
                           "peak_memory_bytes": m.get("peak_memory_bytes"), "flops": m.get("flops"),
                           "time_median_s": m.get("time_median_s"), "time_iqr_s": m.get("time_iqr_s")}
        console.print(f"{record['status']:>11} {row['mechanism']}", markup=False, highlight=False)


def run(args: argparse.Namespace) -> int:
    from ..console import make_console
    from ..errors import UserError
    from ..interface import ProblemShape, dtype_from_name
    from ..measure.memory import available_memory_bytes
    from ..measure.timing import matmul_flops_per_s
    from ..registry import validate_specs
    from ..specs import split_specs
    from ..suites import check_device

    import torch

    if args.patch_size > args.size:
        raise UserError(f"--patch-size {args.patch_size} is larger than --size {args.size}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    check_device(args.device)
    dtype = dtype_from_name(args.dtype)
    specs = split_specs(args.mechanisms) if args.mechanisms else default_specs()
    if not specs:
        raise UserError("no mechanism to estimate")
    validate_specs(specs)
    budget = parse_bytes(args.budget) if args.budget else available_memory_bytes(args.device)
    budget_source = "--budget" if args.budget else f"memory available on {args.device} now"
    shape = ProblemShape.square(args.size, args.channels, args.patch_size, args.batch,
                                dtype_bytes=torch.empty((), dtype=dtype).element_size(), mode=args.mode)
    err = make_console(stderr=True)
    rate = matmul_flops_per_s(args.device)
    rows = estimate_rows(specs, shape, budget, rate)
    if args.measure:
        measure(rows, args, rate, err)

    time_note = (f"expected time = estimated FLOPs / {rate / 1e9:.3g} GFLOP/s, this machine's measured float32 "
                 f"matmul rate (a yardstick, not a measurement), times the share of it a plugin states it reaches")
    if args.json:
        settings = {"size": args.size, "channels": args.channels, "patch_size": args.patch_size, "batch": args.batch,
                    "mode": args.mode, "dtype": args.dtype, "device": args.device}
        print(json.dumps({"settings": settings, "budget_bytes": budget, "budget_gib": budget / GiB,
                          "budget_source": budget_source, "yardstick_flops_per_s": rate, "time_note": time_note,
                          "mechanisms": rows}, indent=2, default=str))
        return 0
    make_console().print(_table(args, rows, budget, budget_source, time_note))
    return 0


def _table(args: argparse.Namespace, rows: list[dict[str, Any]], budget: float, budget_source: str,
           time_note: str) -> Any:
    """The terminal table: one row per mechanism, the measured columns when --measure ran."""
    from rich.table import Table
    from rich.text import Text

    title = (f"Estimates at {args.size}x{args.size} px, C={args.channels}, p={args.patch_size}, B={args.batch}, "
             f"{args.mode}, {args.dtype} on {args.device}; budget {budget / GiB:.3g} GiB ({budget_source})")
    table = Table(title=Text(title, style="bold"), title_justify="left",
                  caption=Text(f"memory: estimated peak net of the inputs; fits: peak + inputs "
                               f"({rows[0].get('input_bytes', 0) / GiB:.3g} GiB) within the budget. {time_note}.",
                               style="dim"), caption_justify="left")
    columns = ["mechanism", "complexity", "memory GiB", "GFLOP", "expected s", "fits"]
    if args.measure:
        columns += ["measured GiB", "measured s"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("mechanism", "complexity", "fits") else "right")
    for r in rows:
        if r["status"] != "ok":
            table.add_row(Text(r["mechanism"]), Text(f"{r['status']}: {r['reason']}", style="red"),
                          *[""] * (len(columns) - 2))
            continue
        cells = [Text(r["mechanism"]), Text(r["complexity"]), _g(r["memory_gib"]), _g(r["gflop"]),
                 _g(r["expected_time_s"]), Text("yes" if r["fits"] else "no", style="green" if r["fits"] else "red")]
        if args.measure:
            m = r.get("measured") or {}
            if m and m["status"] == "ok":
                peak = m.get("peak_memory_bytes")
                cells += [_g(peak / GiB if peak is not None else None), _g(m.get("time_median_s"))]
            elif m:
                cells += [Text(m["status"], style="red"), Text(str(m.get("reason", ""))[:80])]
            else:
                cells += ["", ""]
        table.add_row(*cells)
    return table
