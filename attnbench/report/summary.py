"""The headline of a report: the memory / time / quality trade-off at the largest size measured,
in a few sentences built from the records and one figure (memory per mechanism at that size).

A time measured with more runnable threads than cores (:func:`attnbench.load.is_loaded`) is never
quoted: the time sentence is built from the other cells and says how many it left out, or says
that the load was not recorded. Memory, FLOPs and quality do not depend on the load (the
allocator's peak and the counts are exact), so their sentences keep every cell."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import metrics as catalogue
from ..metrics import HIGHER_IS_BETTER
from .frame import caption, load_unknown, loaded_rows, number, to_frame
from .plots import comparable_sizes, machine_memory, quality_metric, setting_groups
from .style import colour, order_key

#: suites a headline prefers for each question, in order (any suite with the metric otherwise)
_MEMORY_SUITES = ("memory", "speed")
_TIME_SUITES = ("speed", "memory", "reconstruction")
_QUALITY_SUITES = ("reconstruction", "colorization", "inpainting", "substitution", "search")
MEMORY = catalogue.get("peak_memory_bytes")


def _pick(df: pd.DataFrame, metric: str, prefer: Sequence[str]) -> pd.DataFrame:
    """The rows of the first preferred suite (then any suite) that has ``metric`` for two mechanisms
    or more, of one setting only (presets at another p or C measure other problems: the setting
    with the most mechanisms at its largest size, its presets named in ``attrs["presets"]``)."""
    if metric not in df.columns:
        return df.iloc[0:0]
    have = df[pd.to_numeric(df[metric], errors="coerce").notna()]
    suites = list(prefer) + sorted(set(have["suite"]) - set(prefer))
    for suite in suites:
        sub = have[have["suite"] == suite]
        if sub["label"].nunique() < 2:
            continue
        groups = [(presets, rows) for presets, rows in setting_groups(df[df["suite"] == suite])
                  if rows.index.isin(sub.index).any()]
        presets, rows = max(groups, key=lambda g: _breadth(g[1][g[1].index.isin(sub.index)]))
        rows = rows.copy()
        rows.attrs["presets"] = presets
        return rows
    return df.iloc[0:0]


def _presets_text(presets: Sequence[str]) -> str:
    return f" ({', '.join(presets)} preset{'s' if len(presets) > 1 else ''})" if presets else ""


def _breadth(rows: pd.DataFrame) -> tuple[int, int]:
    """(largest size, mechanisms there): how much of the question a setting's rows answer."""
    size = int(rows["size"].max())
    return size, rows[rows["size"] == size]["label"].nunique()


