"""Tables shaped like the paper's, one per suite, as pandas DataFrames of display strings.

``memory``: rows = mechanism and mode, columns = input sizes, each cell "measured (est.)" GiB or
the cell's status, the paper's Table 1 figure beside it. ``speed``: median time (IQR) and the ratio
to a reference mechanism measured in the same run. Task suites (and any suite this module does not
know): one row per cell with its quality metrics, GFLOPs and memory, the paper's figures beside.
Failed, infeasible and unavailable cells are always shown with their status, never dropped; their
reasons go to ``df.attrs["notes"]``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pandas as pd
from rich.table import Table
from rich.text import Text

from ..errors import UserError
from . import paper
from .analysis import QUALITY_METRICS, fit_exponent
from .frame import ROW_FIELDS, metric_columns, number, reference_values, row_label, to_frame, varying
from .style import gib, seconds, sig

#: metrics that are costs or bookkeeping, not quality
COST_METRICS: frozenset[str] = frozenset({
    "peak_memory_bytes", "estimated_memory_bytes", "flops", "estimated_flops", "uncounted_ops",
    "time_median_s", "time_iqr_s", "time_repeats", "time_samples_s"})
PAPER_SUFFIX = " paper"
#: suites whose tables show the paper's quality metrics only (their records also hold bookkeeping)
TASK_SUITES: tuple[str, ...] = ("reconstruction", "colorization", "inpainting", "substitution")


def _numeric(column: pd.Series) -> bool:
    """A metric column with numbers in it (not flags, lists or names)."""
    values = column.dropna()
    return bool(len(values)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
_REASON_CHARS = 48


def _short(reason: str) -> str:
    line = (reason or "").strip().splitlines()[0] if (reason or "").strip() else ""
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def status_text(row: pd.Series, estimate: str | None = None) -> str:
    """What a cell that is not ``ok`` shows instead of a figure."""
    status = row["status"]
    if status == "infeasible" and " s at " in str(row.get("reason", "")):
        # skipped because it could not finish within the cell's timeout, not for lack of memory
        seconds = str(row["reason"]).split()[1]
        return f"too slow (~{seconds} s; est. {estimate})" if estimate else f"too slow (~{seconds} s)"
    if status in ("infeasible", "oom") and estimate:
        return f"{status} (est. {estimate})"
    if status == "unavailable":
        return f"unavailable: {_short(row['reason'])}" if row["reason"] else "unavailable"
    return str(status)


def _note(row: pd.Series, where: str) -> str | None:
    if row["status"] in ("ok", "infeasible") or not row["reason"]:
        return None  # an infeasible cell shows its estimate in place
    if row["status"] == "unavailable" and len(str(row["reason"])) <= _REASON_CHARS:
        return None
    return f"{where}: {row['status']}: {str(row['reason']).strip().splitlines()[0]}"


def _memory_cell(row: pd.Series) -> str:
    est = number(row.get("estimated_memory_bytes"))
    est_text = f"{gib(est)} GiB" if est is not None else None
    if row["status"] != "ok":
        return status_text(row, est_text)
    peak = number(row.get("peak_memory_bytes"))
    measured = gib(peak) if peak is not None else "—"
    return f"{measured} (est. {gib(est)})" if est is not None else measured


def _flops_cell(row: pd.Series) -> str:
    est = number(row.get("estimated_flops"))
    est_text = f"{sig(est / 1e9)} GFLOPs" if est is not None else None
    if row["status"] != "ok":
        return status_text(row, est_text)
    flops = number(row.get("flops"))
    measured = sig(flops / 1e9) if flops is not None else "—"
    if row.get("uncounted_ops"):
        measured += "*"
    return f"{measured} (est. {sig(est / 1e9)})" if est is not None else measured


def _grid(df: pd.DataFrame, suite: str, cell: Callable[[pd.Series], str], paper_metric: str | None,
          scaling_metric: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Rows = mechanism (+ mode and whatever else varies), columns = sizes, with paper columns beside."""
    extra = varying(df, ROW_FIELDS)
    sizes = sorted(int(s) for s in df["size"].unique())
    table: dict[str, dict[str, str]] = {}
    fits: dict[str, tuple[list[float], list[float]]] = {}
    notes: list[str] = []
    for _, row in df.iterrows():
        name = f"{row_label(row, extra)} {row['mode']}"
        col = f"{int(row['size'])} px"
        table.setdefault(name, {})[col] = cell(row)
        if paper_metric:
            fig = paper.lookup(suite, paper_metric, row["mechanism"], row["params"], int(row["size"]))
            if fig is not None:
                table[name][col + PAPER_SUFFIX] = fig.text
        note = _note(row, f"{name} {col}")
        if note:
            notes.append(note)
        if scaling_metric:
            value = number(row.get(scaling_metric)) if row["status"] == "ok" else None
            xs, ys = fits.setdefault(name, ([], []))
            if value is not None:
                xs.append(float(row["size"]) ** 2)
                ys.append(value)
    columns: list[str] = []
    for s in sizes:
        columns.append(f"{s} px")
        if any(f"{s} px{PAPER_SUFFIX}" in r for r in table.values()):
            columns.append(f"{s} px{PAPER_SUFFIX}")
    out = pd.DataFrame.from_dict(table, orient="index").reindex(columns=columns)
    for c in columns:
        out[c] = out[c].fillna("" if c.endswith(PAPER_SUFFIX) else "not run")
    if scaling_metric:
        exps = {name: fit_exponent(*fits.get(name, ([], []))) for name in out.index}
        out["scaling"] = [f"n^{e:.2f}" if e is not None else "—" for e in map(exps.get, out.index)]
    out.index.name = "mechanism"
    return out, notes


