"""``attnbench report RESULTS...``: the paper-shaped tables of each suite, plots and an HTML page.

Terminal tables always; with ``--out DIR`` (or a file format in ``--format``) also Markdown and
CSV per suite, PNG/SVG plots and one self-contained HTML page. Failed and infeasible cells are
shown as such, never dropped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "tables (terminal, Markdown, CSV), plots (PNG, SVG) and an HTML page from result files or folders"
FORMATS = ("rich", "md", "csv", "png", "svg", "html")
DEFAULT_OUT = Path("results/report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="result files (*.jsonl) or folders of them")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the files (default {DEFAULT_OUT} when a file format is asked for)")
    parser.add_argument("--format", default=None,
                        help=f"comma-separated, from {','.join(FORMATS)} (default: rich; with --out: all)")
    parser.add_argument("--suites", default=None, help="comma-separated suites to report (default: all present)")
    parser.add_argument("--reference", default="flash", help="mechanism that speed ratios are taken against")
    parser.add_argument("--title", default="attnbench report", help="title of the Markdown and HTML report")


def _formats(args: argparse.Namespace) -> list[str]:
    from ..errors import UserError

    if args.format is None:
        return list(FORMATS) if args.out else ["rich"]
    chosen = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise UserError(f"unknown report format {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    return chosen


def run(args: argparse.Namespace) -> int:
    from ..report.tables import wide_console

    from ..errors import UserError
    from ..report import html as html_page
    from ..report.frame import environments, to_frame
    from ..report.plots import save, suite_plots
    from ..report.tables import render_rich, suite_tables, suites_in, to_markdown
    from ..schema import read_all
    from . import writable_folder

    formats = _formats(args)
    records = read_all(args.results, require=True)
    present = suites_in(records)
    suites = [s.strip() for s in args.suites.split(",")] if args.suites else present
    missing = [s for s in suites if s not in present]
    if missing:
        raise UserError(f"no records of suite {', '.join(missing)}; present: {', '.join(present)}")
    console = wide_console()
    out = args.out or DEFAULT_OUT
    files = [f for f in formats if f != "rich"]
    if files:
        writable_folder(out)
    tables = {s: suite_tables(records, s, args.reference) for s in suites}
    want_plots = bool({"png", "svg", "html"} & set(formats))
    figures = {s: suite_plots(records, s) for s in suites} if want_plots else {}
    written: list[Path] = []

    if "rich" in formats:
        for s in suites:
            for t in tables[s]:
                console.print(render_rich(t))
    for s in suites:
        if "csv" in formats:
            for k, t in enumerate(tables[s]):
                path = out / (f"{s}.csv" if k == 0 else f"{s}-{t.attrs.get('name', k + 1)}.csv")
                t.to_csv(path)
                written.append(path)
        for name, fig in figures.get(s, {}).items():
            plot_formats = [f for f in ("png", "svg") if f in formats]
            if plot_formats:
                written += save(fig, out / "plots" / f"{s}-{name}", plot_formats)
    if "csv" in formats:
        flat = to_frame([r for r in records if r["suite"] in suites])
        flat.to_csv(out / "records.csv", index=False)
        written.append(out / "records.csv")
    env = environments([r for r in records if r["suite"] in suites])
    if "md" in formats:
        lines = [f"# {args.title}", "", f"From {', '.join(map(str, args.results))}. Memory in GiB (2^30 bytes); "
                 "the paper's figures (`paper` columns) are as published, in GB, on the authors' GPU.", ""]
        for s in suites:
            lines += [f"## {s}", ""] + [to_markdown(t) for t in tables[s]]
            for name in figures.get(s, {}):
                for fmt in ("png", "svg"):
                    if fmt in formats:
                        lines.append(f"![{s} {name}](plots/{s}-{name}.{fmt})")
                        break
            lines.append("")
        lines += ["## Environment", "", env.to_markdown(index=False), ""]
        (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
        written.append(out / "report.md")
    if "html" in formats:
        sections = [(s, tables[s], figures.get(s, {})) for s in suites]
        (out / "report.html").write_text(html_page.page(args.title, sections, env, list(map(str, args.results))),
                                         encoding="utf-8")
        written.append(out / "report.html")
    import matplotlib.pyplot as plt

    plt.close("all")
    if written:
        console.print(f"wrote {len(written)} files under {out}/ ({', '.join(sorted({p.suffix[1:] for p in written}))})")
    return 0
