"""``attnbench compare A B``: two runs or machines side by side, ratio B/A per cell; always exits 0.

Unlike ``gate``, compare judges nothing: it shows, and says which time ratios are within noise
(Mann-Whitney on the timing samples, or overlapping IQRs), and warns when the two sides were
measured on machines that time differently (CPU, device, threads, torch, CUDA). Write the table to CSV/Markdown with ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "compare"
HELP = "show two sets of results side by side with the ratio B/A per cell (exit 0; use `gate` to fail CI)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="results file or folder (the reference side)")
    parser.add_argument("b", metavar="B", help="results file or folder (the side compared with A)")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metrics (default: memory, FLOPs, time and quality metrics present)")
    parser.add_argument("--out", type=Path, default=None, help="also write compare.csv and compare.md in this folder")


def run(args: argparse.Namespace) -> int:
    from ..report.tables import wide_console
    from rich.table import Table
    from rich.text import Text

    from ..report.compare import compare
    from ..schema import read_all
    from . import writable_folder

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    if args.out:
        writable_folder(args.out)
    df = compare(read_all([args.a], require=True), read_all([args.b], require=True), metrics)
    table = Table(title=Text(f"A = {args.a}   B = {args.b}", style="bold"), title_justify="left")
    table.add_column("cell", no_wrap=True)
    for col in df.columns:
        table.add_column(col, justify="right", style="bold" if col.endswith("B/A") else None)
    for name, row in df.iterrows():
        table.add_row(Text(str(name)), *[Text(str(v)) for v in row])
    if df.attrs.get("notes"):
        table.caption = Text("\n".join(df.attrs["notes"]), style="dim")
        table.caption_justify = "left"
    console = wide_console()
    for warning in df.attrs.get("warnings") or []:
        console.print(Text(f"warning: {warning}", style="yellow"))
    console.print(table)
    if args.out:
        df.to_csv(args.out / "compare.csv")
        notes = "".join(f"\n- {n}" for n in [*(df.attrs.get("warnings") or []), *(df.attrs.get("notes") or [])])
        (args.out / "compare.md").write_text(df.to_markdown() + "\n" + notes + "\n", encoding="utf-8")
        console.print(f"wrote {args.out / 'compare.csv'} and {args.out / 'compare.md'}")
    return 0
