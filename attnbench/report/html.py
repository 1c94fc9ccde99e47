"""One self-contained static HTML page (tables, plots embedded as base64 PNG, environment) for sharing."""
from __future__ import annotations

import base64
import datetime as _dt
import html
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from .plots import to_bytes
from .tables import PAPER_SUFFIX

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; font-weight: 600; }
td.paper, th.paper { color: #0b6e99; font-style: italic; background: #f3f9fc; }
td.bad { color: #b00020; } td.warn { color: #9a6700; } td.dim { color: #888; }
ul.notes { font-size: .8em; color: #555; } img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.scroll { overflow-x: auto; }
"""


def _cell_class(text: str) -> str:
    if text.startswith(("oom", "error", "timeout")):
        return "bad"
    if text.startswith("infeasible"):
        return "warn"
    if text.startswith(("unavailable", "not run")):
        return "dim"
    return ""


def table_html(df: pd.DataFrame, title: str | None = None) -> str:
    """A suite table as HTML: statuses coloured, the paper's columns set apart, notes below."""
    cols = list(df.columns)
    head = "".join(f'<th class="{"paper" if str(c).endswith(PAPER_SUFFIX) else ""}">{html.escape(str(c))}</th>'
                   for c in cols)
    body = []
    for name, row in df.iterrows():
        tds = "".join(
            f'<td class="{"paper" if str(c).endswith(PAPER_SUFFIX) else _cell_class(str(v))}">{html.escape(str(v))}</td>'
            for c, v in row.items())
        body.append(f"<tr><td>{html.escape(str(name))}</td>{tds}</tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in df.attrs.get("notes") or [])
    heading = html.escape(title or df.attrs.get("title", ""))
    return (f"<h3>{heading}</h3><div class='scroll'><table><thead><tr><th>{html.escape(df.index.name or '')}</th>"
            f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            + (f"<ul class='notes'>{notes}</ul>" if notes else ""))


def figure_html(fig: Figure, alt: str) -> str:
    data = base64.b64encode(to_bytes(fig, "png")).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, sections: Sequence[tuple[str, Sequence[pd.DataFrame], dict[str, Figure]]],
         environment: pd.DataFrame, sources: Sequence[str]) -> str:
    """The whole report: one section per suite (tables then plots), then the environment."""
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} from "
             f"{html.escape(', '.join(sources))}. Memory in GiB (2<sup>30</sup> bytes); the paper's figures "
             f"(<span style='color:#0b6e99;font-style:italic'>in italics</span>) are as published, in GB, on the "
             f"authors' GPU.</p>"]
    for suite, tables, figures in sections:
        parts.append(f"<h2 id='{html.escape(suite)}'>{html.escape(suite)}</h2>")
        parts += [table_html(t) for t in tables]
        parts += [figure_html(fig, f"{suite} {name}") for name, fig in figures.items()]
    parts.append("<h2>Environment</h2>")
    env = environment.copy()
    env.index = env["machine"] if "machine" in env else env.index
    env = env.drop(columns=["machine"], errors="ignore")
    env.index.name = "machine"
    parts.append(table_html(env.astype(str), "where these results were measured"))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
