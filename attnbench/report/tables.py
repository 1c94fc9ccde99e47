"""Tables shaped like the paper's, one per suite, as pandas DataFrames of display strings.

``memory``: rows = mechanism and mode, columns = input sizes, each cell "measured (est.)" GiB or
the cell's status, the paper's Table 1 figure (GB, as published) beside it where the cells ran at the
paper's settings. ``speed``: median time (IQR), the ratio
to a reference mechanism measured in the same run, and the achieved FLOP/s and bytes/s as % of the
run's yardsticks; a time measured with a load above the CPU count is marked ``[load L/N]``. Both
show each row's ``backend``, and a ``kernels`` table lists the top ops of the profiled call. Task suites (and any suite this module does not
know): one row per cell with its quality metrics, GFLOPs and memory, the paper's figures beside.
Failed, infeasible and unavailable cells are always shown with their status, never dropped; their
reasons go to ``df.attrs["notes"]``. Titles state the grid that was run (``df.attrs["settings"]``),
units and formats come from :mod:`attnbench.metrics`, and runs on different data never share a row.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pandas as pd
from rich.table import Table
from rich.text import Text

from ..errors import UserError
from .. import metrics as catalogue
from ..metrics import NOT_QUALITY, QUALITY_METRICS
from . import paper
from .analysis import crossover, fit_exponent
from .findings import BASELINE_FIELDS, findings_table
from .frame import (ROW_FIELDS, caption, load_unknown, loaded_rows, metric_columns, number, params_text,
                    reference_values, row_label, settings, to_frame, varying)
from .style import seconds, sig

#: metrics that are costs or bookkeeping, not quality (declared in the catalogue)
COST_METRICS: frozenset[str] = NOT_QUALITY
PAPER_SUFFIX = " paper"
#: suites whose tables show the catalogue's quality metrics only (their records also hold bookkeeping)
TASK_SUITES: tuple[str, ...] = ("reconstruction", "colorization", "inpainting", "substitution")
MEMORY = catalogue.get("peak_memory_bytes")
FLOPS = catalogue.get("flops")


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
    if status in ("infeasible", "oom", "timeout") and estimate:
        return f"{status} (est. {estimate})"
    if status in ("unavailable", "unsupported"):
        return f"{status}: {_short(row['reason'])}" if row["reason"] else str(status)
    return str(status)


def _note(row: pd.Series, where: str) -> str | None:
    if row["status"] in ("ok", "infeasible") or not row["reason"]:
        return None  # an infeasible cell shows its estimate in place
    if row["status"] in ("unavailable", "unsupported") and len(str(row["reason"])) <= _REASON_CHARS:
        return None
    return f"{where}: {row['status']}: {str(row['reason']).strip().splitlines()[0]}"


def _cost_cell(row: pd.Series, metric: catalogue.Metric, mark_uncounted: bool = False) -> str:
    """``measured (est. estimate)`` in the metric's display unit, or the status with the estimate."""
    estimate = catalogue.get(metric.estimate) if metric.estimate else None
    est = estimate.display(row.get(estimate.name)) if estimate else None
    if row["status"] != "ok":
        return status_text(row, estimate.format(row.get(estimate.name)) if est is not None else None)
    measured = metric.format(row.get(metric.name), unit=False)
    if mark_uncounted and row.get("uncounted_ops") and measured != "—":
        measured += "*"
    return f"{measured} (est. {sig(est)})" if est is not None else measured


#: a memory figure that is the OS's / device's (memory outside torch made it larger than the allocator's)
OUTSIDE_MARK = "†"
#: a FLOP figure that holds FLOPs the plugin declared (work outside torch), not only counted ones
DECLARED_MARK = "‡"


def _marked(text: str, mark: str, marked: bool) -> str:
    """``text`` with ``mark`` after its measured figure (before `` (est. ...)``)."""
    if not marked or text.startswith(("—", "not run")):
        return text
    figure, sep, rest = text.partition(" (est.")
    return f"{figure}{mark}{sep}{rest}"


