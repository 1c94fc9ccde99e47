"""The paper's qualitative findings on trained colorization, checked on a run's own records.

Why: at 32 px and a few hundred steps our figures cannot equal the paper's (256 px DAVIS, 200k
steps); what a user can compare is the ordering. An ordering is claimed only where it exceeds the
spread: a finding holds ("yes") when every seed of the rows the paper ranks lower is below every
seed of the rows it ranks higher, fails ("no") when some pair is ordered the other way with
ranges apart, and is "within spread" otherwise; "not run" when the run lacks a row it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import pandas as pd

from .frame import data_source, latest
from .style import sig

Row = pd.Series
Select = Callable[[Row], bool]

#: the substitution finding's tolerance (paper Table 8: PSAL-1 swapped into Full loses nothing)
SUBSTITUTION_TOLERANCE = 0.10


@dataclass(frozen=True)
class Finding:
    claim: str
    source: str
    verdict: str
    evidence: str


def cells(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell (frame.latest: the last record of a key wins, as in the report), its metrics
    as columns. Not frame.to_frame: that splits a substitution record into two rows, while the
    substitution finding reads the swapped figures beside the trained network's own."""
    return pd.DataFrame([{"mechanism": r["mechanism"], "params": r.get("params") or {}, **r.get("metrics", {})}
                         for r in latest(records)])


def _params(row: Row) -> dict[str, Any]:
    return row["params"] if isinstance(row.get("params"), dict) else {}


def _similarity(row: Row) -> str:
    return str(_params(row).get("similarity", "dot" if row["mechanism"] in ("linear", "performer", "reformer") else "l2"))


def mechanism(name: str, similarity: Optional[str] = None) -> Select:
    """Rows of mechanism ``name`` (any parameters but the similarity, when given)."""
    return lambda row: row["mechanism"] == name and (similarity is None or _similarity(row) == similarity)


def _label(row: Row) -> str:
    return row["mechanism"] + (" (dot)" if row["mechanism"] == "full" and _similarity(row) == "dot" else "")


def _seeds(row: Row, metric: str) -> list[float]:
    seeds = row.get(f"{metric}_seeds")
    return [float(v) for v in seeds] if isinstance(seeds, list) and seeds else [float(row[metric])]


def _describe(row: Row, metric: str) -> str:
    seeds = _seeds(row, metric)
    spread = f" ({sig(min(seeds), 3)}–{sig(max(seeds), 3)})" if len(seeds) > 1 else ""
    flag = " (not converged)" if str(row.get("converged")) == "False" else ""
    return f"{_label(row)} {sig(float(row[metric]), 3)}{spread}{flag}"


def ordering(df: pd.DataFrame, lower: Sequence[Select], higher: Sequence[Select], claim: str, source: str,
             metric: str = "l2") -> Finding:
    """Every row picked by ``lower`` below every row picked by ``higher`` (lower l2 is better)."""
    pick = lambda selects: [row for _, row in df.iterrows() if any(s(row) for s in selects)]  # noqa: E731
    low, high = pick(lower), pick(higher)
    if not low or not high or len(low) < len(lower) or len(high) < len(higher):
        return Finding(claim, source, "not run", "the run lacks a row this needs")
    pairs = [(a, b) for a in low for b in high]
    holds = all(max(_seeds(a, metric)) < min(_seeds(b, metric)) for a, b in pairs)
    reversed_ = any(min(_seeds(a, metric)) > max(_seeds(b, metric)) for a, b in pairs)
    verdict = "yes" if holds else "no" if reversed_ else "within spread"
    evidence = "; ".join(_describe(r, metric) for r in low) + "  vs  " + "; ".join(_describe(r, metric) for r in high)
    return Finding(claim, source, verdict, evidence)


#: the baselines every trained record carries (tasks/networks.BASELINES): label -> l2 field
BASELINE_FIELDS = {"no-attention": "no_attention_l2", "zero-motion": "zero_motion_l2"}


