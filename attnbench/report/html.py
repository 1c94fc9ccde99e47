"""One self-contained static HTML page for sharing: a headline summary first, a table of contents,
then one section per suite (memory first) with its settings, environment, tables, plots and example
outputs, a crossover view and the environment. Plots and images are embedded as base64 PNG.

Tables wrap their cells instead of scrolling sideways, so that a page 1400 px wide shows them whole
(``tests/test_report_html.py`` checks this in a headless browser).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from .plots import to_bytes
from .tables import PAPER_SUFFIX

#: the order suites appear in: the headline question (memory) first, then time, then quality
SUITE_ORDER: tuple[str, ...] = ("memory", "speed", "search", "reconstruction", "colorization", "substitution",
                                "inpainting")

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1400px;
       color: #222; padding: 0 1em; box-sizing: border-box; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.02em; margin-top: 1.4em; }
nav.toc { background: #f7f7f7; border: 1px solid #e3e3e3; padding: .4em 1em; display: inline-block; }
nav.toc ol { margin: .3em 0; padding-left: 1.4em; } nav.toc li { margin: .1em 0; }
.headline p { font-size: 1.02em; max-width: 60em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .8em; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: .22em .45em; text-align: right; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f4f4f4; font-weight: 600; }
td:first-child, th:first-child { text-align: left; font-weight: 600; min-width: 9em; }
td.paper, th.paper { color: #0b6e99; font-style: italic; background: #f3f9fc; }
td.bad { color: #b00020; } td.warn { color: #9a6700; } td.dim { color: #888; }
ul.notes { font-size: .8em; color: #555; } img.plot { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
dl.settings { display: flex; flex-wrap: wrap; gap: .15em 1.2em; font-size: .85em; background: #fafafa;
              border-left: 3px solid #ccc; padding: .4em .8em; margin: .6em 0; }
dl.settings div { white-space: nowrap; } dl.settings dt { display: inline; font-weight: 600; color: #555; }
dl.settings dd { display: inline; margin: 0 0 0 .3em; }
.examples { display: flex; flex-wrap: wrap; gap: .8em; }
.examples figure { margin: 0; text-align: center; font-size: .8em; }
.examples img { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd; }
.examples figure.context figcaption { font-weight: 600; }
"""


@dataclass
class Section:
    """One suite's part of the page."""

    suite: str
    tables: Sequence[pd.DataFrame]
    figures: dict[str, Figure]
    settings: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    #: (caption, PNG path) of example outputs, context images first
    examples: Sequence[tuple[str, Path]] = ()


def ordered(suites: Sequence[str]) -> list[str]:
    """Suites in :data:`SUITE_ORDER`, unknown ones after in the order given."""
    known = [s for s in SUITE_ORDER if s in suites]
    return known + [s for s in suites if s not in SUITE_ORDER]


def _cell_class(text: str) -> str:
    if text.startswith(("oom", "error", "timeout")):
        return "bad"
    if text.startswith(("infeasible", "too slow")):
        return "warn"
    if text.startswith(("unavailable", "unsupported", "not run")):
        return "dim"
    return ""


def _paper(column: str) -> bool:
    return PAPER_SUFFIX in str(column)


