"""Performance-regression gate: compare a run with a committed baseline and list what got worse.

What is judged, and how:
- deterministic metrics (FLOPs, estimates, peak memory, quality at a fixed seed): the relative
  change against a tight tolerance (:data:`DEFAULT_TOLERANCES`);
- time: never absolute (shared machines move timings 5-30%), but as the ratio to a reference
  mechanism (``flash``) measured in the same run, same size/mode/device; a ratio beyond tolerance
  is a regression only if, where both runs kept their timing samples, a one-sided Mann-Whitney
  test on the samples scaled by the reference median calls the slowdown significant;
- a cell ok in the baseline and not ok now is a regression (newly failing); a baseline cell
  missing from the current run is one too, unless ``allow_missing``;
- a gated metric the baseline cell has and the current cell lacks is a regression, even when no
  current record has it at all; a baseline value that is NaN or not a number is reported as an
  ``invalid baseline`` finding (which fails: a broken baseline guards nothing).
Tolerances come from the metrics catalogue (:data:`attnbench.metrics.DEFAULT_TOLERANCES`), then the suite file's
``[gate.tolerances]``,
then the command line, each overriding the one before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from ..errors import UserError
from ..metrics import DEFAULT_TOLERANCES, HIGHER_IS_BETTER, NOT_GATED, TIME_RATIO  # noqa: F401  (the catalogue)
from .frame import LOOSE_IDENTITY, is_reference, number, reference_values, row_label, to_frame  # noqa: F401
from .frame import match_cells

DEFAULT_ALPHA = 0.05
@dataclass(frozen=True)
class Finding:
    """One line of the gate's verdict."""

    kind: str  # regression | newly failing | missing | invalid baseline | improvement | new cell | not judged
    cell: str
    metric: str = ""
    baseline: float | str | None = None
    current: float | str | None = None
    change: float | None = None
    tolerance: float | None = None
    p_value: float | None = None
    detail: str = ""

    @property
    def fails(self) -> bool:
        return self.kind in ("regression", "newly failing", "missing", "invalid baseline")


@dataclass
class GateResult:
    findings: list[Finding] = field(default_factory=list)
    compared_cells: int = 0
    warnings: list[str] = field(default_factory=list)
    tolerances: dict[str, float] = field(default_factory=dict)

    @property
    def offenders(self) -> list[Finding]:
        return [f for f in self.findings if f.fails]

    @property
    def passed(self) -> bool:
        return not self.offenders


