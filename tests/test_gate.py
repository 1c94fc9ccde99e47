"""Gate: passes on an unchanged run, fails (exit 1) on an injected regression of each metric kind."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.report.gate import gate, parse_tolerances
from helpers import write_records
from attnbench.errors import UserError

from _report_records import colorization_records, memory_records, speed_records, with_metric


def baseline() -> list[dict]:
    return memory_records() + speed_records() + colorization_records()


def write(records: list[dict], folder: Path) -> Path:
    for rec in records:
        write_records([rec], folder / f"{rec['suite']}.jsonl")
    return folder


def test_unchanged_run_passes_even_with_fresh_timing_noise() -> None:
    current = memory_records() + speed_records(seed=7) + colorization_records()
    result = gate(current, baseline())
    assert result.passed, result.offenders
    assert result.compared_cells == len(baseline())


def test_whole_machine_slower_is_not_a_regression() -> None:
    """Time is judged relative to flash measured in the same run: a uniformly slower machine passes."""
    current = memory_records() + speed_records(slow={"flash": 3, "full": 3, "psal-3": 3}, seed=3) + colorization_records()
    assert gate(current, baseline()).passed


@pytest.mark.parametrize("mechanism, metric, factor", [
    ("psal-3", "peak_memory_bytes", 1.2),      # memory
    ("psal-aggreg", "flops", 1.1),             # FLOPs
    ("local", "estimated_memory_bytes", 1.5),  # a plugin's estimate changed
    ("psal-3", "l2", 1.5),                     # quality (lower is better)
    ("psal-3", "psnr", 0.9),                   # quality (higher is better)
])
def test_deterministic_regressions_fail(mechanism: str, metric: str, factor: float) -> None:
    result = gate(with_metric(baseline(), mechanism, metric, factor), baseline())
    assert not result.passed
    assert {f.metric for f in result.offenders} == {metric}
    assert all(f.cell.split(": ")[1].startswith(mechanism) for f in result.offenders)


def test_time_ratio_regression_fails_with_significance() -> None:
    current = memory_records() + speed_records(slow={"psal-3": 2.5}, seed=5) + colorization_records()
    result = gate(current, baseline())
    assert not result.passed
    offender = result.offenders[0]
    assert offender.metric == "time_ratio (vs flash)" and offender.p_value < 0.05
    assert offender.current / offender.baseline == pytest.approx(2.5, rel=0.1)


def test_time_ratio_beyond_tolerance_but_not_significant_is_not_judged() -> None:
    base = speed_records()
    current = copy.deepcopy(base)
    for rec in current:  # psal-3's median moves 3x but its samples barely overlap-test (3 samples only)
        if rec["mechanism"] == "psal-3":
            m = rec["metrics"]
            m["time_samples_s"] = [m["time_median_s"] * f for f in (0.5, 3.0, 0.6)]
            m["time_median_s"] *= 3.0
    result = gate(current, base)
    assert result.passed
    assert any(f.kind == "not judged" and f.metric.startswith("time_ratio") for f in result.findings)


def test_newly_failing_and_missing_cells_fail() -> None:
    current = baseline()
    for rec in current:
        if rec["mechanism"] == "psal-3" and rec["suite"] == "memory" and rec["size"] == 128:
            rec.update(status="oom", reason="out of memory")
    dropped = [r for r in current if not (r["mechanism"] == "local" and r["suite"] == "colorization")]
    result = gate(dropped, baseline())
    kinds = {f.kind for f in result.offenders}
    assert kinds == {"newly failing", "missing"}
    assert gate(dropped, baseline(), allow_missing=True).offenders[0].kind == "newly failing"


def test_tolerances_from_command_line_override_suite_file() -> None:
    current = with_metric(baseline(), "psal-3", "peak_memory_bytes", 1.2)
    assert gate(current, baseline(), tolerances={"peak_memory_bytes": 0.25}).passed
    assert parse_tolerances(["flops=0.01,time_ratio=10%"]) == {"flops": 0.01, "time_ratio": 0.1}
    with pytest.raises(UserError):
        parse_tolerances(["flops"])


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(baseline(), tmp_path / "baselines")
    same = write(baseline(), tmp_path / "same")
    worse = write(with_metric(baseline(), "psal-3", "peak_memory_bytes", 1.3), tmp_path / "worse")
    assert main(["gate", str(same), "--baseline", str(base)]) == 0
    assert "gate passed" in capsys.readouterr().out
    assert main(["gate", str(worse / "memory.jsonl"), str(worse / "speed.jsonl"), str(worse / "colorization.jsonl"),
                 "--baseline", str(base)]) == 1
    out = capsys.readouterr().out
    assert "peak_memory_bytes" in out and "psal-3" in out and "+30.0% worse" in out
    assert main(["gate", str(worse), "--baseline", str(base), "--tolerance", "peak_memory_bytes=40%"]) == 0


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    current = write(baseline(), tmp_path / "current")
    old = tmp_path / "old" / "memory.jsonl"
    old.parent.mkdir()
    old.write_text("".join(json.dumps(dict(r, schema=0)) + "\n" for r in memory_records()[:2]))
    assert main(["gate", str(current), "--baseline", str(old.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "baseline" in err and "schema version 0" in err
    assert main(["gate", str(current), "--baseline", str(tmp_path / "nope")]) == 2
    assert main(["gate", str(current), "--baseline", str(current), "--tolerance", "flops=abc"]) == 2
    assert "bad tolerance" in capsys.readouterr().err


def _on_machine(records: list[dict], **env: object) -> list[dict]:
    out = copy.deepcopy(records)
    for rec in out:
        rec["env"].update(env)
    return out


@pytest.mark.parametrize("env", [{"cpu": "Other CPU"}, {"threads": 16}, {"device_name": "NVIDIA H100"},
                                 {"torch": "2.14.0"}])
def test_times_across_machines_are_not_judged_unless_asked(env: dict) -> None:
    """A slower time on another machine is the machine's; memory still fails, named per field."""
    base = _on_machine(baseline(), threads=2, device_name="Test CPU")
    current = _on_machine(with_metric(memory_records() + speed_records(slow={"psal-3": 2.5}, seed=5)
                                      + colorization_records(), "psal-3", "peak_memory_bytes", 1.2), **{"threads": 2, "device_name": "Test CPU", **env})
    result = gate(current, base)
    assert {f.metric for f in result.offenders} == {"peak_memory_bytes"}  # deterministic: still compared
    field = {"cpu": "CPU", "threads": "threads", "device_name": "device", "torch": "torch"}[next(iter(env))]
    (warning,) = [w for w in result.warnings if "different machines" in w]
    assert f"{field} " in warning and "time not judged" in warning and "--cross-machine" in warning, warning
    assert any(f.kind == "not judged" and "another machine" in f.detail for f in result.findings)
    judged = gate(current, base, cross_machine=True)
    assert {f.metric for f in judged.offenders} == {"peak_memory_bytes", "time_ratio (vs flash)"}


