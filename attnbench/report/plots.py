"""Plots of a suite's records (matplotlib, Agg backend): scaling on log-log axes and quality vs cost.

- ``scaling``: a metric (memory, FLOPs, time) vs input size, one panel per mode; measured solid
  (times with their interquartile range as error bars), the plugin's estimate dashed with hollow
  markers in the same colour, each mechanism's fitted exponent in the legend (from 3 sizes or more),
  cells that did not run as crosses on their estimate, the machine's memory and an optional
  budget as horizontal lines.
- ``quality``: the paper's Figure 5, a quality metric vs memory and vs GFLOP at the sizes where most
  mechanisms were measured (one row of panels per size and data source; never one Pareto front
  across data sets), labels placed so that they do not overlap.
Every mechanism has one colour and one marker in every plot (:mod:`attnbench.report.style`),
derived from its name; legends name mechanisms and what varies, never presets.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter  # noqa: E402

from .. import metrics as catalogue  # noqa: E402
from ..cells import MODES  # noqa: E402
from ..metrics import HIGHER_IS_BETTER, QUALITY_METRICS  # noqa: E402
from .analysis import fit_exponent, pareto_front  # noqa: E402
from .frame import ROW_FIELDS, caption, latest, metric_columns, row_label, to_frame, varying  # noqa: E402
from . import time_to_quality  # noqa: E402
from .style import colour, marker, order_key  # noqa: E402

#: row fields a plot's legend may name (never the preset: ``options`` differ between presets)
PLOT_FIELDS: tuple[str, ...] = tuple(f for f in ROW_FIELDS if f != "options")
#: line styles by data source, in order of appearance (the colour stays the mechanism's)
_DATA_STYLES = ("-", "-.", ":", (0, (5, 1)))


@dataclass(frozen=True)
class Axis:
    """A metric of the catalogue and how a plot shows it."""

    metric: str
    title: str

    @property
    def entry(self) -> catalogue.Metric:
        return catalogue.get(self.metric)

    @property
    def estimate(self) -> str | None:
        return self.entry.estimate

    @property
    def scale(self) -> float:
        return self.entry.scale

    @property
    def label(self) -> str:
        unit = self.entry.unit
        return f"{self.title.lower()} ({unit})" if unit else self.title.lower()


MEMORY = Axis("peak_memory_bytes", "Peak memory")
FLOPS = Axis("flops", "Floating-point operations")
TIME = Axis("time_median_s", "Median time")


def _num(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def _size_ticks(ax: Any, sizes: Sequence[int]) -> None:
    """Ticks at the measured sizes, labelled as the images' sides (the axis itself is n pixels)."""
    ns = sorted({s * s for s in sizes})
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{int(round(n ** 0.5))}²" for n in ns])


