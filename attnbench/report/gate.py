"""Performance-regression gate: compare a run with a committed baseline and list what got worse.

What is judged, and how:
- deterministic metrics (FLOPs, estimates, peak memory, quality at a fixed seed): the relative
  change against a tight tolerance (:data:`DEFAULT_TOLERANCES`);
- time: never absolute (shared machines move timings 5-30%), but as the ratio to a reference
  mechanism (``flash``) measured in the same run, same size/mode/device; a ratio beyond tolerance
  is a regression only if, where both runs kept their timing samples, a one-sided Mann-Whitney
  test on the samples scaled by the reference median calls the slowdown significant;
- time across machines (another CPU, device, thread count, torch or CUDA: :mod:`.machine`) is
  not judged unless asked (``cross_machine``): the machine would be judged, not the code;
- a cell ok in the baseline and not ok now is a regression (newly failing); a baseline cell
  missing from the current run is one too, unless ``allow_missing``;
- a gated metric the baseline cell has and the current cell lacks is a regression, even when no
  current record has it at all; a baseline value that is NaN or not a number is reported as an
  ``invalid baseline`` finding (which fails: a broken baseline guards nothing);
- a cell measured under another definition (the runner's procedure or the mechanism's
  algorithm changed: :mod:`attnbench.definition`) is ``not judged``, saying so: its change is the
  definition's, not a regression;
- the kernel path: a cell whose ``backend`` (measure/kernels.py) differs from the baseline's is
  ``backend changed`` (fails: its figures measure another kernel); a baseline cell that records no
  backend (written before records carried one) is unknown, not judged, and a warning says so.
Tolerances come from the metrics catalogue (:data:`attnbench.metrics.DEFAULT_TOLERANCES`), then the suite file's
``[gate.tolerances]``,
then the command line, each overriding the one before.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from ..definition import difference
from ..errors import UserError
from ..metrics import DEFAULT_TOLERANCES, HIGHER_IS_BETTER, NOT_GATED, RESIDENT_TOLERANCE, TIME_RATIO  # noqa: F401  (the catalogue)
from .frame import is_reference, number, reference_values, row_label, to_frame
from .frame import match_cells

DEFAULT_ALPHA = 0.05
@dataclass(frozen=True)
class Finding:
    """One line of the gate's verdict."""

    kind: str  # regression | newly failing | missing | invalid baseline | backend changed | improvement | new cell | not judged
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
        return self.kind in ("regression", "newly failing", "missing", "invalid baseline", "backend changed")


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


@dataclass
class _Judging:
    """What judging one pair of cells needs: both frames, the tolerances and references per suite,
    what is not judged (invalid baseline values, cells measured on other machines), the verdict so far."""

    base: pd.DataFrame
    cur: pd.DataFrame
    result: GateResult
    tolerances: dict[str, dict[str, float]]
    reference: Callable[[str], str]
    alpha: Callable[[str], float]
    invalid: set[tuple[str, str]]
    base_ref: pd.Series
    cur_ref: pd.Series
    other_machine: set[int]
    cross_machine: bool
    allow_missing: bool
    extra: list[str]
    backend_unknown: int = 0
    time_unjudged: set[str] = field(default_factory=set)

    def cell_name(self, row: pd.Series) -> str:
        return f"{row['suite']}: {row_label(row, self.extra)} {int(row['size'])}px {row['mode']}"

    def add(self, finding: Finding) -> None:
        self.result.findings.append(finding)


def _suite_tolerances(suites: list[str], settings: dict[str, dict[str, Any]],
                      tolerances: Mapping[str, float] | None) -> dict[str, dict[str, float]]:
    """The catalogue's tolerances, then each suite file's, then the command line's."""
    out = {}
    for s in suites:
        tol = dict(DEFAULT_TOLERANCES)
        tol.update({k: float(v) for k, v in (settings[s].get("tolerances") or {}).items()})
        tol.update(tolerances or {})
        out[s] = tol
    return out


def _reference_times(df: pd.DataFrame, suites: list[str], reference: Callable[[str], str]) -> pd.Series:
    """Per row, the reference mechanism's time measured in the same run (NaN where none)."""
    out = pd.Series(np.nan, index=df.index)
    for s in suites:
        mask = df["suite"] == s
        if mask.any():
            out[mask] = reference_values(df[mask], reference(s), "time_median_s")
    return out


