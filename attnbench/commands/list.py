"""``attnbench list``: mechanisms (with availability, parameters and where they come from) and suites.

``--json`` prints the same as one JSON document for scripts. A mechanism name that several
installed distributions register is shown with both and makes ``list`` exit 2 after the table.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "list"
HELP = "list mechanisms (with availability) and suites"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", choices=("all", "mechanisms", "suites"), default="all",
                        help="what to list (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def mechanisms_data() -> list[dict[str, Any]]:
    """One dict per entry point: name, variants, availability, parameters, origin, summary."""
    from ..parameters import parameters
    from ..registry import plugins

    out = []
    for name, info in plugins().items():
        params = parameters(info.cls) if info.cls is not None else {}
        out.append({
            "name": name,
            "run_as": list(info.variants),
            "available": info.availability.ok,
            "reason": info.availability.reason,
            "complexity": str(getattr(info.cls, "complexity", "") or "") if info.cls else "",
            "parameters": {p.name: {"type": p.describe(), "default": p.default} for p in params.values()},
            "distribution": info.distribution,
            "version": info.version,
            "target": info.target,
            "claimed_by": list(info.claimants),
            "summary": info.summary,
        })
    return out


def suites_data() -> list[dict[str, Any]]:
    """One dict per suite: name, presets (default first) and the grid of each, description."""
    from ..suites import load, suite_names

    out = []
    for name in suite_names():
        suite = load(name)
        presets = [suite.default_preset] + [p for p in suite.preset_names() if p != suite.default_preset]
        out.append({"name": name, "description": suite.description, "default_preset": suite.default_preset,
                    "presets": {p: suite.resolved(p)[1] for p in presets}})
    return out


def run(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from ..console import make_console
    from ..errors import UserError
    from ..registry import conflicts

    mechanisms = mechanisms_data() if args.what in ("all", "mechanisms") else None
    suites = suites_data() if args.what in ("all", "suites") else None
    if args.json:
        doc = {k: v for k, v in (("mechanisms", mechanisms), ("suites", suites)) if v is not None}
        print(json.dumps(doc, indent=2, default=str))
    else:
        console = make_console()
        if mechanisms is not None:
            table = Table(title="Mechanisms (entry points in group attnbench.mechanisms)")
            for col in ("name", "run as", "status", "complexity", "parameters", "from", "summary"):
                table.add_column(col, overflow="fold")
            for m in mechanisms:
                status = Text("available", style="green") if m["available"] else \
                    Text(f"unavailable: {m['reason']}", style="red")
                params = ", ".join(f"{k}={v['default']!r}" for k, v in m["parameters"].items()
                                   if k not in ("patch_size", "similarity", "temperature"))
                table.add_row(Text(m["name"]), Text(", ".join(m["run_as"])), status, Text(m["complexity"]),
                              Text(params), Text(f"{m['distribution']} {m['version']}".strip()), Text(m["summary"]))
            console.print(table)
        if suites is not None:
            table = Table(title="Suites (suites/*.toml; `attnbench list suites --json` shows each preset's grid)")
            for col in ("suite", "presets (default first)", "description"):
                table.add_column(col, overflow="fold")
            for s in suites:
                table.add_row(Text(s["name"]), Text(", ".join(s["presets"])), Text(s["description"]))
            console.print(table)
    if mechanisms is not None and conflicts():
        raise UserError("; ".join(conflicts()))
    return 0