def memory_table(df: pd.DataFrame) -> pd.DataFrame:
    out, notes = _grid(df, "memory", _memory_cell, "memory_gb", "peak_memory_bytes")
    out.attrs.update(name="memory", title="memory: peak memory in GiB, measured (estimate); paper Table 1 in GB beside",
                     notes=notes + [paper.NOTES["memory"], "scaling: fitted exponent of measured memory vs n pixels"])
    return out


def flops_table(df: pd.DataFrame, suite: str = "memory") -> pd.DataFrame:
    out, notes = _grid(df, suite, _flops_cell, "gflops", "flops")
    if (df.get("uncounted_ops") is not None) and df["uncounted_ops"].map(bool).any():
        notes.append("*: some ops were not counted (see uncounted_ops in the records)")
    out.attrs.update(name="flops", title=f"{suite}: GFLOPs, counted (estimate)", notes=notes)
    return out


def speed_table(df: pd.DataFrame, reference: str = "flash") -> pd.DataFrame:
    """Median time (IQR) per size, and its ratio to ``reference`` measured in the same run."""
    ref_median = reference_values(df, reference, "time_median_s")

    def cell(row: pd.Series) -> str:
        if row["status"] != "ok":
            return status_text(row)
        med, iqr = number(row.get("time_median_s")), number(row.get("time_iqr_s"))
        return f"{seconds(med)} (IQR {seconds(iqr)})" if iqr is not None else seconds(med)

    out, notes = _grid(df, "speed", cell, None, "time_median_s")
    ratio_col = {}
    extra = varying(df, ROW_FIELDS)
    for idx, row in df.iterrows():
        med = number(row.get("time_median_s")) if row["status"] == "ok" else None
        ref = ref_median.loc[idx]
        if med is not None and not math.isnan(ref) and ref > 0:
            ratio_col[(f"{row_label(row, extra)} {row['mode']}", f"{int(row['size'])} px / {reference}")] = \
                f"×{sig(med / ref)}"
    if ratio_col:
        columns = []
        for c in out.columns:
            columns.append(c)
            rc = f"{c} / {reference}"
            if any(k[1] == rc for k in ratio_col):
                out[rc] = [ratio_col.get((name, rc), "") for name in out.index]
                columns.append(rc)
        out = out[columns]
    out.attrs.update(title=f"speed: median time (IQR); ratio to {reference} measured in the same run",
                     notes=notes + ["scaling: fitted exponent of median time vs n pixels"])
    return out


def trained_note(row: pd.Series, metric: str) -> str:
    """`` ± std`` over seeds when a trained task reports one, and `` (not converged)`` when its
    network failed the convergence rule: such a figure is not a final result."""
    text = ""
    std, seeds = number(row.get(f"{metric}_std")), row.get(f"{metric}_seeds")
    if std is not None and isinstance(seeds, list) and len(seeds) > 1:
        text += f" ± {sig(std, 2)}"
    if str(row.get("converged")) == "False":
        text += " (not converged)"
    return text


