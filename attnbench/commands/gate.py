"""``attnbench gate CURRENT --baseline BASELINE``: exit 1 when a cell regressed, 0 when none did.

Deterministic metrics are held to tight tolerances, time to its ratio to a reference mechanism
measured in the same run (see :mod:`attnbench.report.gate`), and not judged across machines unless
``--cross-machine``. Exit codes: 0 ok, 1 regression, 2 bad
input (unreadable results, a baseline of another schema version, a malformed tolerance).
"""
from __future__ import annotations

import argparse

NAME = "gate"
HELP = "fail (exit 1) when results regressed against a baseline: memory, FLOPs, quality, time vs a reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("current", nargs="+", metavar="CURRENT", help="result files or folders of the run to judge")
    parser.add_argument("--baseline", nargs="+", required=True, metavar="BASELINE",
                        help="result files or folders of the baseline (e.g. results/baselines)")
    parser.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                        help="relative tolerance, e.g. peak_memory_bytes=0.05 or time_ratio=10%% "
                             "(repeatable; overrides the suite file's [gate.tolerances])")
    parser.add_argument("--reference", default=None,
                        help="mechanism that times are judged against (default: the suite's [gate] reference, or flash)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="significance level of the Mann-Whitney test on time samples (default 0.05)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="report baseline cells absent from the current run without failing")
    parser.add_argument("--cross-machine", action="store_true",
                        help="judge times even where the baseline was measured on another machine (CPU, device, "
                             "threads, torch or CUDA differ); by default those times are not judged")
    parser.add_argument("--all", action="store_true", help="also list improvements and cells not judged")


def _read(paths: list[str], side: str) -> list[dict]:
    from ..errors import UserError
    from ..schema import read_all

    try:
        return read_all(paths)
    except UserError as exc:
        hint = "; refresh the baseline on purpose (see results/README.md)" if side == "baseline" and "schema version" in str(exc) else ""
        raise UserError(f"{side}: {exc}{hint}") from None


def check_alpha(alpha: float | None) -> None:
    """A significance level is a probability strictly between 0 and 1."""
    from ..errors import UserError

    if alpha is not None and not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1 (exclusive), e.g. 0.05; got {alpha}")


def check_reference(reference: str | None, *record_sets: list[dict]) -> None:
    """An explicit ``--reference`` must name a mechanism (or label) present in the results."""
    from ..errors import UserError
    from ..report.frame import mechanism_label

    if reference is None:
        return
    names = {r["mechanism"] for recs in record_sets for r in recs}
    names |= {mechanism_label(r["mechanism"], r.get("params")) for recs in record_sets for r in recs}
    if reference not in names:
        present = ", ".join(sorted({r["mechanism"] for recs in record_sets for r in recs}))
        raise UserError(f"--reference {reference!r} is not a mechanism of these results; present: {present}")


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from ..report.gate import gate, parse_tolerances, render
    from ..console import make_console

    check_alpha(args.alpha)
    tolerances = parse_tolerances(args.tolerance)
    baseline = _read(args.baseline, "baseline")
    current = _read(args.current, "current")
    check_reference(args.reference, baseline, current)
    result = gate(current, baseline, tolerances=tolerances, reference=args.reference, alpha=args.alpha,
                  allow_missing=args.allow_missing, cross_machine=args.cross_machine)
    console = make_console()
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if result.offenders or args.all:
        console.print(render(result, show_all=args.all))
    else:
        console.print(f"[green]gate passed[/]: {result.compared_cells} cells compared, no regression "
                      f"({sum(f.kind == 'improvement' for f in result.findings)} improvements; --all lists them)")
    return 0 if result.passed else 1