def _memory_cell(row: pd.Series) -> str:
    outside = row["status"] == "ok" and str(row.get("peak_memory_source") or "allocator") != "allocator"
    return _marked(_cost_cell(row, MEMORY), OUTSIDE_MARK, outside)


def _flops_cell(row: pd.Series) -> str:
    declared = row["status"] == "ok" and bool(number(row.get("flops_declared")))
    return _marked(_cost_cell(row, FLOPS, mark_uncounted=True), DECLARED_MARK, declared)


def _grid(df: pd.DataFrame, suite: str, cell: Callable[[pd.Series], str], paper_metric: str | None,
          scaling_metric: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Rows = mechanism (+ mode and whatever else varies), columns = sizes, with paper columns beside."""
    extra = varying(df, ROW_FIELDS)
    sizes = sorted(int(s) for s in df["size"].unique())
    table: dict[str, dict[str, str]] = {}
    fits: dict[str, tuple[list[float], list[float]]] = {}
    notes: list[str] = []
    params: dict[str, list[str]] = {}
    backends: dict[str, list[str]] = {}
    for _, row in df.iterrows():
        name = f"{row_label(row, extra)} {row['mode']}"
        col = f"{int(row['size'])} px"
        table.setdefault(name, {})[col] = cell(row)
        text = params_text(row)
        if text not in params.setdefault(name, []):
            params[name].append(text)
        backend = row.get("backend")
        if isinstance(backend, str) and backend not in backends.setdefault(name, []):
            backends[name].append(backend)
        if paper_metric:
            fig = paper.lookup(suite, paper_metric, row["mechanism"], row["params"], int(row["size"]), cell=row)
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
    if any(t for texts in params.values() for t in texts):
        out.insert(0, "params", [" | ".join(t or "-" for t in params.get(name, [""])) for name in out.index])
    if any(backends.values()):
        out.insert(0, "backend", [" | ".join(backends.get(name) or ["?"]) for name in out.index])
    if scaling_metric:
        exps = {name: fit_exponent(*fits.get(name, ([], []))) for name in out.index}
        out["scaling"] = [f"n^{e:.2f}" if e is not None else "—" for e in map(exps.get, out.index)]
        if (out["scaling"] == "—").all():
            out = out.drop(columns="scaling")  # fewer than 3 sizes measured: no exponent is worth showing
    out.index.name = "mechanism"
    return out, notes


def _paper_notes(out: pd.DataFrame, suite: str) -> list[str]:
    return [paper.NOTES[suite]] if suite in paper.NOTES and any(c.endswith(PAPER_SUFFIX) for c in out.columns) else []


def _finish(out: pd.DataFrame, df: pd.DataFrame, name: str, title: str, notes: list[str]) -> pd.DataFrame:
    out.attrs.update(name=name, title=f"{title} — {caption(df)}", notes=notes, settings=settings(df))
    return out


def memory_table(df: pd.DataFrame, suite: str = "memory") -> pd.DataFrame:
    out, notes = _grid(df, suite, _memory_cell, "memory_gb", "peak_memory_bytes")
    paper_cols = any(c.endswith(PAPER_SUFFIX) for c in out.columns)
    out = out.rename(columns={c: c + " (GB)" for c in out.columns if c.endswith(PAPER_SUFFIX)})
    scaling = ["scaling: fitted exponent of measured memory vs n pixels (from 3 sizes or more)"] \
        if "scaling" in out.columns else []
    if "peak_memory_source" in df.columns and (df["peak_memory_source"].fillna("allocator") != "allocator").any():
        notes.append(f"{OUTSIDE_MARK}: memory outside torch's allocator (numpy, faiss, C++) made the resident or "
                     "device figure larger: it is the one shown (peak_memory_source in the records)")
    title = "peak memory (GiB), measured (estimate)" + ("; the paper's Table 1 in GB beside" if paper_cols else "")
    return _finish(out, df, "memory", f"{suite}: {title}", notes + _paper_notes(out, suite) + scaling)


def flops_table(df: pd.DataFrame, suite: str = "memory") -> pd.DataFrame:
    out, notes = _grid(df, suite, _flops_cell, "gflops", "flops")
    if (df.get("uncounted_ops") is not None) and df["uncounted_ops"].map(bool).any():
        notes.append("*: some ops were not counted (see uncounted_ops in the records)")
    if "flops_declared" in df.columns and df["flops_declared"].map(lambda v: bool(number(v))).any():
        notes.append(f"{DECLARED_MARK}: includes FLOPs the plugin declared for work outside torch, not counted "
                     "(flops_declared_by in the records)")
    return _finish(out, df, "flops", f"{suite}: GFLOP, counted (estimate)", notes + _paper_notes(out, suite))


def speed_table(df: pd.DataFrame, reference: str = "flash") -> pd.DataFrame:
    """Median time (IQR) per size, and its ratio to ``reference`` measured in the same run."""
    ref_median = reference_values(df, reference, "time_median_s")

    loaded = loaded_rows(df)

    def cell(row: pd.Series) -> str:
        if row["status"] != "ok":
            return status_text(row)
        med, iqr = number(row.get("time_median_s")), number(row.get("time_iqr_s"))
        text = f"{seconds(med)} (IQR {seconds(iqr)})" if iqr is not None else seconds(med)
        return text + (_load_mark(row) if loaded.loc[row.name] else "")

    out, notes = _grid(df, "speed", cell, None, "time_median_s")
    beside: dict[tuple[str, str], str] = {}
    extra = varying(df, ROW_FIELDS)
    for idx, row in df.iterrows():
        name, col = f"{row_label(row, extra)} {row['mode']}", f"{int(row['size'])} px"
        med = number(row.get("time_median_s")) if row["status"] == "ok" else None
        ref = ref_median.loc[idx]
        if med is not None and not math.isnan(ref) and ref > 0:
            beside[(name, f"{col} / {reference}")] = f"×{sig(med / ref)}"
        if med is not None and achieved_text(row):
            beside[(name, f"{col} {ACHIEVED_SUFFIX}")] = achieved_text(row)
    columns = []
    for c in out.columns:
        columns.append(c)
        for bc in (f"{c} / {reference}", f"{c} {ACHIEVED_SUFFIX}"):
            if any(k[1] == bc for k in beside):
                out[bc] = [beside.get((name, bc), "") for name in out.index]
                columns.append(bc)
    out = out[columns]
    scaling = ["scaling: fitted exponent of median time vs n pixels (from 3 sizes or more)"] \
        if "scaling" in out.columns else []
    if any(c.endswith(ACHIEVED_SUFFIX) for c in out.columns):
        notes.append(f"{ACHIEVED_SUFFIX}: FLOP/s (FLOPs counted, else estimated, / median time) and bytes/s "
                     "(estimated bytes moved / median time), each as % of this run's yardstick (matmul "
                     "FLOP/s, triad bandwidth), as flash-attention's benchmark reports MFU")
    return _finish(out, df, "speed", f"speed: median time (IQR); ratio to {reference} measured in the same run",
                   notes + scaling + load_notes(df))


#: the column beside each size of the speed table: achieved rates and % of the yardsticks
ACHIEVED_SUFFIX = "achieved"


def achieved_text(row: pd.Series) -> str:
    """``0.59 GFLOP/s (5.9 %), 6.2 GB/s (0.1 %)``: a timed cell's rates and their share of the yardsticks."""
    parts = []
    for rate, pct in (("achieved_flops_per_s", "achieved_flops_pct"), ("achieved_bytes_per_s", "achieved_bandwidth_pct")):
        value = number(row.get(rate))
        if value is None:
            continue
        share = number(row.get(pct))
        parts.append(catalogue.format_metric(rate, value) + (f" ({sig(share, 2)} %)" if share is not None else ""))
    return ", ".join(parts)


def _load_mark(row: pd.Series) -> str:
    return f" [load {number(row.get('load_peak')):.1f}/{int(row['load_cpus'])}]"


def load_notes(df: pd.DataFrame) -> list[str]:
    """What the table's load marks mean, and how many of its cells do not say how loaded the machine was."""
    notes = []
    timed = df[df["status"] == "ok"]
    if loaded_rows(timed).any():
        notes.append("[load L/N]: measured with a 1-minute load average L above the N CPUs (more runnable threads "
                     "than cores): the time is not the mechanism's; re-run on a quiet machine")
    unknown = int(load_unknown(timed).sum())
    if unknown:
        notes.append(f"load not recorded for {unknown} of {len(timed)} timed cells (records written before "
                     "attnbench recorded it)")
    return notes


def kernels_table(df: pd.DataFrame, top: int = 3) -> pd.DataFrame | None:
    """Which kernels ran: per mechanism and mode, the backend and the top ops by self time of the
    profiled call at the largest size profiled (None when no record lists its kernels)."""
    if "kernels" not in df.columns:
        return None
    rows: dict[str, dict[str, str]] = {}
    extra = varying(df, ROW_FIELDS)
    have = df[df["kernels"].map(lambda k: isinstance(k, list) and bool(k))]
    for _, row in have.sort_values("size").iterrows():
        ops = ", ".join(f"{k.get('name')} {100 * float(k.get('share') or 0):.0f} %" for k in row["kernels"][:top])
        note = row.get("backend_note")
        rows[f"{row_label(row, extra)} {row['mode']}"] = {
            "size": f"{int(row['size'])} px", "backend": str(row.get("backend") or "?"),
            "on": str(row.get("kernels_device") or ""), f"top {top} ops by self time": ops,
            "note": note if isinstance(note, str) else ""}
    if not rows:
        return None
    out = pd.DataFrame.from_dict(rows, orient="index")
    if (out["note"] == "").all():
        out = out.drop(columns="note")
    out.index.name = "mechanism"
    suite = str(df["suite"].iloc[0])
    return _finish(out, df, "kernels", f"{suite}: which kernels ran (one profiled call, largest size profiled)",
                   ["share: the op's self time over all ops' self time in the profiled call (CPU ops on CPU, "
                    "CUDA kernels on a GPU)"])


def trained_note(row: pd.Series, metric: str) -> str:
    """`` ± std`` over seeds when a trained task reports one, `` (not converged)`` when its network
    failed the convergence rule (such a figure is not a final result) and, for the l2, whether a
    seed failed to beat the no-attention or zero-motion baseline."""
    text = ""
    std, seeds = number(row.get(f"{metric}_std")), row.get(f"{metric}_seeds")
    if std is not None and isinstance(seeds, list) and len(seeds) > 1:
        text += f" ± {sig(std, 2)}"
    flags = []
    if str(row.get("converged")) == "False":
        flags.append("not converged")
    if metric == "l2" and str(row.get("beats_baselines")) == "False":
        flags.append("not below both baselines")
    return text + (f" ({'; '.join(flags)})" if flags else "")


def baseline_note(df: pd.DataFrame) -> list[str]:
    """The test l2 of the baselines trained with the same setup and seeds, once per data source
    (every record of a run on one data source carries the same figures): what a layer must beat."""
    notes = []
    groups = df.groupby("data", sort=True) if "data" in df.columns else [("", df)]
    for source, part in groups:
        parts = []
        for name, field in BASELINE_FIELDS.items():
            values = part[field].dropna() if field in part.columns else pd.Series(dtype=float)
            if values.empty:
                continue
            row = part.loc[values.index[0]]
            std = number(row.get(f"{field}_std"))
            parts.append(f"{name} {sig(float(values.iloc[0]), 3)}" + (f" ± {sig(std, 2)}" if std else ""))
        if parts:
            where = f" on {source}" if source and "data" in df.columns and df["data"].nunique() > 1 else ""
            notes.append(f"baselines{where} (same network, training and seeds; l2): " + ", ".join(parts))
    if notes:
        notes.append("a row marked 'not below both baselines' has a seed that does not beat both")
    return notes


def cell_table(df: pd.DataFrame, suite: str) -> pd.DataFrame:
    """One row per cell: status, parameters, quality metrics, cost; the paper's figures beside where the
    cell ran at the paper's settings. Any suite renders."""
    metrics = metric_columns(df)
    quality = [m for m in QUALITY_METRICS if m in metrics]
    if suite not in TASK_SUITES:  # a suite this module does not know: every numeric metric but costs is a column
        hidden = {m for m in COST_METRICS if catalogue.get(m).kind in ("cost", "bookkeeping")} | {
            "time_median_s", "time_iqr_s"}
        quality += [m for m in metrics if m not in hidden and m not in quality and _numeric(df[m])]
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
        cells["params"] = params_text(row)
        size = int(row["size"])

        def beside(paper_metric: str, text: str, column: str, paper_unit: str = "") -> None:
            cells[column] = text
            fig = paper.lookup(suite, paper_metric, row["mechanism"], row["params"], size, row["trained_with"],
                               cell=row)
            if fig is not None:
                cells[column + PAPER_SUFFIX + paper_unit] = fig.text

        for m in quality:
            beside(m, catalogue.get(m).format(row.get(m), unit=False) + trained_note(row, m) if ok else "—", m)
        for metric, column, paper_unit in ((FLOPS, "GFLOP", ""), (MEMORY, "memory GiB", " (GB)")):
            value = number(row.get(metric.name)) if ok else None
            est = catalogue.get(metric.estimate).display(row.get(metric.estimate))
            text = metric.format(value, unit=False) if value is not None else (f"est. {sig(est)}" if est is not None
                                                                               else "—")
            beside(metric.paper or metric.name, text, column, paper_unit)
        if "time_median_s" in df.columns:
            cells["time"] = seconds(number(row.get("time_median_s"))) if ok else "—"
            if ok and row.get("loaded") is True and cells["time"] != "—":
                cells["time"] += _load_mark(row)
        if name in rows:  # same label twice: tell the runs apart by what differs, never by a prime
            name = f"{name} [{row.get('preset')}]" if f"{name} [{row.get('preset')}]" not in rows else f"{name} [{row['key']}]"
        rows[name] = cells
        note = _note(row, name)
        if note:
            notes.append(note)
    out = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    empty = [c for c in out.columns if c != "status" and (out[c].isin(["", "—"])).all()]
    out = out.drop(columns=empty)
    mine = [c for c in out.columns if PAPER_SUFFIX not in c]  # each paper column right after ours
    out = out[[x for c in mine for x in [c] + [p for p in out.columns if p.startswith(c + PAPER_SUFFIX)]]]
    out.index.name = "mechanism"
    costs = [c for c in ("GFLOP", "memory GiB") if c in out.columns]
    title = f"{suite}: " + (", ".join(quality) if quality else "cells") + (
        " with " + " and ".join(costs) if costs else "")
    timed = load_notes(df) if "time" in out.columns else []
    return _finish(out, df, suite, title, notes + baseline_note(df) + _paper_notes(out, suite) + timed)


def crossover_table(records: Sequence[dict[str, Any]], reference: str = "flash") -> pd.DataFrame:
    """For each mechanism, the smallest image side at which it uses less memory, and less time, than
    ``reference`` measured alongside it (CAB's "efficiency length"), interpolated on the measured curves.

    Only cells of one run are compared (same suite, channels, patch size, mode, device, data...);
    an empty frame when no suite measured the reference at two sizes or more.
    """
    df = to_frame([r for r in records if r.get("suite") not in ("search",)])
    if df.empty:
        return pd.DataFrame()
    group = [f for f in ("suite", "preset", "channels", "patch_size", "batch", "mode", "device", "dtype", "machine",
                         "data") if f in df.columns]
    rows: dict[str, dict[str, str]] = {}
    for _, sub in df[df["status"] == "ok"].groupby(group, dropna=False):
        ref_rows = sub[(sub["label"] == reference)]
        if ref_rows["size"].nunique() < 1:
            continue
        first = sub.iloc[0]
        for label in sorted(set(sub["label"]) - {reference}, key=lambda x: x):
            mine = sub[sub["label"] == label]
            cells: dict[str, str] = {}
            for metric, column in ((MEMORY, "less memory"), (catalogue.get("time_median_s"), "less time")):
                if metric.name not in sub.columns:
                    continue
                joined = mine.merge(ref_rows, on="size", suffixes=("", "_ref"))
                kind, where = crossover(joined["size"].astype(float).tolist(),
                                        pd.to_numeric(joined[metric.name], errors="coerce").tolist(),
                                        pd.to_numeric(joined[metric.name + "_ref"], errors="coerce").tolist())
                cells[column] = {"at": lambda w: f"≈ {w:.0f} px", "below": lambda w: f"≤ {w:.0f} px",
                                 "never": lambda w: f"> {w:.0f} px", "none": lambda w: ""}[kind](where)
            if any(cells.values()):
                where = f"{first['suite']} ({first['mode']}, C={first['channels']}, p={first['patch_size']}, {first['data']})"
                rows[f"{label} — {where}"] = cells
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    out.index.name = "mechanism — measured in"
    out.attrs.update(name="crossover", title=f"crossover: smallest image side at which each mechanism needs less "
                     f"than {reference} measured in the same run", notes=[
                         f"interpolated on log-log axes between the two measured sizes where the ratio to {reference} "
                         "crosses 1; ≤: less already at the smallest size compared; >: more at every size where "
                         f"{reference} also ran (the largest such size shown)"])
    return out


def suite_tables(records: Sequence[dict[str, Any]], suite: str, reference: str = "flash") -> list[pd.DataFrame]:
    """Every table a suite's report shows (memory: memory and FLOPs; others: one)."""
    df = to_frame([r for r in records if r.get("suite") == suite])
    if df.empty:
        raise UserError(f"no records of suite {suite!r} in the results given")
    kernels = kernels_table(df) if suite in ("memory", "speed") else None
    if suite == "memory":
        tables = [memory_table(df)]
        if {"flops", "estimated_flops"} & set(df.columns):
            tables.append(flops_table(df))
        return tables + ([kernels] if kernels is not None else [])
    if suite == "speed":
        return [speed_table(df, reference)] + ([kernels] if kernels is not None else [])
    checked = findings_table(records, suite)
    return [cell_table(df, suite)] + ([checked] if checked is not None else [])


def suite_table(records: Sequence[dict[str, Any]], suite: str, reference: str = "flash") -> pd.DataFrame:
    """The paper-shaped table of one suite (the first of :func:`suite_tables`)."""
    return suite_tables(records, suite, reference)[0]


def suites_in(records: Sequence[dict[str, Any]]) -> list[str]:
    """Suites present in the records, in order of first appearance."""
    return list(dict.fromkeys(r["suite"] for r in records))


def _styled(text: str, paper_column: bool) -> Text:
    if paper_column:
        return Text(text, style="italic cyan")
    from ..console import STATUS_STYLE

    for status, style in STATUS_STYLE.items():
        if status != "ok" and text.startswith(status):
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
    """The stdout console (console.make_console): no squeezing to 80 columns when piped, NO_COLOR honoured."""
    from ..console import make_console

    return make_console()