def beats_baselines(df: pd.DataFrame, rows: Sequence[Select], claim: str, source: str) -> Finding:
    """Every seed of every picked row below every seed of both baselines trained beside it."""
    picked = [row for _, row in df.iterrows() if any(s(row) for s in rows)]
    if len(picked) < len(rows) or not all(pd.notna(row.get(m)) for row in picked for m in BASELINE_FIELDS.values()):
        return Finding(claim, source, "not run", "the run lacks a row or its baselines")
    floor = {name: _seeds(picked[0], metric) for name, metric in BASELINE_FIELDS.items()}
    best = min(min(seeds) for seeds in floor.values())
    holds = all(max(_seeds(row, "l2")) < best for row in picked)
    reversed_ = any(min(_seeds(row, "l2")) > min(max(seeds) for seeds in floor.values()) for row in picked)
    verdict = "yes" if holds else "no" if reversed_ else "within spread"
    base = "; ".join(f"{name} {sig(sum(v) / len(v), 3)} ({sig(min(v), 3)}–{sig(max(v), 3)})" for name, v in floor.items())
    evidence = "; ".join(_describe(row, "l2") for row in picked) + "  vs  " + base
    return Finding(claim, source, verdict, evidence)


def colorization_findings(df: pd.DataFrame) -> list[Finding]:
    full_l2, full_dot = mechanism("full", "l2"), mechanism("full", "dot")
    psal1, psal3, aggreg = mechanism("psal-1"), mechanism("psal-3"), mechanism("psal-aggreg")
    l2_based = [full_l2, mechanism("local", "l2"), psal3, aggreg]
    dot_based = [mechanism("linear"), mechanism("performer")]
    return [
        ordering(df, [full_l2], [full_dot], "Full (l2) < Full (dot)", "Table 5"),
        ordering(df, [psal3], [psal1], "PSAL-3 < PSAL-1", "Table 4"),
        ordering(df, [aggreg], [psal1], "PSAL Aggreg. < PSAL-1", "Table 4"),
        ordering(df, l2_based, dot_based, "l2-based (Full, Local, PSAL-3, Aggreg.) < dot-based (Linear, Performer)",
                 "Fig. 5"),
        beats_baselines(df, l2_based, "l2-based (Full, Local, PSAL-3, Aggreg.) < no-attention and zero-motion",
                        "what attention buys"),
    ]


def substitution_findings(df: pd.DataFrame) -> list[Finding]:
    claim = f"PSAL-1 swapped into the Full-trained net within {SUBSTITUTION_TOLERANCE:.0%} of Full's l2"
    rows = [row for _, row in df.iterrows() if mechanism("full", "l2")(row) and "substituted_ratio" in row
            and pd.notna(row["substituted_ratio"])]
    if not rows:
        return [Finding(claim, "Table 8", "not run", "the run lacks the Full-trained row")]
    row = rows[0]
    ratios = _seeds(row, "substituted_ratio")
    limit = 1.0 + SUBSTITUTION_TOLERANCE
    verdict = "yes" if max(ratios) <= limit else "no" if min(ratios) > limit else "within spread"
    evidence = (f"own {sig(float(row['l2']), 3)}, swapped {sig(float(row['substituted_l2']), 3)}: ratio "
                f"{sig(float(row['substituted_ratio']), 3)} ({sig(min(ratios), 3)}–{sig(max(ratios), 3)} over seeds)")
    return [Finding(claim, "Table 8", verdict, evidence)]


#: the suites whose records this module judges
CHECKS: dict[str, Callable[[pd.DataFrame], list[Finding]]] = {
    "colorization": colorization_findings, "substitution": substitution_findings}


def findings_table(records: Sequence[dict[str, Any]], suite: str) -> Optional[pd.DataFrame]:
    """The paper's findings for ``suite`` on its ok records, or None when the suite has none."""
    check = CHECKS.get(suite)
    ok = [r for r in records if r.get("suite") == suite and r.get("status") == "ok"]
    if check is None or not ok:
        return None
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in ok:  # a finding is judged within one data source, never across
        by_source.setdefault(data_source(r), []).append(r)
    rows = []
    for source, part in sorted(by_source.items()):
        found = check(cells(part))
        if all(f.verdict == "not run" for f in found):
            continue
        rows += [{"finding": f.claim, "data": source, "paper": f.source, "holds here": f.verdict,
                  "ours: l2 mean (seed range)": f.evidence} for f in found]
    if not rows:
        return None
    out = pd.DataFrame(rows).set_index("finding")
    if len(by_source) == 1:
        out = out.drop(columns="data")
    out.attrs.update(name=f"{suite}-findings", title=f"{suite}: the paper's qualitative findings on this run", settings={},
                     notes=["'yes' only where the seed ranges do not overlap; 'within spread' is no claim either way"])
    return out
