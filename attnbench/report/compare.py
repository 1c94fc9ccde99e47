"""Two sets of results side by side (two runs, two machines): per cell, each metric and the ratio B/A.

Cells are joined on their key, falling back to the identity fields (mechanism, parameters, size,
shape, mode, device, dtype) when keys differ (:func:`attnbench.report.frame.match_cells`, as the
gate); a cell present on one side only is listed as such. Time ratios are flagged when they are
within noise: a two-sided Mann-Whitney test on the timing samples where both sides kept them,
else overlapping interquartile ranges; such a ratio is no change and is not printed as one. Time
ratios of cells measured on machines that time differently (:mod:`.machine`) are marked, and
the table's ``warnings`` say what differs: they compare the machines, not the code.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from .. import metrics as catalogue
from ..errors import UserError
from ..metrics import QUALITY_METRICS
from .frame import match_cells, number, row_label, to_frame
from .machine import describe_differences, differences
from .style import sig

#: metrics shown by default, in this order, when either side has them
DEFAULT_METRICS: tuple[str, ...] = ("peak_memory_bytes", "flops", "time_median_s") + QUALITY_METRICS
#: a time ratio whose samples differ with p at or above this is reported as noise
ALPHA = 0.05


def time_noise(a: pd.Series, b: pd.Series) -> tuple[bool, float | None]:
    """(within noise?, p-value or None) for the time of one cell measured twice.

    With timing samples on both sides (3 or more each): a two-sided Mann-Whitney test; without them:
    whether the intervals median ± IQR/2 overlap. Unknown spread (a single timing): not noise.
    """
    sa, sb = a.get("time_samples_s"), b.get("time_samples_s")
    if isinstance(sa, (list, tuple)) and isinstance(sb, (list, tuple)) and len(sa) >= 3 and len(sb) >= 3:
        p = float(mannwhitneyu(np.asarray(sb, float), np.asarray(sa, float), alternative="two-sided").pvalue)
        return p >= ALPHA, p
    ma, mb = number(a.get("time_median_s")), number(b.get("time_median_s"))
    ia, ib = number(a.get("time_iqr_s")), number(b.get("time_iqr_s"))
    if None in (ma, mb, ia, ib):
        return False, None
    return bool(ma - ia / 2 <= mb + ib / 2 and mb - ib / 2 <= ma + ia / 2), None


def compare(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
            metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """A table with one row per cell: status on each side, then per metric A, B and B/A."""
    if not a or not b:
        raise UserError("compare needs records on both sides")
    fa, fb = to_frame(a), to_frame(b)
    chosen = _chosen_metrics(fa, fb, metrics)
    pairs = match_cells(fa, fb)
    matched_b = {j for _, j in pairs if j is not None}
    rows = []
    machines: list[tuple[dict[str, str], dict[str, str]]] = []
    definitions: list[str] = []
    for i, j in pairs + [(None, j) for j in fb.index if j not in matched_b]:
        ra = fa.loc[i] if i is not None else None
        rb = fb.loc[j] if j is not None else None
        ref = ra if ra is not None else rb
        row: dict[str, Any] = {"cell": f"{ref['suite']}: {row_label(ref, [])} {int(ref['size'])}px {ref['mode']}",
                               "A status": ra["status"] if ra is not None else "absent",
                               "B status": rb["status"] if rb is not None else "absent"}
        apart = _machines_apart(ra, rb)
        if apart:
            machines.append(apart)
        other_definition = _definitions_apart(ra, rb)
        if other_definition:
            definitions.append(f"{row['cell']} ({other_definition})")
        for m in chosen:
            row.update(_metric_cells(catalogue.get(m), ra, rb, bool(apart), bool(other_definition)))
        rows.append(row)
    df = pd.DataFrame(rows).set_index("cell")
    names = [catalogue.get(m).label for m in chosen]
    empty = [m for m in names if (df[f"{m} A"] == "—").all() and (df[f"{m} B"] == "—").all()]
    df = df.drop(columns=[f"{m} {s}" for m in empty for s in ("A", "B", "B/A")])
    _add_notes(df, machines, definitions)
    return df


def _chosen_metrics(fa: pd.DataFrame, fb: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    """The metrics to compare, those present on either side; naming one that neither side holds is a
    UserError that lists what is there, as a typo would otherwise give an empty table."""
    present = set(fa.columns) | set(fb.columns)
    chosen = [m for m in (metrics or DEFAULT_METRICS) if m in present]
    unknown = [m for m in (metrics or []) if m not in present]
    if unknown:
        raise UserError(f"no metric {', '.join(unknown)} in either side; present: "
                        f"{', '.join(sorted(c for c in present if c in catalogue.CATALOGUE))}")
    return chosen


def _metric_cells(metric: catalogue.Metric, ra: pd.Series | None, rb: pd.Series | None, apart: bool,
                  other_definition: bool) -> dict[str, str]:
    """One metric's A, B and B/A columns of a row. A time ratio says whether it is within the noise
    and is marked when the machines differ, any ratio when the definitions do: those ratios do not
    measure the code."""
    va = ra.get(metric.name) if ra is not None and ra["status"] == "ok" else None
    vb = rb.get(metric.name) if rb is not None and rb["status"] == "ok" else None
    out = {f"{metric.label} A": metric.format(va), f"{metric.label} B": metric.format(vb)}
    x, y = number(va), number(vb)
    if x is None or y is None or x == 0:
        out[f"{metric.label} B/A"] = "—"
        return out
    text = f"×{sig(y / x)}"
    if metric.kind == "time":
        noise, p = time_noise(ra, rb)
        where = f"p={p:.2g}" if p is not None else "IQRs overlap"
        text = f"within noise ({text}, {where})" if noise else (f"{text} (p={p:.2g})" if p is not None else text)
        text = f"{text} [other machine]" if apart else text
    out[f"{metric.label} B/A"] = f"{text} [other definition]" if other_definition else text
    return out


def _add_notes(df: pd.DataFrame, machines: list[tuple[dict[str, str], dict[str, str]]],
               definitions: list[str]) -> None:
    """The table's notes and warnings (``df.attrs``): how noise is judged, and which ratios compare
    machines or definitions rather than code."""
    df.attrs["notes"] = [f"time ratios are flagged \"within noise\" when a two-sided Mann-Whitney test on the timing "
                         f"samples gives p >= {ALPHA} (or, without samples, when median ± IQR/2 overlap); "
                         "other metrics are deterministic for a fixed seed"]
    df.attrs["warnings"] = [f"A and B measured on different machines ({describe_differences(machines, ('A', 'B'))}): "
                            f"time ratios marked [other machine] ({len(machines)} cells) compare the machines, not "
                            "the code; memory and FLOPs still compare"] if machines else []
    if definitions:
        df.attrs["warnings"].append(f"{len(definitions)} cells measured under another definition (ratios marked "
                                    "[other definition] measure the change of definition, not a regression): "
                                    + "; ".join(definitions[:3]) + (" ..." if len(definitions) > 3 else ""))


def _definitions_apart(a: pd.Series | None, b: pd.Series | None) -> str:
    """What changed between the definitions two sides of a cell were measured under ("" if none)."""
    import json

    from ..definition import difference

    if a is None or b is None:
        return ""
    return difference(json.loads(a["definition"]), json.loads(b["definition"]))


def _machines_apart(a: pd.Series | None, b: pd.Series | None) -> tuple[dict[str, str], dict[str, str]] | None:
    """The two timing identities of a cell when both sides have it and their machines time differently."""
    import json

    if a is None or b is None:
        return None
    ia, ib = json.loads(a["timing_env"]), json.loads(b["timing_env"])
    return (ia, ib) if differences(ia, ib) else None
