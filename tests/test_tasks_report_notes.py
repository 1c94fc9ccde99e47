"""Trained-task figures in the report: the spread over seeds and a failed convergence are shown."""
from __future__ import annotations

from typing import Any

from attnbench.report.tables import suite_table


def record(mechanism: str, l2_seeds: list[float], converged: bool) -> dict[str, Any]:
    mean = sum(l2_seeds) / len(l2_seeds)
    std = (sum((v - mean) ** 2 for v in l2_seeds) / max(1, len(l2_seeds) - 1)) ** 0.5
    return {"schema": 1, "suite": "colorization", "preset": "quick", "key": mechanism, "mechanism": mechanism,
            "params": {}, "size": 32, "channels": 3, "patch_size": 7, "batch": 4, "mode": "fwd", "device": "cpu",
            "dtype": "float32", "seed": 0, "options": {}, "status": "ok", "reason": "", "env": {},
            "metrics": {"l2": mean, "l2_seeds": l2_seeds, "l2_std": std, "converged": converged,
                        "flops": 1e9, "peak_memory_bytes": 1e6}}


def test_l2_shows_spread_and_non_convergence() -> None:
    table = suite_table([record("full", [0.004, 0.005, 0.006], True), record("linear", [0.007], False)],
                        "colorization")
    full = table.loc["full", "l2"]
    linear = table.loc["linear", "l2"]
    assert "±" in full and "not converged" not in full
    assert "±" not in linear and "(not converged)" in linear


def test_baselines_are_stated_once_and_rows_that_do_not_beat_them_are_marked() -> None:
    full, linear = record("full", [0.003, 0.0031, 0.0032], True), record("linear", [0.007, 0.0071, 0.0072], False)
    for rec, beats in ((full, True), (linear, False)):
        rec["metrics"].update({"no_attention_l2": 0.0176, "no_attention_l2_std": 0.0004, "zero_motion_l2": 0.0058,
                               "zero_motion_l2_std": 0.0001, "beats_baselines": beats})
    table = suite_table([full, linear], "colorization")
    assert "baseline" not in table.loc["full", "l2"]
    assert table.loc["linear", "l2"].endswith("(not converged; not below both baselines)")
    notes = [n for n in table.attrs["notes"] if n.startswith("baselines")]
    assert len(notes) == 1 and "no-attention 0.0176" in notes[0] and "zero-motion 0.0058" in notes[0]
