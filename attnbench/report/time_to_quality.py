"""Time-to-quality of the search suite: how long each method takes to get within a quality bar.

A search-suite record whose mechanism was swept (PSAL over iterations, IVF over nprobe, HNSW
over efSearch) carries ``metrics.convergence``: one point per swept value with the seconds of a
full call (index build included; the median of repeated calls, whose interquartile range the
figure draws) and the reconstruction MSE relative to the exact 1-NN's. These
curves are the fair comparison between an iterative search and an index (one costs per iteration, the other per build and probe): the
question is not "which is faster" but "which is faster at the same quality". The report draws
them (``suite_plots``) and ``python -m attnbench_plugins.psal_quality --time-to-quality`` prints
the fastest point of each method within the bar.
"""
from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from .style import colour, marker  # noqa: E402

#: MSE ratio (to the exact 1-NN's) a method must reach to count as "as good as exact"
QUALITY_BAR = 1.05


def point_value(point: dict[str, Any], swept: str) -> Any:
    """The swept value of a point: the number for one parameter, ``nlist=64,nprobe=4`` for several."""
    names = swept.split(",") if swept else []
    if len(names) == 1:
        return point.get(names[0])
    return ",".join(f"{name}={point.get(name)}" for name in names) if names else None


def pareto_front(curve: pd.DataFrame) -> pd.DataFrame:
    """The points no faster point beats on quality, by time: a method tuned on several knobs at its best."""
    curve = curve.sort_values("time_s")
    return curve[curve["mse_ratio"] < curve["mse_ratio"].cummin().shift(fill_value=float("inf"))]


COLUMNS = ["mechanism", "size", "seed", "swept", "value", "time_s", "time_q1_s", "time_q3_s", "mse_ratio"]


def quartiles(point: dict[str, Any]) -> tuple[float, float]:
    """First and third quartile of a point's timed calls (its median twice when it has one sample
    or none: records of single-call runs)."""
    samples = point.get("time_samples_s") or []
    if len(samples) < 2:
        return point["time_s"], point["time_s"]
    q = statistics.quantiles(samples, n=4)
    return q[0], q[2]


def curve_points(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per convergence point of the ok records: mechanism (with its spec parameters),
    size, swept parameter and value, seconds per call (median and quartiles), MSE ratio. Empty
    when none has curves."""
    rows = []
    for record in records:
        if record.get("status") != "ok":
            continue
        metrics = record.get("metrics") or {}
        swept = metrics.get("swept", "")
        params = record.get("params") or {}
        name = record["mechanism"] + (f"[{','.join(f'{k}={v}' for k, v in params.items())}]" if params else "")
        for point in metrics.get("convergence") or []:
            if "time_s" not in point or "mse_ratio" not in point:
                continue
            q1, q3 = quartiles(point)
            rows.append({"mechanism": name, "size": record["size"], "seed": record.get("seed", 0), "swept": swept,
                         "value": point_value(point, swept), "time_s": point["time_s"], "time_q1_s": q1,
                         "time_q3_s": q3, "mse_ratio": point["mse_ratio"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def fastest_within(points: pd.DataFrame, quality: float = QUALITY_BAR) -> pd.DataFrame:
    """Per size and mechanism, the fastest point whose MSE ratio is <= ``quality``."""
    good = points[points["mse_ratio"] <= quality]
    if good.empty:
        return good
    return good.loc[good.groupby(["size", "mechanism"])["time_s"].idxmin()].sort_values(["size", "time_s"])


def variant_colours(names: Sequence[str], every: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """A colour per curve: a plain mechanism its own (report.style), a variant ``name[params]`` the
    tab20 entry of its rank among ``every`` variant the report draws (default: ``names``), so one
    variant has one colour in every figure of a report (tab10 when ten or fewer)."""
    variants = sorted({n for n in (every or names) if "[" in n} | {n for n in names if "[" in n})
    palette = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    return {name: colour(name) if "[" not in name else palette(variants.index(name) % palette.N) for name in names}


def figure(points: pd.DataFrame, quality: float = QUALITY_BAR, title: str = "search",
           every: Optional[Sequence[str]] = None) -> Figure | None:
    """MSE ratio vs seconds, one panel per size, one curve per mechanism along its swept
    parameter (several parameters: the Pareto front of all their combinations; log time axis;
    PSAL solid, the others dashed; a bar across each point from the first to the third quartile of
    its timed calls); the quality bar as a dotted line. Give it one run's points (one preset):
    curves from different runs are not comparable. ``every``: all curve names of the report, for
    :func:`variant_colours`."""
    if points.empty:
        return None
    # a mechanism run with several seeds gets one curve per seed (a curve follows one search)
    seeded = points.groupby("mechanism")["seed"].transform("nunique") > 1
    points = points.assign(mechanism=points["mechanism"].where(~seeded, points["mechanism"] + " seed " + points["seed"].astype(str)))
    sizes = sorted(points["size"].unique())
    names = list(dict.fromkeys(points["mechanism"]))
    # variants of one mechanism need colours of their own and their own markers; the legend goes
    # under the panels, where it hides no curve
    colours = variant_colours(names, every)
    repeated = bool((points["time_q3_s"] > points["time_q1_s"]).any())  # records of single-call runs have no spread
    timed = ("seconds per call, median and quartiles of repeated calls" if repeated else "seconds of one call") + \
        " (index build included)"
    legend_rows = -(-len(names) // 3)
    legend_h = 0.2 * legend_rows + 0.2
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2 + legend_h), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        here = points[points["size"] == size]
        for name, curve in here.groupby("mechanism", sort=False):
            several = "," in str(curve["swept"].iloc[0])
            curve = pareto_front(curve) if several else curve.sort_values("value")
            style = "-" if name.startswith("psal") else "--"
            ax.plot(curve["time_s"], curve["mse_ratio"], style, marker=marker(name), ms=4, label=name, color=colours[name])
            ax.hlines(curve["mse_ratio"], curve["time_q1_s"], curve["time_q3_s"], color=colours[name], lw=1.2, alpha=0.6)
        ax.axhline(quality, color="0.5", lw=0.8, ls=":")
        ax.set_xscale("log")
        # labels at 1, 2, 5 x 10^n only: every minor tick labelled overlaps on a narrow panel
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0.98, min(1.6, max(1.2, float(here["mse_ratio"].quantile(0.8)) + 0.05)))
        ax.set_xlabel(timed)
        ax.set_ylabel("reconstruction MSE / exact 1-NN's")
        ax.set_title(f"{size} x {size} px")
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)), fontsize=7,
               frameon=False)
    fig.suptitle(f"{title}: time to quality (dotted: {quality}x the exact 1-NN's MSE)", fontsize=10)
    fig.tight_layout(rect=(0, legend_h / (4.2 + legend_h), 1, 1))
    return fig
