"""The paper's qualitative findings, judged on a run's records only where the seed ranges allow."""
from __future__ import annotations

from typing import Any

from attnbench.report.findings import findings_table


def record(mechanism: str, seeds: list[float], suite: str = "colorization", **extra: Any) -> dict[str, Any]:
    params = extra.pop("params", {})
    return {"suite": suite, "key": f"{mechanism}{params}", "mechanism": mechanism, "params": params, "status": "ok",
            "metrics": {"l2": sum(seeds) / len(seeds), "l2_seeds": seeds, "converged": True, **extra}}


def test_orderings_hold_only_outside_the_spread() -> None:
    records = [record("full", [0.0030, 0.0032]), record("full", [0.0050, 0.0055], params={"similarity": "dot"}),
               record("psal-1", [0.010, 0.012]), record("psal-3", [0.0035, 0.0105]),
               record("psal-aggreg", [0.0020, 0.0025]), record("local", [0.004, 0.0041]),
               record("linear", [0.0030, 0.0031]), record("performer", [0.006, 0.007])]
    table = findings_table(records, "colorization")
    verdicts = dict(zip(table.index, table["holds here"]))
    assert verdicts["Full (l2) < Full (dot)"] == "yes"
    assert verdicts["PSAL-3 < PSAL-1"] == "within spread"  # 0.0105 overlaps PSAL-1's 0.010-0.012
    assert verdicts["PSAL Aggreg. < PSAL-1"] == "yes"
    assert verdicts["l2-based (Full, Local, PSAL-3, Aggreg.) < dot-based (Linear, Performer)"] == "no"  # linear below local


def test_a_missing_row_is_not_run_and_substitution_is_judged_on_the_ratio() -> None:
    assert findings_table([record("full", [0.003, 0.0031])], "colorization") is None  # nothing to judge
    table = findings_table([record("full", [0.003, 0.0031]), record("full", [0.006], params={"similarity": "dot"})],
                           "colorization")
    assert list(table["holds here"]) == ["yes", "not run", "not run", "not run", "not run"]
    sub = findings_table([record("full", [0.003, 0.0031], "substitution", substituted_l2=0.0032,
                                 substituted_ratio=1.05, substituted_ratio_seeds=[1.02, 1.08])], "substitution")
    assert list(sub["holds here"]) == ["yes"]
    far = findings_table([record("full", [0.003], "substitution", substituted_l2=0.0045, substituted_ratio=1.5,
                                 substituted_ratio_seeds=[1.4, 1.6])], "substitution")
    assert list(far["holds here"]) == ["no"]
    assert findings_table([record("full", [0.003])], "memory") is None


def test_findings_are_judged_per_data_source_never_across() -> None:
    embedded = [record("full", [0.0030, 0.0031]), record("full", [0.0050, 0.0051], params={"similarity": "dot"})]
    folder = [record("full", [0.0060, 0.0061]), record("full", [0.0040, 0.0041], params={"similarity": "dot"})]
    for r in folder:
        r["options"] = {"data": "/somewhere/frames"}
        r["key"] += "-folder"
    table = findings_table(embedded + folder, "colorization")
    judged = table[table["holds here"] != "not run"]
    assert sorted(zip(judged["data"], judged["holds here"])) == [("embedded", "yes"), ("folder frames", "no")]


def test_l2_layers_must_beat_both_baselines_on_every_seed() -> None:
    base = {"no_attention_l2": 0.016, "no_attention_l2_seeds": [0.0159, 0.0161],
            "zero_motion_l2": 0.006, "zero_motion_l2_seeds": [0.0059, 0.0061]}
    rows = [record("full", [0.0030, 0.0032], **base), record("local", [0.004, 0.0041], **base),
            record("psal-aggreg", [0.0020, 0.0025], **base)]
    claim = "l2-based (Full, Local, PSAL-3, Aggreg.) < no-attention and zero-motion"

    def verdict(psal3_seeds: list[float]) -> str:
        table = findings_table(rows + [record("psal-3", psal3_seeds, **base)], "colorization")
        return table.loc[claim, "holds here"]

    assert verdict([0.0035, 0.0040]) == "yes"
    assert verdict([0.0035, 0.0060]) == "within spread"  # one seed inside zero-motion's range
    assert verdict([0.0065, 0.0070]) == "no"  # every seed above zero-motion
    dot = record("full", [0.005], params={"similarity": "dot"})
    no_baselines = findings_table(rows + [dot, record("psal-3", [0.003])], "colorization")
    assert no_baselines.loc[claim, "holds here"] == "not run"