def test_cli_cross_machine_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(_on_machine(speed_records(), cpu="Xeon A"), tmp_path / "base")
    slow = write(_on_machine(speed_records(slow={"psal-3": 2.5}, seed=5), cpu="EPYC B"), tmp_path / "cur")
    assert main(["gate", str(slow), "--baseline", str(base)]) == 0
    out = capsys.readouterr().out
    assert "different machines (CPU Xeon A (baseline) vs EPYC B (current))" in out and "time not judged" in out
    assert main(["gate", str(slow), "--baseline", str(base), "--cross-machine"]) == 1
def _with_backend(records: list[dict], backends: dict[str, str]) -> list[dict]:
    out = copy.deepcopy(records)
    for rec in out:
        if rec["mechanism"] in backends:
            rec["metrics"]["backend"] = backends[rec["mechanism"]]
    return out


def test_a_cell_whose_backend_changed_fails_the_gate() -> None:
    base = _with_backend(baseline(), {"flash": "sdpa-flash", "psal-3": "native"})
    assert gate(_with_backend(baseline(), {"flash": "sdpa-flash", "psal-3": "native"}), base).passed
    result = gate(_with_backend(baseline(), {"flash": "sdpa-math", "psal-3": "native"}), base)
    assert not result.passed
    assert {f.kind for f in result.offenders} == {"backend changed"}
    assert all(f.baseline == "sdpa-flash" and f.current == "sdpa-math" for f in result.offenders)
    assert {f.cell.split(": ")[1].split()[0] for f in result.offenders} == {"flash"}