def parse_tolerances(items: Sequence[str]) -> dict[str, float]:
    """``["flops=0.01", "time_ratio=10%"]`` (or comma-separated) -> ``{"flops": 0.01, "time_ratio": 0.1}``."""
    out: dict[str, float] = {}
    for item in (part.strip() for raw in items for part in raw.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            number = float(value.strip().rstrip("%")) / (100 if value.strip().endswith("%") else 1)
            if number < 0 or math.isnan(number):
                raise ValueError
        except ValueError:
            raise UserError(f"bad tolerance {item!r}: write METRIC=FRACTION or METRIC=PERCENT%, "
                            f"e.g. peak_memory_bytes=0.05 or {TIME_RATIO}=10%") from None
        out[name.strip()] = number
    return out


def suite_gate_settings(suite: str) -> dict[str, Any]:
    """The ``[gate]`` table of the suite's file (``Suite.gate``; empty when the suite is not installed)."""
    from ..suites import load, suite_names

    if suite not in suite_names():
        return {}
    gate = load(suite).gate
    if not isinstance(gate, dict):
        raise UserError(f"suite file {suite}.toml: [gate] must be a table")
    return gate


def _relative_change(baseline: float, current: float, higher_is_better: bool) -> float:
    """How much worse ``current`` is than ``baseline`` as a fraction (negative: better)."""
    if baseline == current:
        return 0.0
    if baseline == 0:
        worse = current < 0 if higher_is_better else current > 0
        return math.inf if worse else -math.inf
    change = (current - baseline) / abs(baseline)
    return -change if higher_is_better else change


def _scaled_samples(row: pd.Series, ref_median: float) -> np.ndarray | None:
    samples = row.get("time_samples_s")
    if not isinstance(samples, (list, tuple)) or len(samples) < 3 or not ref_median > 0:
        return None
    return np.asarray(samples, dtype=float) / ref_median


def gate(current: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], *,
         tolerances: Mapping[str, float] | None = None, reference: str | None = None,
         alpha: float | None = None, allow_missing: bool = False) -> GateResult:
    """Judge ``current`` against ``baseline``; ``tolerances`` (from the command line) override the suites'."""
    if not baseline:
        raise UserError("the baseline holds no records")
    if not current:
        raise UserError("the current run holds no records")
    base, cur = to_frame(baseline), to_frame(current)
    result = GateResult()
    suites = sorted(set(base["suite"]))
    settings = {s: suite_gate_settings(s) for s in suites}
    tol_by_suite: dict[str, dict[str, float]] = {}
    for s in suites:
        tol = dict(DEFAULT_TOLERANCES)
        tol.update({k: float(v) for k, v in (settings[s].get("tolerances") or {}).items()})
        tol.update(tolerances or {})
        tol_by_suite[s] = tol
    result.tolerances = tol_by_suite[suites[0]] if len(suites) == 1 else dict(DEFAULT_TOLERANCES, **(tolerances or {}))

    # (key, metric) of gated baseline values present but not finite numbers: reported, then not compared
    invalid = _invalid_baseline_values(baseline, result, lambda suite, metric: metric == "time_median_s" or (
        metric in tol_by_suite.get(suite, {}) and metric not in NOT_GATED and metric != TIME_RATIO))

    def ref_of(suite: str) -> str:
        return reference or str(settings[suite].get("reference", "flash"))

    def alpha_of(suite: str) -> float:
        return float(alpha if alpha is not None else settings[suite].get("alpha", DEFAULT_ALPHA))

    # the reference's time in the same run, per row, on each side
    base_ref = pd.Series(np.nan, index=base.index)
    cur_ref = pd.Series(np.nan, index=cur.index)
    for s in suites:
        ref = ref_of(s)
        bmask, cmask = base["suite"] == s, cur["suite"] == s
        base_ref[bmask] = reference_values(base[bmask], ref, "time_median_s")
        if cmask.any():
            cur_ref[cmask] = reference_values(cur[cmask], ref, "time_median_s")

    machines_b, machines_c = set(base["machine"]), set(cur["machine"])
    if machines_b != machines_c:
        result.warnings.append(f"baseline measured on {', '.join(sorted(machines_b))}, current on "
                               f"{', '.join(sorted(machines_c))}: memory and FLOPs still compare; time is judged "
                               f"as a ratio to the reference")

    extra = [f for f in ("channels", "batch", "device", "dtype") if base[f].astype(str).nunique() > 1]
    time_unjudged: set[str] = set()
    for i, j in match_cells(base, cur):
        b = base.loc[i]
        cell = f"{b['suite']}: {row_label(b, extra)} {int(b['size'])}px {b['mode']}"
        if j is None:
            result.findings.append(Finding("missing" if not allow_missing else "not judged", cell, "status",
                                           b["status"], "absent", detail="cell of the baseline not in the current run"))
            continue
        c = cur.loc[j]
        result.compared_cells += 1
        if b["status"] != "ok":
            if c["status"] == "ok":
                result.findings.append(Finding("improvement", cell, "status", b["status"], "ok"))
            continue
        if c["status"] != "ok":
            reason = str(c["reason"]).strip().splitlines()[0] if str(c["reason"]).strip() else ""
            result.findings.append(Finding("newly failing", cell, "status", "ok", c["status"], detail=reason))
            continue
        tol = tol_by_suite[b["suite"]]
        for metric in sorted(set(b.index)):  # not only the current frame's columns: absent now counts
            if metric in NOT_GATED or metric not in tol or metric == TIME_RATIO or (b["key"], metric) in invalid:
                continue
            bv, cv = number(b[metric]), number(c.get(metric))
            if bv is None:
                continue
            if cv is None:
                result.findings.append(Finding("regression", cell, metric, bv, "not measured",
                                               detail="measured in the baseline, absent now"))
                continue
            change = _relative_change(bv, cv, metric in HIGHER_IS_BETTER)
            if change > tol[metric]:
                result.findings.append(Finding("regression", cell, metric, bv, cv, change, tol[metric],
                                               detail=_figure_source(metric, b, c)))
            elif change < -tol[metric]:
                result.findings.append(Finding("improvement", cell, metric, bv, cv, change, tol[metric],
                                               detail=_figure_source(metric, b, c)))
        bt, ct = number(b.get("time_median_s")), number(c.get("time_median_s"))
        ref = ref_of(b["suite"])
        if bt is None or (b["key"], "time_median_s") in invalid:
            continue
        if ct is None:
            result.findings.append(Finding("regression", cell, "time_median_s", bt, "not measured",
                                           detail="measured in the baseline, absent now"))
            continue
        if is_reference(base.loc[[i]], ref).iloc[0]:
            continue
        br, cr = base_ref.loc[i], cur_ref.loc[j]
        if not (br > 0 and cr > 0):
            time_unjudged.add(b["suite"])
            continue
        b_ratio, c_ratio = bt / br, ct / cr
        change = _relative_change(b_ratio, c_ratio, False)
        limit = tol[TIME_RATIO]
        b_samples, c_samples = _scaled_samples(b, br), _scaled_samples(c, cr)
        p = None
        if b_samples is not None and c_samples is not None:
            p = float(mannwhitneyu(c_samples, b_samples, alternative="greater").pvalue)
        if change > limit and (p is None or p < alpha_of(b["suite"])):
            result.findings.append(Finding("regression", cell, f"{TIME_RATIO} (vs {ref})", b_ratio, c_ratio,
                                           change, limit, p))
        elif change > limit:
            result.findings.append(Finding("not judged", cell, f"{TIME_RATIO} (vs {ref})", b_ratio, c_ratio, change,
                                           limit, p, detail=f"slower but not significant (p={p:.3g})"))
        elif change < -limit:
            result.findings.append(Finding("improvement", cell, f"{TIME_RATIO} (vs {ref})", b_ratio, c_ratio,
                                           change, limit, p))
    for s in sorted(time_unjudged):
        result.warnings.append(f"{s}: some times not judged: no ok {ref_of(s)} cell measured alongside them "
                               f"in both runs (time is only gated as a ratio to the reference)")
    base_keys = set(base["key"])
    matched = {j for _, j in match_cells(base, cur) if j is not None}
    for j in cur.index:
        if j not in matched and cur.at[j, "key"] not in base_keys:
            c = cur.loc[j]
            result.findings.append(Finding("new cell", f"{c['suite']}: {row_label(c, extra)} {int(c['size'])}px {c['mode']}",
                                           "status", None, c["status"], detail="not in the baseline"))
    return result


