"""Two sets of results side by side (two runs, two machines): per cell, each metric and the ratio B/A.

Cells are joined on their key, falling back to the identity fields (mechanism, parameters, size,
shape, mode, device, dtype) when keys differ; a cell present on one side only is listed as such.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ..errors import UserError
from .analysis import QUALITY_METRICS
from .frame import row_label, to_frame
from .gate import _match
from .style import gib, seconds, sig

#: metrics shown by default, in this order, when either side has them
DEFAULT_METRICS: tuple[str, ...] = ("peak_memory_bytes", "flops", "time_median_s") + QUALITY_METRICS
_SHORT = {"peak_memory_bytes": "memory", "estimated_memory_bytes": "est. memory", "flops": "FLOPs",
          "estimated_flops": "est. FLOPs", "time_median_s": "time"}


def _fmt(metric: str, value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "—"
    if x != x:
        return "—"
    if metric.endswith("memory_bytes"):
        return f"{gib(x)} GiB"
    if metric.endswith("flops"):
        return f"{sig(x / 1e9)} GFLOPs"
    if metric.endswith("_s"):
        return seconds(x)
    return sig(x)


def compare(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
            metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """A table with one row per cell: status on each side, then per metric A, B and B/A."""
    if not a or not b:
        raise UserError("compare needs records on both sides")
    fa, fb = to_frame(a), to_frame(b)
    present = set(fa.columns) | set(fb.columns)
    chosen = [m for m in (metrics or DEFAULT_METRICS) if m in present]
    unknown = [m for m in (metrics or []) if m not in present]
    if unknown:
        raise UserError(f"no metric {', '.join(unknown)} in either side; present: "
                        f"{', '.join(sorted(c for c in present if c in DEFAULT_METRICS or c.endswith(('_bytes', '_s'))))}")
    pairs = _match(fa, fb)
    matched_b = {j for _, j in pairs if j is not None}
    rows = []

    def cell_name(r: pd.Series) -> str:
        return f"{r['suite']}: {row_label(r, [])} {int(r['size'])}px {r['mode']}"

    for i, j in pairs + [(None, j) for j in fb.index if j not in matched_b]:
        ra = fa.loc[i] if i is not None else None
        rb = fb.loc[j] if j is not None else None
        ref = ra if ra is not None else rb
        row: dict[str, Any] = {"cell": cell_name(ref),
                               "A status": ra["status"] if ra is not None else "absent",
                               "B status": rb["status"] if rb is not None else "absent"}
        for m in chosen:
            name = _SHORT.get(m, m)
            va = ra.get(m) if ra is not None and ra["status"] == "ok" else None
            vb = rb.get(m) if rb is not None and rb["status"] == "ok" else None
            row[f"{name} A"], row[f"{name} B"] = _fmt(m, va), _fmt(m, vb)
            try:
                ratio = float(vb) / float(va)
                row[f"{name} B/A"] = f"×{sig(ratio)}" if ratio == ratio else "—"
            except (TypeError, ValueError, ZeroDivisionError):
                row[f"{name} B/A"] = "—"
        rows.append(row)
    df = pd.DataFrame(rows).set_index("cell")
    names = [_SHORT.get(m, m) for m in chosen]
    empty = [m for m in names if (df[f"{m} A"] == "—").all() and (df[f"{m} B"] == "—").all()]
    df = df.drop(columns=[f"{m} {s}" for m in empty for s in ("A", "B", "B/A")])
    return df