def test_a_baseline_without_backends_is_unknown_not_a_failure_and_says_so() -> None:
    result = gate(_with_backend(baseline(), {"flash": "sdpa-math", "psal-3": "native"}), baseline())
    assert result.passed
    assert any("record no backend" in w and "unknown" in w for w in result.warnings)
    # the other way round: the baseline names its backend and the current cell records none
    lost = gate(baseline(), _with_backend(baseline(), {"psal-3": "native"}))
    assert {(f.kind, f.current) for f in lost.offenders} == {("backend changed", "not recorded")}


def _under_definition(records: list[dict], name: str, **definition: int) -> list[dict]:
    out = copy.deepcopy(records)
    for rec in out:
        if rec["mechanism"] == name:
            rec["definition"] = {**rec.get("definition", {"runner": 1, "mechanism": 1}), **definition}
    return out


def test_a_cell_measured_under_another_definition_is_not_called_a_regression() -> None:
    """PSAL's search changed (algorithm_version 2): its bigger, slower figures are the new search's."""
    worse = with_metric(memory_records() + speed_records(slow={"psal-3": 2.5}, seed=5) + colorization_records(),
                        "psal-3", "peak_memory_bytes", 1.5)
    assert not gate(worse, baseline()).passed  # the same change under the same definition fails
    result = gate(_under_definition(worse, "psal-3", mechanism=2), baseline())
    assert result.passed, [f for f in result.offenders]
    notes = [f for f in result.findings if f.metric == "definition"]
    assert notes and all(f.kind == "not judged" and "another definition (mechanism 1 -> 2)" in f.detail for f in notes)


def _resident(records: list[dict], allocator_factor: float = 1.0, resident_factor: float = 1.0) -> list[dict]:
    """psal-3's memory cells with a resident headline (memory outside torch) above their allocator figure."""
    out = copy.deepcopy(records)
    for rec in out:
        m = rec["metrics"]
        if rec["mechanism"] == "psal-3" and "peak_memory_bytes" in m:
            allocator = m["peak_memory_bytes"] * allocator_factor
            m.update(peak_memory_allocator_bytes=allocator, peak_memory_source="rss",
                     peak_memory_bytes=m["peak_memory_bytes"] * 1.2 * resident_factor)
    return out


def test_a_resident_peak_gets_the_resident_tolerance_and_its_allocator_figure_the_peaks() -> None:
    from attnbench.metrics import RESIDENT_TOLERANCE

    base = _resident(baseline())
    # the resident figure moved by less than its tolerance (more than the peak's 5 %): not a regression
    assert gate(_resident(baseline(), resident_factor=1 + RESIDENT_TOLERANCE * 0.8), base).passed
    # ...beyond it: a regression of the headline
    result = gate(_resident(baseline(), resident_factor=1 + RESIDENT_TOLERANCE * 1.5), base)
    assert {f.metric for f in result.offenders} == {"peak_memory_bytes"}
    # torch's own figure grew by 10 % under an unchanged resident headline: the exact figure fails at 5 %
    result = gate(_resident(baseline(), allocator_factor=1.10), base)
    assert {f.metric for f in result.offenders} == {"peak_memory_allocator_bytes"}
    # a cell that flips from its allocator figure to a resident one 12 % larger passes
    flipped = _resident(baseline(), resident_factor=1.12 / 1.2)
    assert gate(flipped, baseline()).passed