def _judging(current: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], tolerances: Mapping[str, float] | None,
             reference: str | None, alpha: float | None, allow_missing: bool, cross_machine: bool) -> _Judging:
    if not baseline:
        raise UserError("the baseline holds no records")
    if not current:
        raise UserError("the current run holds no records")
    base, cur = to_frame(baseline), to_frame(current)
    result = GateResult()
    suites = sorted(set(base["suite"]))
    settings = {s: suite_gate_settings(s) for s in suites}
    tol_by_suite = _suite_tolerances(suites, settings, tolerances)
    result.tolerances = tol_by_suite[suites[0]] if len(suites) == 1 else dict(DEFAULT_TOLERANCES, **(tolerances or {}))
    # (key, metric) of gated baseline values present but not finite numbers: reported, then not compared
    invalid = _invalid_baseline_values(baseline, result, lambda suite, metric: metric == "time_median_s" or (
        metric in tol_by_suite.get(suite, {}) and metric not in NOT_GATED and metric != TIME_RATIO))

    def ref_of(suite: str) -> str:
        return reference or str(settings[suite].get("reference", "flash"))

    def alpha_of(suite: str) -> float:
        return float(alpha if alpha is not None else settings[suite].get("alpha", DEFAULT_ALPHA))

    return _Judging(base, cur, result, tol_by_suite, ref_of, alpha_of, invalid,
                    _reference_times(base, suites, ref_of), _reference_times(cur, suites, ref_of),
                    _other_machine(base, cur, result, cross_machine), cross_machine, allow_missing,
                    [f for f in ("channels", "batch", "device", "dtype") if base[f].astype(str).nunique() > 1])


def gate(current: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]], *,
         tolerances: Mapping[str, float] | None = None, reference: str | None = None,
         alpha: float | None = None, allow_missing: bool = False, cross_machine: bool = False) -> GateResult:
    """Judge ``current`` against ``baseline``; ``tolerances`` (from the command line) override the suites'.

    Times of cells measured on machines that time differently (:mod:`.machine`) are not judged
    unless ``cross_machine``; their memory, FLOPs and quality are. Cells measured under another
    definition (:mod:`attnbench.definition`) are not compared at all: their change is the definition's.
    """
    judging = _judging(current, baseline, tolerances, reference, alpha, allow_missing, cross_machine)
    pairs = match_cells(judging.base, judging.cur)
    for i, j in pairs:
        _judge_pair(judging, i, j)
    _closing_warnings(judging)
    _new_cells(judging, {j for _, j in pairs if j is not None})
    return judging.result


def _judge_pair(judging: _Judging, i: int, j: int | None) -> None:
    """Status, definition and backend of one baseline cell against its current cell, then its figures."""
    b = judging.base.loc[i]
    cell = judging.cell_name(b)
    if j is None:
        judging.add(Finding("missing" if not judging.allow_missing else "not judged", cell, "status",
                            b["status"], "absent", detail="cell of the baseline not in the current run"))
        return
    c = judging.cur.loc[j]
    judging.result.compared_cells += 1
    changed_definition = difference(json.loads(b["definition"]), json.loads(c["definition"]))
    if changed_definition:
        judging.add(Finding("not judged", cell, "definition", detail=f"measured under another definition "
                            f"({changed_definition}): refresh the baseline"))
        return
    if b["status"] != "ok":
        if c["status"] == "ok":
            judging.add(Finding("improvement", cell, "status", b["status"], "ok"))
        return
    if c["status"] != "ok":
        reason = str(c["reason"]).strip().splitlines()[0] if str(c["reason"]).strip() else ""
        judging.add(Finding("newly failing", cell, "status", "ok", c["status"], detail=reason))
        return
    changed = backend_change(b, c, cell)
    if changed == "unknown":
        judging.backend_unknown += 1
    elif changed is not None:
        judging.add(changed)
    _judge_metrics(judging, b, c, cell)
    _judge_time(judging, i, j, cell)


def _judge_metrics(judging: _Judging, b: pd.Series, c: pd.Series, cell: str) -> None:
    """Deterministic metrics: the relative change against the suite's tolerance."""
    tol = judging.tolerances[b["suite"]]
    for metric in sorted(set(b.index)):  # not only the current frame's columns: absent now counts
        if metric in NOT_GATED or metric not in tol or metric == TIME_RATIO or (b["key"], metric) in judging.invalid:
            continue
        bv, cv = number(b[metric]), number(c.get(metric))
        if bv is None:
            continue
        if cv is None:
            judging.add(Finding("regression", cell, metric, bv, "not measured",
                                detail="measured in the baseline, absent now"))
            continue
        source = _figure_source(metric, b, c)
        limit = max(tol[metric], RESIDENT_TOLERANCE) if metric == "peak_memory_bytes" and "memory outside torch" in source else tol[metric]
        _judge_change(judging, cell, metric, bv, cv, limit, source)
        if limit != tol[metric]:  # the exact figure beside the resident one, at the peak's own tolerance
            ba, ca = number(b.get("peak_memory_allocator_bytes")), number(c.get("peak_memory_allocator_bytes"))
            if ba is not None and ca is not None:
                _judge_change(judging, cell, "peak_memory_allocator_bytes", ba, ca, tol[metric], "")


def _judge_change(judging: _Judging, cell: str, metric: str, bv: float, cv: float, limit: float, detail: str) -> None:
    change = _relative_change(bv, cv, metric in HIGHER_IS_BETTER)
    if change > limit:
        judging.add(Finding("regression", cell, metric, bv, cv, change, limit, detail=detail))
    elif change < -limit:
        judging.add(Finding("improvement", cell, metric, bv, cv, change, limit, detail=detail))