def machine_memory(records: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    """(machine, total memory in bytes) of every machine the records were measured on."""
    from .frame import machine_name

    found = {}
    for rec in records:
        env = rec.get("env") or {}
        if env.get("memory_total_bytes"):
            found[machine_name(env)] = float(env["memory_total_bytes"])
    return sorted(found.items())


def _series(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Rows grouped into one curve each: the mechanism plus what varies (data, C, p...), presets merged;
    of two cells at one size the last one wins."""
    extra = varying(df, PLOT_FIELDS)
    labels = pd.Series([row_label(r, extra) for _, r in df.iterrows()], index=df.index)
    out = []
    for label in sorted(set(labels), key=order_key):
        rows = df[labels == label].drop_duplicates("size", keep="last").sort_values("size")
        out.append((label, rows))
    return out


def _time_spread(rows: pd.DataFrame, scale: float) -> np.ndarray:
    """Asymmetric error bars (2, n): the quartiles of the timing samples, else median ± IQR/2."""
    lo, hi = [], []
    for _, r in rows.iterrows():
        med = catalogue.as_number(r.get("time_median_s"))
        samples = r.get("time_samples_s")
        if med is None:
            lo.append(0.0), hi.append(0.0)
        elif isinstance(samples, (list, tuple)) and len(samples) >= 2:
            q1, q3 = np.percentile(np.asarray(samples, float), [25, 75])
            lo.append(max(med - q1, 0.0) / scale), hi.append(max(q3 - med, 0.0) / scale)
        else:
            iqr = catalogue.as_number(r.get("time_iqr_s")) or 0.0
            lo.append(iqr / 2 / scale), hi.append(iqr / 2 / scale)
    return np.array([lo, hi])


def _outside_torch(rows: pd.DataFrame, axis: Axis) -> np.ndarray:
    """Rows whose figure holds what torch's instruments did not see: memory from the resident /
    device figure (``peak_memory_source``), FLOPs declared by the plugin (``flops_declared``)."""
    if axis is MEMORY and "peak_memory_source" in rows:
        return (rows["peak_memory_source"].fillna("allocator").astype(str) != "allocator").to_numpy()
    if axis is FLOPS and "flops_declared" in rows:
        return (_num(rows["flops_declared"]) > 0)
    return np.zeros(len(rows), dtype=bool)


def scaling_plot(df: pd.DataFrame, axis: Axis, suite: str, machine_memory: Sequence[tuple[str, float]] = (),
                 budget: float | None = None) -> Figure | None:
    """``axis.metric`` vs input size on log-log axes, one panel per mode; None when nothing to show."""
    wanted = [c for c in (axis.metric, axis.estimate) if c and c in df.columns]
    if not wanted or df.empty:
        return None
    modes = [m for m in MODES if m in set(df["mode"])] + sorted(set(df["mode"]) - set(MODES))
    data_style = {d: _DATA_STYLES[i % len(_DATA_STYLES)] for i, d in enumerate(dict.fromkeys(df["data"]))}
    fig, axes = plt.subplots(1, len(modes), figsize=(6.4 * len(modes), 4.6), squeeze=False, sharey=True)
    drew = False
    shown: set[str] = set()
    handles: dict[str, Any] = {}
    for ax, mode in zip(axes[0], modes):
        sub = df[df["mode"] == mode]
        drew = _scaling_panel(ax, sub, axis, data_style, handles, shown) or drew
        if axis is MEMORY:
            _memory_lines(ax, axis, machine_memory, budget)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _size_ticks(ax, sub["size"].astype(int).tolist())
        ax.set_xlabel("input size (pixels, H×W)")
        ax.set_title(mode, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    if not drew:
        plt.close(fig)
        return None
    axes[0][0].set_ylabel(axis.label)
    key = _scaling_key(df, axis)
    fig.suptitle(f"{suite}: {axis.title.lower()} vs input size (log-log) — {caption(df)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.0, 1, 0.97))
    # one entry per series: its fitted exponent in each panel, named by mode when there are several
    texts = [_legend_text(name, fits, len(modes) > 1) for name, (_, fits) in handles.items()]
    fig.legend([h for h, _ in handles.values()] + key, texts + [h.get_label() for h in key], fontsize=8,
               loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, max(1, len(handles) + len(key))),
               frameon=False)
    _not_plotted(fig, df, shown, y=-0.04 - 0.035 * ((len(handles) + len(key) + 3) // 4))
    return fig


def _scaling_panel(ax: Any, sub: pd.DataFrame, axis: Axis, data_style: dict[Any, Any], handles: dict[str, Any],
                   shown: set[str]) -> bool:
    """One mode's curves, measured and estimated, one per series; True when it drew any. ``handles``
    (legend entries) and ``shown`` (keys plotted) are shared by all panels, so each grows here."""
    drew = False
    drawn: dict[str, dict[float, float]] = {}
    for label, rows in _series(sub):
        mark = marker(str(rows["label"].iloc[0]))
        c = colour(str(rows["mechanism"].iloc[0]))
        n = rows["size"].to_numpy(dtype=float) ** 2
        ok = (rows["status"] == "ok").to_numpy()
        measured = _num(rows[axis.metric]) / axis.scale if axis.metric in rows else np.full(len(rows), np.nan)
        keep = ok & np.isfinite(measured) & (measured > 0)
        if keep.any():
            style = dict(marker=mark, color=c, ls=data_style[rows["data"].iloc[0]], lw=1.6, ms=6)
            _draw_measured(ax, rows, label, axis, n, measured, keep, style, drawn, handles)
            shown.update(rows["key"][keep])
            drew = True
        if axis.estimate and axis.estimate in rows:
            est = _num(rows[axis.estimate]) / axis.scale
            ekeep = np.isfinite(est) & (est > 0)
            if ekeep.any():
                (h,) = ax.plot(n[ekeep], est[ekeep], ls="--", color=c, lw=1.0, alpha=0.8, marker=mark, ms=5,
                               mfc="none")
                if not keep.any() and label not in handles:
                    handles.setdefault(f"{label} (estimate only)", (h, {}))
                failed = ekeep & ~ok
                ax.scatter(n[failed], est[failed], marker="x", color=c, s=50, zorder=3)
                shown.update(rows["key"][ekeep])
                drew = True
    return drew


def _legend_text(name: str, fits: dict[str, float], by_mode: bool) -> str:
    """``flash (n^0.99 fwd, n^1.01 fwd+bwd)``: a series' fitted exponents, one per panel."""
    if not fits:
        return name
    parts = [f"n^{e:.2f}" + (f" {mode}" if by_mode else "") for mode, e in fits.items()]
    return f"{name} ({', '.join(parts)})"


def _draw_measured(ax: Any, rows: pd.DataFrame, label: str, axis: Axis, n: np.ndarray, measured: np.ndarray,
                   keep: np.ndarray, style: dict[str, Any], drawn: dict[str, dict[float, float]],
                   handles: dict[str, Any]) -> None:
    """One series' measured points with its fitted exponent in the legend. A curve lying on one already
    in ``drawn`` is hollow and larger, and the legend says which, so that neither hides the other."""
    exponent = fit_exponent(n[keep], measured[keep])
    tag = label
    points = dict(zip(n[keep], measured[keep]))
    hidden = [other for other, pts in drawn.items() if set(points) <= set(pts)
              and all(abs(np.log(v / pts[x])) < 0.03 for x, v in points.items())]
    drawn[label] = points
    if hidden:
        tag += f" (≈ {hidden[0]})"
        style.update(ms=10, mfc="none", mew=1.5, lw=1.0)
    if axis is TIME:
        h = ax.errorbar(n[keep], measured[keep], yerr=_time_spread(rows[keep], axis.scale), capsize=3,
                        elinewidth=1, **style)
    else:
        (h,) = ax.plot(n[keep], measured[keep], **style)
    handles.pop(f"{label} (estimate only)", None)  # measured in another panel
    _, fits = handles.setdefault(tag, (h, {}))
    if exponent is not None:
        fits[str(rows["mode"].iloc[0])] = exponent
    outside = keep & _outside_torch(rows, axis)
    if outside.any():  # the figure holds memory or FLOPs outside torch: ringed
        ax.scatter(n[outside], measured[outside], marker="o", s=140, facecolors="none",
                   edgecolors=style["color"], linewidths=1.2, zorder=4)


def _memory_lines(ax: Any, axis: Axis, totals: Sequence[tuple[str, float]], budget: float | None) -> None:
    """Each machine's memory and the run's budget as horizontal lines: where a curve crosses them, the
    mechanism no longer fits."""
    for name, total in totals:
        ax.axhline(total / axis.scale, color="black", lw=1, ls=":")
        ax.annotate(f"memory of {name}: {total / axis.scale:.0f} GiB", xy=(0.99, total / axis.scale),
                    xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8)
    if budget:
        ax.axhline(budget / axis.scale, color="#b00020", lw=1.4, ls="--")
        ax.annotate(f"budget {catalogue.sig(budget / axis.scale)} GiB", xy=(0.01, budget / axis.scale),
                    xycoords=("axes fraction", "data"), ha="left", va="bottom", fontsize=8, color="#b00020")


def _scaling_key(df: pd.DataFrame, axis: Axis) -> list[Line2D]:
    """The legend's grey entries that explain the line styles and marks, not any one series."""
    key = [Line2D([], [], color="grey", lw=1.6, label="measured" + (" (bars: IQR)" if axis is TIME else "")),
           Line2D([], [], color="grey", lw=1.0, ls="--", marker="o", mfc="none", label="estimate")] \
        if axis.estimate else []
    if axis.estimate:
        key.append(Line2D([], [], color="grey", ls="", marker="x", label="did not run (estimate)"))
    if any(_outside_torch(rows, axis).any() for _, rows in _series(df[df["status"] == "ok"])):
        key.append(Line2D([], [], color="grey", ls="", marker="o", ms=11, mfc="none",
                          label="ringed: " + ("resident / device figure (memory outside torch)" if axis is MEMORY
                                              else "includes FLOPs declared outside torch")))
    return key


def _not_plotted(fig: Figure, df: pd.DataFrame, shown: set[str], y: float = -0.01) -> None:
    """Say below the figure which cells are missing from it and why (failures are never hidden)."""
    missing = sorted({f"{r['label']} {int(r['size'])}px {r['mode']} ({r['status']})"
                      for _, r in df.iterrows() if r["key"] not in shown})
    if missing:
        text = "not plotted: " + "; ".join(missing[:8]) + (f"; +{len(missing) - 8} more" if len(missing) > 8 else "")
        fig.text(0.01, y, text, fontsize=7, color="dimgray", va="top", wrap=True)


def quality_metric(df: pd.DataFrame) -> str | None:
    """The quality metric a task suite is judged on (the catalogue's first: l2, as the paper)."""
    metrics = metric_columns(df)
    for m in QUALITY_METRICS:
        if m in metrics and pd.to_numeric(df[m], errors="coerce").notna().any():
            return m
    return None  # timing and bookkeeping metrics are not a quality axis


def comparable_sizes(ok: pd.DataFrame, metric: str, most: int = 3) -> list[int]:
    """The sizes at which the most mechanisms have a ``metric`` value (up to ``most``, largest first):
    costs and qualities only compare at one resolution, and a size where one mechanism ran compares nothing."""
    have = ok[pd.to_numeric(ok[metric], errors="coerce").notna()]
    counts = have.groupby("size")["label"].nunique()
    if counts.empty:
        return []
    best = counts.max()
    return sorted((int(s) for s, c in counts.items() if c == best), reverse=True)[:most]


def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 colours: Sequence[str] | None = None) -> None:
    """Annotate points so that no two labels overlap and no label hides a point: each label takes the
    first free spot among offsets around its point (farther ones with a leader line)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    pts = ax.transData.transform(np.column_stack([xs, ys])) if len(xs) else np.zeros((0, 2))
    box = ax.get_window_extent(renderer)
    taken = [matplotlib.transforms.Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in pts]
    ring = [(7, 5), (7, -12), (-7, 5), (-7, -12), (0, 11), (0, -17)]
    candidates = ring + [(dx * k, dy * k) for k in (2.2, 3.5, 5) for dx, dy in ring + [(14, 0), (-14, 0)]]
    for i in sorted(range(len(texts)), key=lambda k: (-pts[k][1], pts[k][0])):
        best = None
        for dx, dy in candidates:
            ann = ax.annotate(texts[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", fontsize=7.5,
                              ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                              va="bottom" if dy > 0 else "top", color=colours[i] if colours else "black",
                              arrowprops=dict(arrowstyle="-", color="grey", lw=0.6) if abs(dx) > 12 or abs(dy) > 18
                              else None)
            bb = ann.get_window_extent(renderer).expanded(1.02, 1.08)
            inside = bb.x0 >= box.x0 and bb.x1 <= box.x1 and bb.y0 >= box.y0 and bb.y1 <= box.y1
            if inside and not any(bb.overlaps(t) for t in taken):
                best = ann
                break
            ann.remove()
        if best is None:  # nowhere free: the nearest spot, still readable
            best = ax.annotate(texts[i], (xs[i], ys[i]), xytext=(7, 5), textcoords="offset points", fontsize=7.5,
                               color=colours[i] if colours else "black")
        taken.append(best.get_window_extent(renderer))


def quality_plot(df: pd.DataFrame, suite: str, metric: str) -> Figure | None:
    """The paper's Figure 5: ``metric`` vs memory and vs GFLOP, the Pareto front dashed.

    One row of panels per size where the most mechanisms ran, and per data source: a Pareto front
    never mixes two data sets.
    """
    ok_all = df[df["status"] == "ok"]
    if ok_all.empty or metric not in ok_all.columns:
        return None
    sizes = comparable_sizes(ok_all, metric)
    groups = [(s, d) for s in sizes for d in dict.fromkeys(ok_all[ok_all["size"] == s]["data"])]
    panels = [axis for axis in (MEMORY, FLOPS) if axis.metric in ok_all.columns]
    if not groups or not panels:
        return None
    fig, axes = plt.subplots(len(groups), len(panels), figsize=(6.4 * len(panels), 4.4 * len(groups)),
                             squeeze=False)
    shown: set[str] = set()
    trained = (ok_all["trained_with"] != "").any()
    extra = [f for f in varying(ok_all, PLOT_FIELDS) if f not in ("data",)]
    placements = []
    for row_axes, (size, data) in zip(axes, groups):
        ok = ok_all[(ok_all["size"] == size) & (ok_all["data"] == data)]
        labels = [row_label(r, extra) + (f" ← {r['trained_with']}" if r.get("trained_with") else "")
                  for _, r in ok.iterrows()]
        for ax, axis in zip(row_axes, panels):
            placements.append((ax, *_quality_panel(ax, ok, axis, metric, labels, shown)))
            ax.set_title(f"{size} px, data: {data}", fontsize=9)
    legend = " — labels: tested ← trained with" if trained else ""
    fig.suptitle(f"{suite}: {metric} vs cost (as the paper's Figure 5) — {caption(ok_all)}{legend}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    for ax, xs, ys, texts, cols in placements:
        place_labels(ax, xs, ys, texts, cols)
    _not_plotted(fig, df[df["size"].isin(sizes)], shown)
    return fig


def _quality_panel(ax: Any, ok: pd.DataFrame, axis: Axis, metric: str, labels: list[str],
                   shown: set[str]) -> tuple[list[float], list[float], list[str], list[str]]:
    """One panel: each mechanism's quality vs one cost, and the Pareto front. Returns the points and
    their labels, placed by the caller once the figure's layout is final (labels must not overlap)."""
    quality = _num(ok[metric])
    cost = _num(ok[axis.metric]) / axis.scale
    usable = np.isfinite(cost) & (cost > 0) & np.isfinite(quality)
    xs, ys, texts, cols = [], [], [], []
    for x, y, label, mech, full, key, good in zip(cost, quality, labels, ok["mechanism"], ok["label"],
                                                 ok["key"], usable):
        if good:
            shown.add(key)
            ax.scatter(x, y, color=colour(mech), marker=marker(full), s=60, zorder=3, edgecolor="black",
                       linewidth=0.5)
            xs.append(x), ys.append(y), texts.append(label), cols.append(colour(mech))
    score = -quality if metric in HIGHER_IS_BETTER else quality
    front = pareto_front(np.where(usable, cost, np.nan), np.where(usable, score, np.nan))
    if len(front) > 1:
        ax.step(cost[front], quality[front], where="post", color="grey", ls="--", lw=1.2, zorder=2,
                label="Pareto front")
    if front:
        ax.scatter(cost[front], quality[front], s=170, facecolor="none", edgecolor="grey", zorder=2,
                   label=None if len(front) > 1 else "Pareto front")
    ax.set_xscale("log")
    finite = quality[np.isfinite(quality) & (quality > 0)]
    if finite.size and finite.max() > 10 * finite.min():
        ax.set_yscale("log")  # quality spanning decades: keep the good ones apart
    else:
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.3, y=0.15)
    ax.set_xlabel(axis.label)
    ax.set_ylabel(f"{metric} ({'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better)")
    ax.grid(True, alpha=0.3)
    if front:
        ax.legend(fontsize=8, loc="best")
    return xs, ys, texts, cols


