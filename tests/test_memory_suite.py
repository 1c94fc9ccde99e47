"""The memory and speed suites end to end through the CLI, on tiny inputs."""
from __future__ import annotations

from pathlib import Path

import pytest

from attnbench import schema
from attnbench.cli import main
from attnbench.suites import load


def test_memory_suite_measures_memory_and_flops_beside_estimates(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    assert main(["run", "memory", "--mechanisms", "full,flash", "--sizes", "16", "--mode", "both",
                 "--out", str(out), "--no-table"]) == 0
    records = schema.read(out)
    assert {(r["mechanism"], r["mode"]) for r in records} == {("full", "fwd"), ("full", "fwd+bwd"), ("flash", "fwd"), ("flash", "fwd+bwd")}
    for r in records:
        m = r["metrics"]
        assert r["status"] == "ok", r["reason"]
        assert m["peak_memory_bytes"] > 0 and m["estimated_memory_bytes"] > 0
        assert m["flops"] > 0 and m["estimated_flops"] > 0
        assert isinstance(m["uncounted_ops"], dict)
        assert r["channels"] == 16 and r["patch_size"] == 7 and r["batch"] == 1
        assert m["kernels"] and m["backend"] == {"full": "torch", "flash": "sdpa-flash"}[r["mechanism"]]
        assert r["load"]["cpus"] >= 1 and r["load"]["loadavg_1m_start"] is not None
    fwd = {r["mechanism"]: r["metrics"]["peak_memory_bytes"] for r in records if r["mode"] == "fwd"}
    bwd = {r["mechanism"]: r["metrics"]["peak_memory_bytes"] for r in records if r["mode"] == "fwd+bwd"}
    assert all(bwd[m] > fwd[m] for m in fwd)  # training keeps activations


def test_cells_that_cannot_fit_are_infeasible_with_their_estimate(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    assert main(["run", "memory", "--mechanisms", "full", "--sizes", "512", "--out", str(out), "--no-table"]) == 0
    (rec,) = schema.read(out)
    assert rec["status"] == "infeasible"
    assert rec["metrics"]["estimated_memory_bytes"] > 100e9  # the paper: 250 GB
    assert "GiB" in rec["reason"] and "peak_memory_bytes" not in rec["metrics"]  # one unit family: GiB


def test_speed_suite_records_median_and_iqr(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    assert main(["run", "speed", "--mechanisms", "flash,full", "--sizes", "16", "--out", str(out), "--no-table"]) == 0
    for r in schema.read(out):
        m = r["metrics"]
        assert r["status"] == "ok", r["reason"]
        assert m["time_median_s"] > 0 and m["time_iqr_s"] >= 0 and m["time_repeats"] >= 3
        assert len(m["time_samples_s"]) >= 3
        assert r["calibration"]["bytes_per_s"] > 0 and r["calibration"]["flops_per_s"] > 0
        assert m["achieved_flops_pct"] > 0 and m["achieved_bandwidth_pct"] > 0 and m["kernels"]


@pytest.mark.parametrize("name", ["memory", "speed"])
def test_shipped_suites_expand_their_presets(name: str) -> None:
    suite = load(name)
    for preset in suite.preset_names():
        cells = suite.cells(preset)
        assert cells and len({c.key for c in cells}) == len(cells)


def test_memory_suite_default_is_table_1() -> None:
    cells = load("memory").cells()
    assert sorted({c.size for c in cells}) == [64, 128, 256, 512]
    assert {c.channels for c in cells} == {16} and {c.patch_size for c in cells} == {7}
    assert {"full", "flash", "local", "linear", "performer", "reformer", "psal-3", "psal-aggreg"} <= {c.mechanism for c in cells}
