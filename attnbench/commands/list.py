"""``attnbench list``: mechanisms (with availability and where they come from) and suites."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

NAME = "list"
HELP = "list mechanisms (with availability) and suites"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", choices=("all", "mechanisms", "suites"), default="all")


def run(args: argparse.Namespace) -> int:
    from ..registry import plugins
    from ..suites import load, suite_names

    console = Console()
    if args.what in ("all", "mechanisms"):
        table = Table(title="Mechanisms (entry points in group attnbench.mechanisms)")
        for col in ("name", "run as", "status", "complexity", "from", "summary"):
            table.add_column(col, overflow="fold")
        for name, info in plugins().items():
            status = "[green]available[/]" if info.availability.ok else f"[red]unavailable: {info.availability.reason}[/]"
            complexity = getattr(info.cls, "complexity", "") if info.cls else ""
            table.add_row(name, ", ".join(info.variants), status, complexity,
                          f"{info.distribution} {info.version}", info.summary)
        console.print(table)
    if args.what in ("all", "suites"):
        table = Table(title="Suites (suites/*.toml)")
        for col in ("suite", "presets (default first)", "description"):
            table.add_column(col, overflow="fold")
        for name in suite_names():
            suite = load(name)
            presets = [suite.default_preset] + [p for p in suite.preset_names() if p != suite.default_preset]
            table.add_row(name, ", ".join(presets), suite.description)
        console.print(table)
    return 0
