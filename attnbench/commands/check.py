"""``attnbench check``: a self-check to run first -- do the instruments and mechanisms hold here?"""
from __future__ import annotations

import argparse
import json
import sys

from rich.markup import escape
from rich.table import Table

NAME = "check"
HELP = "self-check this installation: native kernels, instruments (memory, FLOPs, time), every mechanism"

STATUS_STYLE = {"ok": "green", "failed": "bold red", "skipped": "yellow"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--quick", action="store_true",
                        help="fewer cases in the plugins' own checks (e.g. fewer PSAL patch sizes); about a minute")
    parser.add_argument("--mechanisms", help="comma-separated mechanism names to check (default: all registered)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..selfcheck import all_checks, execute, summary_line, verdict

    device = args.device.strip()
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: use cpu, cuda or cuda:N")
    names = [n.strip() for n in args.mechanisms.split(",") if n.strip()] if args.mechanisms else None
    if names:
        from ..registry import plugins

        unknown = sorted(set(names) - set(plugins()))
        if unknown:
            raise UserError(f"unknown mechanism(s) {', '.join(unknown)}; valid: {', '.join(sorted(plugins()))}")
    from ..console import make_console

    checks = all_checks(device, quick=args.quick, mechanisms=names)
    console = make_console(stderr=True)
    results = []
    for check in checks:
        if not args.json and console.is_terminal:
            console.print(f"[dim]{escape(check.group)}: {escape(check.name)} ...[/]", end="\r")
        results.append(execute(check))
    code = verdict(results)
    if args.json:
        json.dump({"device": device, "exit_status": code, "summary": summary_line(results),
                   "checks": [r.to_dict() for r in results]}, sys.stdout, indent=1)
        print()
        return code
    table = Table(title=f"attnbench check --device {device}")
    for col in ("group", "check", "status", "detail", "s"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(escape(r.group), escape(r.name), f"[{STATUS_STYLE[r.status]}]{r.status}[/]", escape(r.detail),
                      f"{r.seconds:.1f}")
    make_console().print(table)  # full width when piped, NO_COLOR honoured
    console.print(("[green]all checks that could run passed[/]" if code == 0 else "[bold red]some checks failed[/]")
                  + f": {summary_line(results)}")
    return code
