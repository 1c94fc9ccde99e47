"""Compare: two runs side by side with B/A ratios per cell, written to files; always exit 0."""
from __future__ import annotations

from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.report.compare import compare
from helpers import write_records

from _report_records import memory_records, speed_records


def test_ratios_per_cell_and_one_sided_cells() -> None:
    a = speed_records()
    b = speed_records(slow={"psal-3": 2.0})[:-1]  # B lacks psal-3 at 64 px
    df = compare(a, b)
    assert df.loc["speed: psal-3 32px fwd", "time B/A"].startswith("×2.00 (p=")
    # the same samples on both sides: a ratio of 1 within noise, not printed as a change
    assert df.loc["speed: flash 32px fwd", "time B/A"].startswith("within noise (×1.00, p=1")
    assert df.loc["speed: psal-3 64px fwd", "B status"] == "absent"
    assert df.loc["speed: psal-3 64px fwd", "time B/A"] == "—"


def test_joins_on_identity_when_keys_differ() -> None:
    a = memory_records()
    b = [dict(r, key="other-" + r["key"]) for r in memory_records()]
    df = compare(a, b)
    assert len(df) == len(a) and (df["B status"] != "absent").all()


def test_cli_writes_files_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, recs in (("a", speed_records()), ("b", speed_records(slow={"full": 1.5}))):
        for r in recs:
            write_records([r], tmp_path / name / "speed.jsonl")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    assert "×1.5" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "compare.csv").read_text().count("\n") == 7
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "nonsense"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_time_ratios_within_the_iqr_are_flagged_as_noise_without_samples() -> None:
    a = speed_records()
    b = speed_records(slow={"full": 1.01})
    for rec in a + b:
        rec["metrics"].pop("time_samples_s")
        rec["metrics"]["time_iqr_s"] = rec["metrics"]["time_median_s"] * 0.1
    df = compare(a, b)
    assert df.loc["speed: full 32px fwd", "time B/A"] == "within noise (×1.01, IQRs overlap)"
    c = speed_records(slow={"full": 2.0})
    for rec in c:
        rec["metrics"].pop("time_samples_s")
        rec["metrics"]["time_iqr_s"] = rec["metrics"]["time_median_s"] * 0.1
    assert compare(a, c).loc["speed: full 32px fwd", "time B/A"] == "×2.00"


def test_time_ratios_across_machines_are_marked_and_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = speed_records(), speed_records(slow={"full": 1.5})
    for rec in a:
        rec["env"].update(threads=2)
    for rec in b:
        rec["env"].update(threads=16)
    df = compare(a, b)
    assert df.loc["speed: full 32px fwd", "time B/A"].endswith("[other machine]")
    (warning,) = df.attrs["warnings"]
    assert "threads 2 (A) vs 16 (B)" in warning and "compare the machines" in warning
    for name, recs in (("a", a), ("b", b)):
        for r in recs:
            write_records([r], tmp_path / name / "speed.jsonl")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "warning: A and B measured on different machines (threads 2 (A) vs 16 (B))" in capsys.readouterr().out
    assert compare(a, a).attrs["warnings"] == []


def test_cells_measured_under_another_definition_are_marked() -> None:
    changed = [dict(r, definition={"runner": 2, "mechanism": 1}) if r["mechanism"] == "psal-3" else r
               for r in speed_records(seed=5)]
    df = compare(speed_records(), changed)
    psal = [c for c in df.index if "psal-3" in c]
    assert psal and all("[other definition]" in df.loc[c, "time B/A"] for c in psal)
    assert any("another definition" in w and "runner 1 -> 2" in w for w in df.attrs["warnings"])