def table_html(df: pd.DataFrame, title: str | None = None, anchor: str | None = None) -> str:
    """A suite table as HTML: statuses coloured, the paper's columns set apart, notes below."""
    cols = list(df.columns)
    head = "".join(f'<th class="{"paper" if _paper(c) else ""}">{html.escape(str(c))}</th>' for c in cols)
    body = []
    for name, row in df.iterrows():
        tds = "".join(f'<td class="{"paper" if _paper(c) else _cell_class(str(v))}">{html.escape(str(v))}</td>'
                      for c, v in row.items())
        body.append(f"<tr><td>{html.escape(str(name))}</td>{tds}</tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in df.attrs.get("notes") or [])
    heading = html.escape(title or df.attrs.get("title", ""))
    ident = f" id='{html.escape(anchor)}'" if anchor else ""
    return (f"<h3{ident}>{heading}</h3><table><thead><tr><th>{html.escape(df.index.name or '')}</th>"
            f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            + (f"<ul class='notes'>{notes}</ul>" if notes else ""))


def _png(data: bytes, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def figure_html(fig: Figure, alt: str) -> str:
    return _png(to_bytes(fig, "png"), alt)


def _settings_html(settings: dict[str, str], environment: dict[str, str]) -> str:
    items = list(settings.items()) + [(k, v) for k, v in environment.items() if v]
    return "<dl class='settings'>" + "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd></div>"
                                             for k, v in items) + "</dl>"


def _examples_html(suite: str, examples: Sequence[tuple[str, Path]]) -> str:
    from ..tasks.examples import CONTEXT

    figs = []
    for caption, path in examples:
        context = caption.split(" ", 1)[0] in CONTEXT
        figs.append(f"<figure class='{'context' if context else ''}'>{_png(path.read_bytes(), f'{suite} {caption}', 'example')}"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return (f"<h3 id='{suite}-examples'>{html.escape(suite)}: example outputs</h3>"
            "<p>The first image of the run, as each mechanism produced it, beside what it is judged against.</p>"
            f"<div class='examples'>{''.join(figs)}</div>")


def page(title: str, sections: Sequence[Section], environment: pd.DataFrame, sources: Sequence[str],
         headline: Sequence[str] = (), headline_figure: Figure | None = None,
         crossover: pd.DataFrame | None = None) -> str:
    """The whole report: headline, contents, one section per suite, crossover view, environment."""
    toc: list[tuple[str, str]] = []
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} from "
             f"{html.escape(', '.join(sources))}. Units: memory in GiB (2<sup>30</sup> bytes), work in GFLOP "
             f"(10<sup>9</sup> floating-point operations), time in seconds. The paper's figures "
             f"(<span style='color:#0b6e99;font-style:italic'>in italics</span>) are as published (its memory in GB), "
             f"shown only beside cells run at the paper's settings.</p>"]
    body: list[str] = []
    if headline or headline_figure is not None:
        toc.append(("summary", "Summary"))
        body.append("<section class='headline'><h2 id='summary'>Summary</h2>"
                    + "".join(f"<p>{html.escape(s)}</p>" for s in headline)
                    + (figure_html(headline_figure, "headline: memory at the largest size") if headline_figure else "")
                    + "</section>")
    for sec in sections:
        anchor = f"suite-{sec.suite}"
        toc.append((anchor, sec.suite))
        body.append(f"<section><h2 id='{html.escape(anchor)}'>{html.escape(sec.suite)}</h2>")
        body.append(_settings_html(sec.settings, sec.environment))
        body += [table_html(t) for t in sec.tables]
        body += [figure_html(fig, f"{sec.suite} {name}") for name, fig in sec.figures.items()]
        if sec.examples:
            body.append(_examples_html(sec.suite, sec.examples))
        body.append("</section>")
    if crossover is not None and not crossover.empty:
        toc.append(("crossover", "Crossover with flash"))
        body.append("<section><h2 id='crossover'>Crossover</h2>" + table_html(crossover) + "</section>")
    toc.append(("environment", "Environment"))
    env = environment.copy()
    env.index = env["machine"] if "machine" in env else env.index
    env = env.drop(columns=["machine"], errors="ignore")
    env.index.name = "machine"
    body.append("<section><h2 id='environment'>Environment</h2>"
                + table_html(env.astype(str), "where these results were measured") + "</section>")
    nav = ("<nav class='toc'><strong>Contents</strong><ol>"
           + "".join(f"<li><a href='#{html.escape(a)}'>{html.escape(t)}</a></li>" for a, t in toc) + "</ol></nav>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}{nav}{''.join(body)}</body></html>\n")
