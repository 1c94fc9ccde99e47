"""Plots of a suite's records (matplotlib, Agg backend): scaling on log-log axes and quality vs cost.

- ``scaling``: a metric (memory, FLOPs, time) vs input size, one panel per mode; measured solid,
  the plugin's estimate dashed in the same colour, each mechanism's fitted exponent in the legend,
  infeasible/oom cells as crosses on the estimate, the machine's memory as a horizontal line.
- ``quality``: the paper's Figure 5, a quality metric vs memory and vs GFLOPs, Pareto front marked.
Every mechanism has one colour in every plot (:func:`attnbench.report.style.colour`).
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
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402

from .analysis import HIGHER_IS_BETTER, QUALITY_METRICS, fit_exponent, pareto_front  # noqa: E402
from .frame import ROW_FIELDS, metric_columns, row_label, to_frame, varying  # noqa: E402
from .style import GIB, colour, order_key  # noqa: E402

_MARKERS = ("o", "s", "^", "D", "v", "P", "*")


@dataclass(frozen=True)
class Axis:
    """A metric, its estimate counterpart, and how to show it."""

    metric: str
    estimate: str | None
    label: str
    scale: float
    title: str


MEMORY = Axis("peak_memory_bytes", "estimated_memory_bytes", "peak memory (GiB)", GIB, "Peak memory")
FLOPS = Axis("flops", "estimated_flops", "GFLOPs", 1e9, "Floating-point operations")
TIME = Axis("time_median_s", None, "median time (s)", 1.0, "Time")


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


def scaling_plot(df: pd.DataFrame, axis: Axis, suite: str, machine_memory: Sequence[tuple[str, float]] = ()) -> Figure | None:
    """``axis.metric`` vs input size on log-log axes, one panel per mode; None when nothing to show."""
    wanted = [c for c in (axis.metric, axis.estimate) if c and c in df.columns]
    if not wanted or df.empty:
        return None
    modes = [m for m in ("fwd", "fwd+bwd") if m in set(df["mode"])] + sorted(set(df["mode"]) - {"fwd", "fwd+bwd"})
    extra = varying(df, ROW_FIELDS)
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.8), squeeze=False, sharey=True)
    drew = False
    shown: set[str] = set()
    for ax, mode in zip(axes[0], modes):
        sub = df[df["mode"] == mode]
        labels = sorted({row_label(r, extra) for _, r in sub.iterrows()}, key=order_key)
        variants: dict[str, int] = {}
        for label in labels:
            rows = sub[[row_label(r, extra) == label for _, r in sub.iterrows()]].sort_values("size")
            base = str(rows["mechanism"].iloc[0])
            marker = _MARKERS[variants.setdefault(base, 0) % len(_MARKERS)]
            variants[base] += 1
            n = rows["size"].to_numpy(dtype=float) ** 2
            ok = (rows["status"] == "ok").to_numpy()
            measured = _num(rows[axis.metric]) / axis.scale if axis.metric in rows else np.full(len(rows), np.nan)
            keep = ok & np.isfinite(measured) & (measured > 0)
            c = colour(label)
            if keep.any():
                exponent = fit_exponent(n[keep], measured[keep])
                tag = f"{label} (n^{exponent:.2f})" if exponent is not None else label
                ax.plot(n[keep], measured[keep], marker=marker, color=c, lw=1.8, ms=5, label=tag)
                shown.update(rows["key"][keep])
                drew = True
            if axis.estimate and axis.estimate in rows:
                est = _num(rows[axis.estimate]) / axis.scale
                ekeep = np.isfinite(est) & (est > 0)
                if ekeep.any():
                    ax.plot(n[ekeep], est[ekeep], ls="--", color=c, lw=1.1, alpha=0.75,
                            label=None if keep.any() else f"{label} (estimate only)")
                    failed = ekeep & ~ok
                    ax.scatter(n[failed], est[failed], marker="x", color=c, s=45, zorder=3)
                    shown.update(rows["key"][ekeep])
                    drew = True
        for name, total in machine_memory if axis is MEMORY else ():
            ax.axhline(total / axis.scale, color="black", lw=1, ls=":")
            ax.annotate(f"memory of {name}: {total / axis.scale:.0f} GiB", xy=(0.99, total / axis.scale),
                        xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _size_ticks(ax, sub["size"].astype(int).tolist())
        ax.set_xlabel("input size (pixels, H×W)")
        ax.set_title(f"{mode}")
        ax.grid(True, which="major", alpha=0.3)
    if not drew:
        plt.close(fig)
        return None
    axes[0][0].set_ylabel(axis.label)
    for ax in axes[0]:
        hs, ls = ax.get_legend_handles_labels()
        ax.legend(hs, ls, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    note = " — solid: measured, dashed: estimate, ×: not run (infeasible / failed)" if axis.estimate else ""
    fig.suptitle(f"{suite}: {axis.title.lower()} vs input size (log-log){note}", fontsize=10)
    fig.tight_layout()
    _not_plotted(fig, df, shown)
    return fig


def _not_plotted(fig: Figure, df: pd.DataFrame, shown: set[str]) -> None:
    """Say below the figure which cells are missing from it and why (failures are never hidden)."""
    missing = sorted({f"{r['label']} {int(r['size'])}px {r['mode']} ({r['status']})"
                      for _, r in df.iterrows() if r["key"] not in shown})
    if missing:
        text = "not plotted: " + "; ".join(missing[:8]) + (f"; +{len(missing) - 8} more" if len(missing) > 8 else "")
        fig.text(0.01, -0.01, text, fontsize=7, color="dimgray", va="top", wrap=True)


def quality_metric(df: pd.DataFrame) -> str | None:
    """The quality metric a task suite is judged on (l2 first, as the paper)."""
    metrics = metric_columns(df)
    for m in QUALITY_METRICS:
        if m in metrics and pd.to_numeric(df[m], errors="coerce").notna().any():
            return m
    return None  # timing and bookkeeping metrics are not a quality axis


def quality_plot(df: pd.DataFrame, suite: str, metric: str) -> Figure | None:
    """The paper's Figure 5: ``metric`` vs memory and vs GFLOPs, the Pareto front dashed.

    Costs only compare at one resolution, so the plot shows the largest size that has results.
    """
    ok = df[df["status"] == "ok"]
    if ok.empty or metric not in ok.columns:
        return None
    size = int(ok["size"].max())
    ok, df = ok[ok["size"] == size], df[df["size"] == size]
    extra = [f for f in varying(ok, ("size", "mode") + ROW_FIELDS)
             if not (f == "options" and (ok["trained_with"] != "").any())]
    labels = [row_label(r, extra) + (f" ← {r['trained_with']}" if r.get("trained_with") else "")
              for _, r in ok.iterrows()]
    quality = _num(ok[metric])
    panels = [(ax, axis) for ax, axis in ((None, MEMORY), (None, FLOPS)) if axis.metric in ok.columns]
    if not panels or not np.isfinite(quality).any():
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False, sharey=True)
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    shown: set[str] = set()
    for ax, (_, axis) in zip(axes[0], panels):
        cost = _num(ok[axis.metric]) / axis.scale
        for x, y, label, mech, key in zip(cost, quality, labels, ok["label"], ok["key"]):
            if np.isfinite(x) and np.isfinite(y) and x > 0:
                shown.add(key)
                ax.scatter(x, y, color=colour(mech), s=55, zorder=3, edgecolor="black", linewidth=0.5)
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7.5)
        usable = np.isfinite(cost) & (cost > 0)
        score = -quality if metric in HIGHER_IS_BETTER else quality
        front = pareto_front(np.where(usable, cost, np.nan), score)
        if len(front) > 1:
            ax.step(cost[front], quality[front], where="post", color="grey", ls="--", lw=1.2, zorder=2,
                    label="Pareto front")
        if front:
            ax.scatter(cost[front], quality[front], s=160, facecolor="none", edgecolor="grey", zorder=2,
                       label=None if len(front) > 1 else "Pareto front")
        ax.set_xscale("log")
        finite = quality[np.isfinite(quality) & (quality > 0)]
        if finite.size and finite.max() > 10 * finite.min():
            ax.set_yscale("log")  # quality spanning decades: keep the good ones apart
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25)
        ax.set_xlabel(axis.label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel(f"{metric} ({better} is better)")
    legend = " — labels: tested ← trained with" if (ok["trained_with"] != "").any() else ""
    fig.suptitle(f"{suite} at {size} px: {metric} vs cost (as the paper's Figure 5){legend}", fontsize=10)
    fig.tight_layout()
    _not_plotted(fig, df, shown)
    return fig


def suite_plots(records: Sequence[dict[str, Any]], suite: str) -> dict[str, Figure]:
    """All plots that a suite's records support, by a short name (``memory``, ``flops``, ``time``, ``quality``)."""
    df = to_frame([r for r in records if r.get("suite") == suite])
    if df.empty:
        return {}
    out: dict[str, Figure | None] = {}
    if df["size"].nunique() > 1:
        out["memory"] = scaling_plot(df, MEMORY, suite, machine_memory([r for r in records if r.get("suite") == suite]))
        out["flops"] = scaling_plot(df, FLOPS, suite)
        out["time"] = scaling_plot(df, TIME, suite)
    metric = quality_metric(df)
    if metric:
        out["quality"] = quality_plot(df, suite, metric)
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
