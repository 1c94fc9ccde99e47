"""``attnbench report RESULTS...``: the paper-shaped tables of each suite, plots and an HTML page.

Terminal tables always; with ``--out DIR`` (or a file format in ``--format``) also Markdown and
CSV per suite, PNG/SVG plots and one self-contained HTML page (headline summary, contents, memory
first, a crossover view, example outputs found beside the result files). Failed and infeasible
cells are shown as such, never dropped. ``--budget 4GiB`` draws a memory budget on memory plots.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "report"
HELP = "tables (terminal, Markdown, CSV), plots (PNG, SVG) and an HTML page from result files or folders"
#: what attnbench's Ctrl-C message adds for this command (cli.main)
INTERRUPTED = "report files it was writing may be incomplete (run it again)"
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
    parser.add_argument("--budget", default=None, metavar="SIZE",
                        help="memory budget drawn on memory plots, e.g. 4GiB, 512MiB, 8GB (GB = 10^9 bytes, "
                             "GiB = 2^30; default: none)")


def _budget(text: str | None) -> float | None:
    from ..metrics import parse_budget

    return None if text is None else parse_budget(text)


#: which mechanisms' example outputs a report shows first (exact, the cheap baselines, PSAL)
_EXAMPLE_PRIORITY = {m: i for i, m in enumerate(("full", "flash", "psal-3", "psal-aggreg", "local", "knn-exact",
                                                 "linear", "performer", "reformer", "psal-1"))}


def find_examples(results: list[str], records: list[dict]) -> dict[str, list[tuple[str, Path]]]:
    """Example images saved beside the result files (``<suite>-<preset>.examples/``), by suite: the context
    images and a few mechanisms at the largest size that has them, as (caption, path)."""
    from ..report.style import order_key
    from ..tasks.examples import CONTEXT

    folders: list[Path] = []
    for given in map(Path, results):
        if given.is_dir():
            folders += sorted(p for p in given.rglob("*.examples") if p.is_dir())
        elif given.with_suffix(".examples").is_dir():
            folders.append(given.with_suffix(".examples"))
    suites = {r.get("suite") for r in records}
    out: dict[str, list[tuple[str, Path]]] = {}
    for folder in folders:
        suite = next((s for s in sorted(suites, key=len, reverse=True) if folder.name.startswith(f"{s}-")), None)
        images = []
        for path in sorted(folder.glob("*.png")):
            name, _, size = path.stem.rpartition("-")
            if name and size.isdigit():
                images.append((name, int(size), path))
        if suite is None or not images:
            continue
        largest = max(size for _, size, _ in images)
        at = [(n, p) for n, size, p in images if size == largest]
        context = sorted(((n, p) for n, p in at if n in CONTEXT), key=lambda x: CONTEXT.index(x[0]))
        shown = sorted((x for x in at if x[0] not in CONTEXT), key=lambda x: _EXAMPLE_PRIORITY.get(
            x[0].split("[", 1)[0], len(_EXAMPLE_PRIORITY)))[:8]
        mechanisms = sorted(shown, key=lambda x: order_key(x[0]))
        out.setdefault(suite, []).extend((f"{n} {largest} px", p) for n, p in context + mechanisms)
    return out


def section_environment(records: list[dict]) -> dict[str, str]:
    """Where one suite's records were measured (machine, processor, threads, torch, commit, when)."""
    from ..report.frame import environments

    env = environments(records)
    out: dict[str, str] = {}
    for column in ("machine", "device_name", "threads", "memory", "torch", "commit"):
        if column in env.columns:
            out[{"device_name": "processor"}.get(column, column)] = ", ".join(
                sorted({str(v) for v in env[column].dropna()}))
    started = sorted(str(r.get("started_at")) for r in records if r.get("started_at"))
    if started:
        out["measured"] = started[0][:10] if started[0][:10] == started[-1][:10] else f"{started[0][:10]} to {started[-1][:10]}"
    return out