def cell_table(df: pd.DataFrame, suite: str) -> pd.DataFrame:
    """One row per cell: status, quality metrics, cost; the paper's figures beside. Any suite renders."""
    metrics = metric_columns(df)
    quality = [m for m in QUALITY_METRICS if m in metrics]
    if suite not in TASK_SUITES:  # a suite this module does not know: every numeric metric is a column
        quality += sorted(m for m in metrics if m not in COST_METRICS and m not in quality and _numeric(df[m]))
    extra = varying(df, ("size", "mode") + ROW_FIELDS)
    has_trained = bool((df["trained_with"] != "").any())
    rows: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    for _, row in df.iterrows():
        name = row_label(row, [f for f in extra if not (has_trained and f == "options")])
        cells: dict[str, str] = {}
        if has_trained:
            name = f"{name} (trained with {row['trained_with'] or row['mechanism']})"
        ok = row["status"] == "ok"
        cells["status"] = "ok" if ok else status_text(row)
        size = int(row["size"])

        def beside(paper_metric: str, text: str, column: str) -> None:
            cells[column] = text
            fig = paper.lookup(suite, paper_metric, row["mechanism"], row["params"], size, row["trained_with"])
            if fig is not None:
                cells[column + PAPER_SUFFIX] = fig.text + (" dB" if fig.unit == "dB" else "")  # text carries %

        for m in quality:
            # ratios sit near 1 and are read against targets like 1.10: one more digit
            beside(m, sig(number(row.get(m)), 4 if m.endswith("_ratio") else 3) + trained_note(row, m) if ok else "—", m)
        flops = number(row.get("flops")) if ok else None
        if flops is None:
            flops = number(row.get("estimated_flops"))
            flops_text = f"est. {sig(flops / 1e9)}" if flops is not None else "—"
        else:
            flops_text = sig(flops / 1e9)
        beside("gflops", flops_text, "GFLOPs")
        mem = number(row.get("peak_memory_bytes")) if ok else None
        if mem is None:
            mem = number(row.get("estimated_memory_bytes"))
            mem_text = f"est. {gib(mem)}" if mem is not None else "—"
        else:
            mem_text = gib(mem)
        beside("memory_gb", mem_text, "memory GiB")
        if "time_median_s" in df.columns:
            cells["time"] = seconds(number(row.get("time_median_s"))) if ok else "—"
        while name in rows:
            name += "'"
        rows[name] = cells
        note = _note(row, name)
        if note:
            notes.append(note)
    out = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    empty = [c for c in out.columns if c != "status" and (out[c].isin(["", "—"])).all()]
    out = out.drop(columns=empty)
    out.index.name = "mechanism"
    title = f"{suite}: " + (", ".join(quality) if quality else "cells") + " with GFLOPs and memory"
    out.attrs.update(title=title, notes=notes + ([paper.NOTES[suite]] if suite in paper.NOTES else []))
    return out


def suite_tables(records: Sequence[dict[str, Any]], suite: str, reference: str = "flash") -> list[pd.DataFrame]:
    """Every table a suite's report shows (memory: memory and FLOPs; others: one)."""
    df = to_frame([r for r in records if r.get("suite") == suite])
    if df.empty:
        raise UserError(f"no records of suite {suite!r} in the results given")
    if suite == "memory":
        tables = [memory_table(df)]
        if {"flops", "estimated_flops"} & set(df.columns):
            tables.append(flops_table(df))
        return tables
    if suite == "speed":
        return [speed_table(df, reference)]
    return [cell_table(df, suite)]


def suite_table(records: Sequence[dict[str, Any]], suite: str, reference: str = "flash") -> pd.DataFrame:
    """The paper-shaped table of one suite (the first of :func:`suite_tables`)."""
    return suite_tables(records, suite, reference)[0]


def suites_in(records: Sequence[dict[str, Any]]) -> list[str]:
    """Suites present in the records, in order of first appearance."""
    return list(dict.fromkeys(r["suite"] for r in records))


_STATUS_STYLE = {"infeasible": "yellow", "oom": "red", "timeout": "red", "error": "bold red",
                 "unavailable": "dim", "not run": "dim"}


def _styled(text: str, paper_column: bool) -> Text:
    if paper_column:
        return Text(text, style="italic cyan")
    for status, style in _STATUS_STYLE.items():
        if text.startswith(status):
            return Text(text, style=style)
    return Text(text)


def render_rich(df: pd.DataFrame, title: str | None = None) -> Table:
    """A rich table of a suite table: statuses coloured, the paper's columns in italics, notes below."""
    table = Table(title=Text(title or df.attrs.get("title", ""), style="bold"), title_justify="left")
    table.add_column(df.index.name or "", style="bold", no_wrap=True)
    for c in df.columns:
        table.add_column(str(c), justify="right", style="italic cyan" if str(c).endswith(PAPER_SUFFIX) else None)
    for name, row in df.iterrows():
        table.add_row(Text(str(name)), *[_styled(str(v), str(c).endswith(PAPER_SUFFIX)) for c, v in row.items()])
    notes = df.attrs.get("notes") or []
    if notes:
        table.caption = Text("\n".join(notes), style="dim")
        table.caption_justify = "left"
    return table


def to_markdown(df: pd.DataFrame, title: str | None = None) -> str:
    """A Markdown section: heading, the table, its notes as a list."""
    parts = [f"### {title or df.attrs.get('title', '')}", "", df.to_markdown(), ""]
    parts += [f"- {n}" for n in df.attrs.get("notes") or []]
    return "\n".join(parts).rstrip() + "\n"


def wide_console() -> "Console":
    """A rich console that does not squeeze tables to 80 columns when output goes to a file or CI log."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=220)