def memory_at_largest(df: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """Per mechanism at the largest size of the memory suite (fwd first): measured or estimated memory."""
    mem = _pick(df, "estimated_memory_bytes" if "estimated_memory_bytes" in df.columns else MEMORY.name,
                _MEMORY_SUITES)
    if mem.empty:
        return mem, None
    presets = mem.attrs.get("presets", ())
    mode = "fwd" if "fwd" in set(mem["mode"]) else sorted(set(mem["mode"]))[0]
    mem = mem[mem["mode"] == mode]
    valued = pd.Series(False, index=mem.index)
    for column in (MEMORY.name, MEMORY.estimate):
        if column in mem.columns:
            valued |= pd.to_numeric(mem[column], errors="coerce").notna()
    if not valued.any():
        return mem.iloc[0:0], None
    size = int(mem[valued]["size"].max())  # a lone cell that left no figure (a timeout) is no size to show
    rows = []
    for _, r in mem[mem["size"] == size].iterrows():
        measured = number(r.get(MEMORY.name)) if r["status"] == "ok" else None
        est = number(r.get(MEMORY.estimate))
        value = measured if measured is not None else est
        if value is not None:
            rows.append({"label": r["label"], "mechanism": r["mechanism"], "bytes": value,
                         "measured": measured is not None, "status": r["status"], "row": r})
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.drop_duplicates("label", keep="last").sort_values("bytes").reset_index(drop=True)
    out.attrs["caption"] = caption(mem[mem["size"] == size], sizes=False) + _presets_text(presets)
    return out, size


def by_device(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Records grouped by the machine that measured them (device kind and name), most records first:
    a headline never compares a CPU figure with a GPU one."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        env = r.get("env") if isinstance(r.get("env"), dict) else {}
        name = env.get("device_name") or ""
        kind = str(r.get("device", "cpu")).split(":")[0]
        groups.setdefault(f"{kind}, {name}" if name and kind != "cpu" else kind, []).append(r)
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def sentences(records: Sequence[dict[str, Any]], reference: str = "flash") -> list[str]:
    """A few sentences a reader can act on, each naming its suite, size, settings and machine."""
    groups = by_device(records)
    if len(groups) <= 1:
        return _sentences(records, reference)
    return [f"On {device}: {text}" for device, group in groups for text in _sentences(group, reference)]


def _sentences(records: Sequence[dict[str, Any]], reference: str) -> list[str]:
    df = to_frame(records)
    if df.empty:
        return []
    memory = _memory_sentence(df, records)
    times = _time_sentences(df, reference)
    quality = _quality_sentence(df)
    return ([memory] if memory else []) + times + ([quality] if quality else [])


def _memory_sentence(df: pd.DataFrame, records: Sequence[dict[str, Any]]) -> str | None:
    """Least and most memory at the largest size, and how many mechanisms fit the machine there."""
    mem, size = memory_at_largest(df)
    if size is None or mem.empty:
        return None
    totals = machine_memory(records)
    lo, hi = mem.iloc[0], mem.iloc[-1]
    text = (f"Memory at {size} px ({mem.attrs['caption']}): {lo['label']} needs the least, "
            f"{MEMORY.format(lo['bytes'])}{'' if lo['measured'] else ' (estimate)'}; {hi['label']} the most, "
            f"{MEMORY.format(hi['bytes'])}{'' if hi['measured'] else ' (estimate: it did not run)'}.")
    ran = int(mem["measured"].sum())
    where = f" within the {MEMORY.format(totals[0][1])} of {totals[0][0]}" if totals else ""
    return text + f" {ran} of {len(mem)} mechanisms ran at this size{where}."


def _time_sentences(df: pd.DataFrame, reference: str) -> list[str]:
    """Fastest and slowest at the size most mechanisms were timed at; cells timed on a loaded machine
    are counted, never quoted, as their times say more about the load than the code."""
    out = []
    ok = df[df["status"] == "ok"]
    timed_all = _pick(ok, "time_median_s", _TIME_SUITES)
    loaded = timed_all[loaded_rows(timed_all) & pd.to_numeric(timed_all.get("time_median_s"), errors="coerce").notna()] \
        if not timed_all.empty else timed_all
    timed = _pick(ok[~loaded_rows(ok)], "time_median_s", _TIME_SUITES)
    if not loaded.empty:
        out.append(f"{len(loaded)} timed cell{'s' if len(loaded) > 1 else ''} of the {loaded['suite'].iloc[0]} suite "
                   f"{'were' if len(loaded) > 1 else 'was'} measured with a load average above the core count "
                   f"(up to {loaded['load_peak'].max():.1f} on {int(loaded['load_cpus'].max())} CPUs): "
                   "not quoted here; re-run them on a quiet machine.")
    if timed.empty:
        return out
    presets = timed.attrs.get("presets", ())
    timed = timed[pd.to_numeric(timed["time_median_s"], errors="coerce").notna()]
    counts = timed.groupby("size")["label"].nunique()
    tsize = int(max(s for s, c in counts.items() if c == counts.max()))
    at = timed[timed["size"] == tsize].sort_values("time_median_s")
    fast, slow = at.iloc[0], at.iloc[-1]
    time = catalogue.get("time_median_s")
    text = (f"Time at {tsize} px ({at['suite'].iloc[0]} suite, {caption(at, sizes=False)}{_presets_text(presets)}): "
            f"{fast['label']} is fastest "
            f"({time.format(fast['time_median_s'])}), {slow['label']} slowest ({time.format(slow['time_median_s'])})")
    ref = at[at["label"] == reference]
    if not ref.empty and reference not in (fast["label"], slow["label"]):
        text += f"; {reference} takes {time.format(ref['time_median_s'].iloc[0])}"
    unknown = int(load_unknown(at).sum())
    load = (f"load not recorded for {unknown} of {len(at)} cells" if unknown else
            f"load average at most {at['load_peak'].max():.1f} on {int(at['load_cpus'].max())} CPUs")
    out.append(text + f" (one run, {load}: ratios within it, not absolute times, carry over).")
    return out


def _quality_sentence(df: pd.DataFrame) -> str | None:
    """Best and worst quality of the first quality suite present, at one size and data source, as
    qualities only compare there."""
    for suite in list(_QUALITY_SUITES) + sorted(set(df["suite"]) - set(_QUALITY_SUITES)):
        sub = df[(df["suite"] == suite) & (df["status"] == "ok")]
        metric = quality_metric(sub) if not sub.empty else None
        if not metric:
            continue
        sizes = comparable_sizes(sub, metric)
        if not sizes:
            continue
        at = sub[sub["size"] == sizes[0]]
        at = at[at["data"] == at["data"].iloc[0]]
        values = pd.to_numeric(at[metric], errors="coerce")
        at = at.assign(_v=values).dropna(subset=["_v"]).sort_values("_v", ascending=metric not in HIGHER_IS_BETTER)
        if len(at) < 2:
            continue
        best, worst = at.iloc[0], at.iloc[-1]
        fmt = catalogue.get(metric)
        return (f"Quality ({suite} at {sizes[0]} px, {caption(at, sizes=False)}): best {metric} {fmt.format(best['_v'])} "
                f"with {best['label']}, worst {fmt.format(worst['_v'])} with {worst['label']}.")
    return None


def headline_figure(records: Sequence[dict[str, Any]], budget: float | None = None) -> Figure | None:
    """Memory of each mechanism at the largest size measured: measured bars solid, estimates hatched,
    the machine's memory (and a budget) as vertical lines."""
    import matplotlib.pyplot as plt

    groups = by_device(records)
    records = groups[0][1] if groups else records  # one machine's figures only: the one with most records
    df = to_frame(records)
    if df.empty:
        return None
    mem, size = memory_at_largest(df)
    if size is None or mem.empty:
        return None
    mem = mem.iloc[sorted(range(len(mem)), key=lambda i: order_key(mem["label"].iloc[i]), reverse=True)]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(mem) + 1.4))
    values = mem["bytes"].to_numpy(float) / MEMORY.scale
    for y, (v, (_, r)) in enumerate(zip(values, mem.iterrows())):
        ax.barh(y, v, color=colour(r["mechanism"]), hatch=None if r["measured"] else "//",
                alpha=1.0 if r["measured"] else 0.45, edgecolor="black", linewidth=0.5)
        ax.annotate(f" {catalogue.sig(v)} GiB" + ("" if r["measured"] else f" (est., {r['status']})"), (v, y),
                    va="center", fontsize=8)
    ax.set_yticks(range(len(mem)), mem["label"])
    ax.set_xscale("log")
    ax.set_xlim(values.min() / 3, values.max() * 40)
    for name, total in machine_memory(records):
        ax.axvline(total / MEMORY.scale, color="black", ls=":", lw=1)
        ax.annotate(f"memory of {name} ", (total / MEMORY.scale, 0.99), xycoords=("data", "axes fraction"),
                    fontsize=8, ha="right", va="top", rotation=90)
    if budget:
        ax.axvline(budget / MEMORY.scale, color="#b00020", ls="--", lw=1.2)
        ax.annotate(" budget", (budget / MEMORY.scale, 0.01), xycoords=("data", "axes fraction"), fontsize=8,
                    color="#b00020", ha="right", va="bottom", rotation=90)
    ax.set_xlabel("peak memory (GiB; hatched: estimate of a cell that did not run)")
    ax.set_title(f"Peak memory at {size} px — {mem.attrs.get('caption', '')}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