def _invalid_baseline_values(baseline: Sequence[dict[str, Any]], result: GateResult,
                             gated: Callable[[str, str], bool]) -> set[tuple[str, str]]:
    """Report every ok baseline cell's gated metric whose value is NaN, infinite or not a number."""
    from .frame import latest, mechanism_label

    bad: set[tuple[str, str]] = set()
    for rec in latest(baseline):
        if rec.get("status") != "ok":
            continue
        for metric, value in (rec.get("metrics") or {}).items():
            if not gated(rec["suite"], metric):
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                bad.add((rec["key"], metric))
                cell = f"{rec['suite']}: {mechanism_label(rec['mechanism'], rec.get('params'))} {rec['size']}px {rec['mode']}"
                result.findings.append(Finding("invalid baseline", cell, metric, repr(value), None,
                                               detail="baseline value is not a finite number; refresh the baseline"))
    return bad


def _figure_source(metric: str, baseline: pd.Series, current: pd.Series) -> str:
    """Which figure a memory or FLOP value is when it holds what torch did not see (resident or
    device memory outside torch, FLOPs a plugin declared): the gate judges that larger figure."""
    notes = []
    if metric == "peak_memory_bytes":
        for when, row in (("baseline", baseline), ("current", current)):
            source = str(row.get("peak_memory_source") or "allocator")
            if source not in ("allocator", "nan", "None"):
                notes.append(f"{when}: {source} figure (memory outside torch)")
    if metric == "flops":
        for when, row in (("baseline", baseline), ("current", current)):
            if number(row.get("flops_declared")):
                notes.append(f"{when}: includes declared FLOPs")
    return "; ".join(notes)


def _show(value: float | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return f"{value:.4g}"


def _change(change: float | None) -> str:
    if change is None:
        return ""
    if math.isinf(change):
        return "+inf" if change > 0 else "-inf"
    return f"{change * 100:+.1f}% worse" if change > 0 else f"{-change * 100:.1f}% better"


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """Findings as a table: cell, metric, baseline, current, change, tolerance (and why)."""
    rows = [{"verdict": f.kind, "cell": f.cell, "metric": f.metric, "baseline": _show(f.baseline),
             "current": _show(f.current), "change": _change(f.change),
             "tolerance": "" if f.tolerance is None else f"{f.tolerance * 100:.3g}%",
             "p": "" if f.p_value is None else f"{f.p_value:.3g}", "note": f.detail} for f in findings]
    return pd.DataFrame(rows, columns=["verdict", "cell", "metric", "baseline", "current", "change", "tolerance",
                                       "p", "note"])


def render(result: GateResult, show_all: bool = False) -> "Table":
    """A rich table of the offenders (and, with ``show_all``, improvements and notes too)."""
    from rich.table import Table
    from rich.text import Text

    chosen = result.findings if show_all else result.offenders
    df = findings_frame(chosen)
    verdict = "PASSED" if result.passed else f"FAILED: {len(result.offenders)} regression(s)"
    table = Table(title=Text(f"gate {verdict} ({result.compared_cells} cells compared)",
                             style="bold green" if result.passed else "bold red"), title_justify="left")
    for col in df.columns:
        if col == "p" and not (df["p"] != "").any():
            continue
        table.add_column(col, justify="right" if col in ("baseline", "current", "change", "tolerance", "p") else "left")
    styles = {"regression": "red", "newly failing": "bold red", "missing": "red", "invalid baseline": "red",
              "improvement": "green",
              "new cell": "cyan", "not judged": "yellow"}
    for _, row in df.iterrows():
        cells = [Text(str(row[c]), style=styles.get(row["verdict"], "") if c == "verdict" else "")
                 for c in df.columns if not (c == "p" and not (df["p"] != "").any())]
        table.add_row(*cells)
    return table