def _formats(args: argparse.Namespace) -> list[str]:
    from ..errors import UserError

    if args.format is None:
        return list(FORMATS) if args.out else ["rich"]
    chosen = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise UserError(f"unknown report format {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    return chosen


@dataclass
class _Content:
    """Everything the report shows, computed once; each output format only lays it out."""

    suites: list[str]
    records: list[dict]
    tables: dict[str, list]
    figures: dict[str, dict]
    crossover: Any
    headline: list[str]
    examples: dict[str, list[tuple[str, Path]]]
    env: Any
    budget: float | None


def _collect(args: argparse.Namespace, formats: list[str], out: Path) -> _Content:
    """Read and check the records (and that ``out`` takes files, when files are asked for) before
    any table or figure is drawn."""
    from ..errors import UserError
    from ..report import html as html_page
    from ..report.frame import environments
    from ..report.plots import suite_plots
    from ..report.summary import sentences
    from ..report.tables import crossover_table, suite_tables, suites_in
    from ..schema import read_all
    from . import writable_folder

    budget = _budget(args.budget)
    records = read_all(args.results, require=True)
    present = suites_in(records)
    suites = html_page.ordered([s.strip() for s in args.suites.split(",")] if args.suites else present)
    missing = [s for s in suites if s not in present]
    if missing:
        raise UserError(f"no records of suite {', '.join(missing)}; present: {', '.join(present)}")
    if any(f != "rich" for f in formats):
        writable_folder(out)
    chosen = [r for r in records if r["suite"] in suites]
    want_plots = bool({"png", "svg", "html"} & set(formats))
    return _Content(suites=suites, records=chosen,
                    tables={s: suite_tables(records, s, args.reference) for s in suites},
                    figures={s: suite_plots(records, s, budget) for s in suites} if want_plots else {},
                    crossover=crossover_table(chosen, args.reference), headline=sentences(chosen, args.reference),
                    examples=find_examples(list(map(str, args.results)), chosen), env=environments(chosen),
                    budget=budget)


def _write_terminal(content: _Content) -> None:
    from ..report.tables import render_rich, wide_console

    console = wide_console()
    for s in content.suites:
        for t in content.tables[s]:
            console.print(render_rich(t))
    if not content.crossover.empty:
        console.print(render_rich(content.crossover))


def _write_csv(content: _Content, out: Path) -> list[Path]:
    from ..report.frame import to_frame

    written = []
    for s in content.suites:
        for k, t in enumerate(content.tables[s]):
            path = out / (f"{s}.csv" if k == 0 else f"{s}-{t.attrs.get('name', k + 1)}.csv")
            t.to_csv(path)
            written.append(path)
    to_frame(content.records).to_csv(out / "records.csv", index=False)
    written.append(out / "records.csv")
    if not content.crossover.empty:
        content.crossover.to_csv(out / "crossover.csv")
        written.append(out / "crossover.csv")
    return written


def _write_plots(content: _Content, out: Path, formats: list[str]) -> list[Path]:
    from ..report.plots import save

    plot_formats = [f for f in ("png", "svg") if f in formats]
    if not plot_formats:
        return []
    return [path for s in content.suites for name, fig in content.figures.get(s, {}).items()
            for path in save(fig, out / "plots" / f"{s}-{name}", plot_formats)]


def _suite_settings(content: _Content, suite: str) -> dict[str, Any]:
    from ..report.frame import settings, to_frame

    return settings(to_frame([r for r in content.records if r["suite"] == suite]))


def _write_markdown(content: _Content, args: argparse.Namespace, out: Path, formats: list[str]) -> Path:
    from ..report.markdown import page

    text = page(args.title, list(map(str, args.results)), content.headline, content.suites, content.tables,
                {s: _suite_settings(content, s) for s in content.suites},
                {s: list(content.figures.get(s, {})) for s in content.suites}, content.examples,
                content.crossover, content.env, formats, out)
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"


def _write_html(content: _Content, args: argparse.Namespace, out: Path) -> Path:
    from ..report import html as html_page
    from ..report.summary import headline_figure

    sections = [html_page.Section(s, content.tables[s], content.figures.get(s, {}), _suite_settings(content, s),
                                  section_environment([r for r in content.records if r["suite"] == s]),
                                  content.examples.get(s, []))
                for s in content.suites]
    figure = headline_figure(content.records, content.budget)
    (out / "report.html").write_text(html_page.page(args.title, sections, content.env, list(map(str, args.results)),
                                                    content.headline, figure, content.crossover), encoding="utf-8")
    return out / "report.html"


def run(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from ..report.tables import wide_console

    formats = _formats(args)
    out = args.out or DEFAULT_OUT
    content = _collect(args, formats, out)
    written: list[Path] = []
    if "rich" in formats:
        _write_terminal(content)
    written += _write_plots(content, out, formats)
    if "csv" in formats:
        written += _write_csv(content, out)
    if "md" in formats:
        written.append(_write_markdown(content, args, out, formats))
    if "html" in formats:
        written.append(_write_html(content, args, out))
    plt.close("all")
    if written:
        wide_console().print(f"wrote {len(written)} files under {out}/ ({', '.join(sorted({p.suffix[1:] for p in written}))})")
    return 0