def setting_groups(df: pd.DataFrame) -> list[tuple[tuple[str, ...], pd.DataFrame]]:
    """Rows grouped by the setting their preset measured (the caption's C, p, dtype, data...),
    presets of one setting together (they differ in options only), largest group first."""
    presets = df["preset"].fillna("").astype(str) if "preset" in df.columns else pd.Series("", index=df.index)
    by_setting: dict[str, list[str]] = {}
    for preset in dict.fromkeys(presets):
        by_setting.setdefault(caption(df[presets == preset], sizes=False), []).append(preset)
    groups = [(tuple(p or "default" for p in names), df[presets.isin(names)]) for names in by_setting.values()]
    return sorted(groups, key=lambda g: -len(g[1]))


def suite_plots(records: Sequence[dict[str, Any]], suite: str, budget: float | None = None) -> dict[str, Figure]:
    """All plots that a suite's records support, by a short name (``memory``, ``flops``, ``time``,
    ``quality``, and ``time-to-quality`` where records carry convergence curves: the search suite)."""
    mine = [r for r in records if r.get("suite") == suite]
    df = to_frame(mine)
    if df.empty:
        return {}
    out: dict[str, Figure | None] = {}
    # one set of cost plots per kind of device (a CPU curve never shares axes, or its machine's
    # memory line, with a GPU one) and per setting (presets at another p or C measure other
    # problems: one figure each, named by its presets); the first device keeps the plain names
    kind = df["device"].astype(str).str.split(":").str[0]
    devices = sorted(set(kind), key=lambda d: (d != "cpu", d))
    for device in devices:
        groups = setting_groups(df[kind == device])
        on_device = [r for r in mine if str(r.get("device", "cpu")).split(":")[0] == device]
        for presets, sub in groups:
            if sub["size"].nunique() <= 1:
                continue
            alone = len(groups) == 1
            tail = ("" if alone else "-" + "-".join(presets)) + ("" if device == devices[0] else f"-{device}")
            title = suite if alone else f"{suite} ({', '.join(presets)})"
            out[f"memory{tail}"] = scaling_plot(sub, MEMORY, title, machine_memory(on_device), budget)
            out[f"flops{tail}"] = scaling_plot(sub, FLOPS, title)
            out[f"time{tail}"] = scaling_plot(sub, TIME, title)
    metric = quality_metric(df)
    if metric:
        out["quality"] = quality_plot(df, suite, metric)
    # one time-to-quality figure per preset: a preset is run as one command (peers: PSAL and FAISS
    # side by side), so its curves are comparable; different presets are never drawn together
    cells = latest(mine)  # a re-run cell counts once, as in the tables
    presets = list(dict.fromkeys(str(r.get("preset", "")) for r in cells))
    curves = {preset: time_to_quality.curve_points([r for r in cells if str(r.get("preset", "")) == preset])
              for preset in presets}
    every = list(dict.fromkeys(name for points in curves.values() for name in points["mechanism"]))  # one colour per variant in every figure
    for preset, points in curves.items():
        if not points.empty:
            name = f"time-to-quality-{preset}" if preset else "time-to-quality"
            out[name] = time_to_quality.figure(points, title=f"{suite} ({preset})" if preset else suite, every=every)
    return {k: v for k, v in out.items() if v is not None}


def save(fig: Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Write ``fig`` as ``stem.png`` / ``stem.svg`` (whichever ``formats`` name) and close it."""
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130 if fmt == "png" else None, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def to_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure encoded as ``png`` or ``svg`` (for embedding in the HTML page)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110 if fmt == "png" else None, bbox_inches="tight")
    return buf.getvalue()
