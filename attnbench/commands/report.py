"""``attnbench report RESULTS...``: the paper-shaped tables of each suite, plots and an HTML page.

Terminal tables always; with ``--out DIR`` (or a file format in ``--format``) also Markdown and
CSV per suite, PNG/SVG plots and one self-contained HTML page (headline summary, contents, memory
first, a crossover view, example outputs found beside the result files). Failed and infeasible
cells are shown as such, never dropped. ``--budget 4GiB`` draws a memory budget on memory plots.
"""
from __future__ import annotations

import argparse
from pathlib import Path

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
    from ..errors import UserError
    from ..metrics import parse_bytes

    if text is None:
        return None
    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise UserError(f"--budget: {exc}") from None
    if value <= 0:
        raise UserError(f"--budget must be positive, got {text!r}")
    return value


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


def run(args: argparse.Namespace) -> int:
    from ..report.tables import wide_console

    from ..errors import UserError
    from ..report import html as html_page
    from ..report.frame import environments, settings, to_frame
    from ..report.plots import save, suite_plots
    from ..report.summary import headline_figure, sentences
    from ..report.tables import crossover_table, render_rich, suite_tables, suites_in, to_markdown
    from ..schema import read_all
    from . import writable_folder

    formats = _formats(args)
    budget = _budget(args.budget)
    records = read_all(args.results, require=True)
    present = suites_in(records)
    suites = html_page.ordered([s.strip() for s in args.suites.split(",")] if args.suites else present)
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
    figures = {s: suite_plots(records, s, budget) for s in suites} if want_plots else {}
    chosen = [r for r in records if r["suite"] in suites]
    crossover = crossover_table(chosen, args.reference)
    headline = sentences(chosen, args.reference)
    examples = find_examples(list(map(str, args.results)), chosen)
    written: list[Path] = []

    if "rich" in formats:
        for s in suites:
            for t in tables[s]:
                console.print(render_rich(t))
        if not crossover.empty:
            console.print(render_rich(crossover))
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
        flat = to_frame(chosen)
        flat.to_csv(out / "records.csv", index=False)
        written.append(out / "records.csv")
        if not crossover.empty:
            crossover.to_csv(out / "crossover.csv")
            written.append(out / "crossover.csv")
    env = environments([r for r in records if r["suite"] in suites])
    if "md" in formats:
        import shutil
        from urllib.parse import quote

        lines = [f"# {args.title}", "", f"From {', '.join(map(str, args.results))}. Memory in GiB (2^30 bytes), work "
                 "in GFLOP, time in seconds; the paper's figures (`paper` columns) are as published (memory in GB), "
                 "shown only beside cells run at the paper's settings.", ""]
        if headline:
            lines += ["## Summary", ""] + [f"- {h}" for h in headline] + [""]
        for s in suites:
            lines += [f"## {s}", "", "Settings: " + "; ".join(
                f"{k} {v}" for k, v in settings(to_frame([r for r in chosen if r["suite"] == s])).items()), ""]
            lines += [to_markdown(t) for t in tables[s]]
            for name in figures.get(s, {}):
                for fmt in ("png", "svg"):
                    if fmt in formats:
                        lines.append(f"![{s} {name}](plots/{s}-{name}.{fmt})")
                        break
            if examples.get(s):
                lines += ["", f"Example outputs ({s}):", ""]
                for caption, path in examples[s]:
                    target = out / "examples" / s / path.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                    lines.append(f"![{caption.replace('[', '(').replace(']', ')')}](examples/{s}/{quote(path.name)})")
            lines.append("")
        if not crossover.empty:
            lines += ["## Crossover", "", to_markdown(crossover), ""]
        lines += ["## Environment", "", env.to_markdown(index=False), ""]
        (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
        written.append(out / "report.md")
    if "html" in formats:
        sections = []
        for s in suites:
            mine = [r for r in chosen if r["suite"] == s]
            sections.append(html_page.Section(s, tables[s], figures.get(s, {}), settings(to_frame(mine)),
                                              section_environment(mine), examples.get(s, [])))
        figure = headline_figure(chosen, budget)
        (out / "report.html").write_text(html_page.page(args.title, sections, env, list(map(str, args.results)),
                                                        headline, figure, crossover), encoding="utf-8")
        written.append(out / "report.html")
    import matplotlib.pyplot as plt

    plt.close("all")
    if written:
        console.print(f"wrote {len(written)} files under {out}/ ({', '.join(sorted({p.suffix[1:] for p in written}))})")
    return 0