def _judge_time(judging: _Judging, i: int, j: int, cell: str) -> None:
    """Time as the ratio to the reference of the same run; a slowdown beyond tolerance fails only
    when the samples call it significant."""
    b, c = judging.base.loc[i], judging.cur.loc[j]
    bt, ct = number(b.get("time_median_s")), number(c.get("time_median_s"))
    ref = judging.reference(b["suite"])
    if bt is None or (b["key"], "time_median_s") in judging.invalid:
        return
    if ct is None:
        judging.add(Finding("regression", cell, "time_median_s", bt, "not measured",
                            detail="measured in the baseline, absent now"))
        return
    if is_reference(judging.base.loc[[i]], ref).iloc[0]:
        return
    metric = f"{TIME_RATIO} (vs {ref})"
    if i in judging.other_machine and not judging.cross_machine:
        judging.add(Finding("not judged", cell, metric, detail="measured on another machine (--cross-machine judges it)"))
        return
    br, cr = judging.base_ref.loc[i], judging.cur_ref.loc[j]
    if not (br > 0 and cr > 0):
        judging.time_unjudged.add(b["suite"])
        return
    b_ratio, c_ratio = bt / br, ct / cr
    change = _relative_change(b_ratio, c_ratio, False)
    limit = judging.tolerances[b["suite"]][TIME_RATIO]
    b_samples, c_samples = _scaled_samples(b, br), _scaled_samples(c, cr)
    p = None
    if b_samples is not None and c_samples is not None:
        p = float(mannwhitneyu(c_samples, b_samples, alternative="greater").pvalue)
    if change > limit and (p is None or p < judging.alpha(b["suite"])):
        judging.add(Finding("regression", cell, metric, b_ratio, c_ratio, change, limit, p))
    elif change > limit:
        judging.add(Finding("not judged", cell, metric, b_ratio, c_ratio, change, limit, p,
                            detail=f"slower but not significant (p={p:.3g})"))
    elif change < -limit:
        judging.add(Finding("improvement", cell, metric, b_ratio, c_ratio, change, limit, p))


def _closing_warnings(judging: _Judging) -> None:
    unknown = judging.backend_unknown
    if unknown:
        judging.result.warnings.append(
            f"{unknown} baseline cell{'s' if unknown > 1 else ''} record no backend (written before records "
            "carried one): which kernel ran there is unknown, not judged; refresh the baseline to gate it")
    for s in sorted(judging.time_unjudged):
        judging.result.warnings.append(f"{s}: some times not judged: no ok {judging.reference(s)} cell measured "
                                       "alongside them in both runs (time is only gated as a ratio to the reference)")


def _new_cells(judging: _Judging, matched: set[int]) -> None:
    base_keys = set(judging.base["key"])
    for j in judging.cur.index:
        if j not in matched and judging.cur.at[j, "key"] not in base_keys:
            c = judging.cur.loc[j]
            judging.add(Finding("new cell", judging.cell_name(c), "status", None, c["status"], detail="not in the baseline"))


def _other_machine(base: pd.DataFrame, cur: pd.DataFrame, result: GateResult, cross_machine: bool) -> set[int]:
    """Baseline rows whose current cell was measured on a machine that times differently; warns
    once, naming what differs (CPU, device, threads, torch, CUDA) and what is still compared."""
    import json

    from .machine import describe_differences, differences

    found: set[int] = set()
    pairs = []
    for i, j in match_cells(base, cur):
        if j is None:
            continue
        a, b = json.loads(base.at[i, "timing_env"]), json.loads(cur.at[j, "timing_env"])
        if differences(a, b):
            found.add(i)
            pairs.append((a, b))
    if found:
        what = describe_differences(pairs)
        if cross_machine:
            result.warnings.append(f"baseline and current measured on different machines ({what}); "
                                   "--cross-machine: times judged anyway, as a ratio to the reference")
        else:
            result.warnings.append(f"baseline and current measured on different machines ({what}): time not "
                                   f"judged for {len(found)} cell(s) (memory, FLOPs and quality still compared); "
                                   "--cross-machine judges it as a ratio to the reference anyway")
    return found


def backend_change(b: pd.Series, c: pd.Series, cell: str) -> Finding | str | None:
    """A ``backend changed`` finding when both cells name their backend and the names differ;
    ``"unknown"`` when the baseline names none (records older than the field); else None."""
    base_backend, cur_backend = b.get("backend"), c.get("backend")
    if not isinstance(base_backend, str):
        return "unknown"
    if not isinstance(cur_backend, str):
        return Finding("backend changed", cell, "backend", base_backend, "not recorded",
                       detail="the baseline names its backend, the current cell does not")
    if cur_backend != base_backend:
        return Finding("backend changed", cell, "backend", base_backend, cur_backend,
                       detail="another kernel path ran: its figures do not measure the baseline's kernel")
    return None


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
              "backend changed": "bold red",
              "improvement": "green",
              "new cell": "cyan", "not judged": "yellow"}
    for _, row in df.iterrows():
        cells = [Text(str(row[c]), style=styles.get(row["verdict"], "") if c == "verdict" else "")
                 for c in df.columns if not (c == "p" and not (df["p"] != "").any())]
        table.add_row(*cells)
    return table
