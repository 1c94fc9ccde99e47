"""Report: paper-shaped tables from synthetic records, every status shown, files written, bad input exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.report import paper
from attnbench.report.analysis import fit_exponent, pareto_front
from attnbench.report.style import colour
from attnbench.report.tables import render_rich, suite_table, suite_tables
from helpers import write_records

from _report_records import (colorization_records, custom_suite_records, memory_records, speed_records,
                             substitution_records)


def write(records: list[dict], folder: Path) -> Path:
    for rec in records:
        write_records([rec], folder / f"{rec['suite']}.jsonl")
    return folder


def test_memory_table_is_table1_shaped_and_keeps_every_status() -> None:
    df = suite_table(memory_records(), "memory")
    assert list(df.columns[:2]) == ["64 px", "64 px paper (GB)"]
    assert "64-1024 px, C=16, p=7, fwd, fwd+bwd, float32, cpu" in df.attrs["title"]
    assert "psal-3 fwd" in df.index and "full fwd+bwd" in df.index
    assert df.loc["full fwd", "512 px"].startswith("infeasible (est. ")
    assert df.loc["full fwd", "512 px paper (GB)"] == "250.04"
    assert df.loc["psal-aggreg fwd", "64 px paper (GB)"] == "0.05"
    assert df.loc["reformer fwd", "64 px"].startswith("unavailable: reformer-pytorch")
    assert df.loc["linear fwd", "1024 px"] == "timeout"
    assert df.loc["performer fwd", "1024 px"] == "error"
    assert any("RuntimeError: boom" in n for n in df.attrs["notes"])
    measured = df.loc["psal-3 fwd", "64 px"]
    assert "(est. " in measured and measured.split()[0].replace(".", "").isdigit()
    # full ran at two sizes only (64, 128 px): no exponent from two points; psal-3 ran at four
    assert df.loc["full fwd", "scaling"] == "—" and df.loc["psal-3 fwd", "scaling"] == "n^1.00"


def test_memory_suite_also_gets_a_flops_table_with_the_short_papers_figure() -> None:
    tables = suite_tables(memory_records(), "memory")
    assert [t.attrs["name"] for t in tables] == ["memory", "flops"]
    assert tables[1].loc["psal-3 fwd", "256 px paper"] == "36"


def test_speed_table_gives_ratio_to_reference_from_the_same_run() -> None:
    df = suite_table(speed_records(slow={"psal-3": 1.0}), "speed", reference="flash")
    assert df.loc["flash fwd", "32 px / flash"] == "×1.00"
    ratio = float(df.loc["psal-3 fwd", "64 px / flash"].lstrip("×"))
    assert ratio == pytest.approx(2.67, rel=0.05)
    assert "IQR" in df.loc["psal-3 fwd", "64 px"]


def test_task_tables_show_quality_cost_and_paper_beside() -> None:
    df = suite_table(colorization_records(), "colorization")
    assert df.loc["psal-3", "l2 paper"] == "0.00228"
    assert df.loc["full[similarity=dot]", "l2 paper"] == "0.0064"
    assert df.loc["reformer", "status"] == "oom" and df.loc["reformer", "l2"] == "—"
    assert {"GFLOP", "memory GiB", "psnr"} <= set(df.columns)
    sub = suite_table(substitution_records(), "substitution")
    assert sub.loc["psal-1 (trained with full)", "l2"] == "0.00260"
    assert sub.loc["psal-1 (trained with full)", "l2 paper"] == "0.0024"
    assert sub.loc["psal-1 (trained with full)", "GFLOP paper"] == "30"
    assert sub.loc["full (trained with full)", "GFLOP paper"] == "1173"
    assert sub.loc["local (trained with local)", "status"] == "timeout"
    # PSAL-1 swapped into the network trained with PSAL-1 is that network: one row, not two
    assert [name for name in sub.index if name.startswith("psal-1 (trained with psal-1)")] == ["psal-1 (trained with psal-1)"]
    assert "train_steps" not in sub.columns and "weights_cached" not in sub.columns


def test_unknown_suite_renders_every_metric() -> None:
    df = suite_table(custom_suite_records(), "denoise")
    assert {"mse", "widgets"} <= set(df.columns) and "thirdparty-attn" in df.index
    assert render_rich(df).row_count == 2


def test_paper_lookup_respects_parameters_and_size() -> None:
    assert paper.lookup("reconstruction", "l2", "full", {"stride": 5}, 256).value == 0.0031
    assert paper.lookup("reconstruction", "l2", "full", {"stride": 2}, 256) is None
    assert paper.lookup("memory", "memory_gb", "local", {"window": 20}, 64) is None
    assert paper.lookup("inpainting", "psnr", "psal-3", {}, 256).value == 16.6


def test_fit_and_pareto() -> None:
    n = [64**2, 128**2, 256**2]
    assert fit_exponent(n, [x**2 for x in n]) == pytest.approx(2.0)
    assert fit_exponent([4096], [1.0]) is None
    assert fit_exponent(n[:2], [1.0, 4.0]) is None  # two points are no fit
    assert pareto_front([1, 2, 3, 4], [5, 3, 4, 1]) == [0, 1, 3]
    assert colour("psal-3") == colour("psal-3[iterations=5]") != colour("full")


def test_report_writes_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(memory_records() + speed_records(sizes=(32, 64, 128)) + colorization_records()
                + substitution_records() + custom_suite_records(), tmp_path / "runs")
    out = tmp_path / "report"
    assert main(["report", str(src), "--out", str(out)]) == 0
    assert "Table 1" in capsys.readouterr().out
    for name in ("memory.csv", "memory-flops.csv", "speed.csv", "colorization.csv", "denoise.csv", "records.csv",
                 "report.md", "report.html", "plots/memory-memory.png", "plots/memory-memory.svg",
                 "plots/speed-time.png", "plots/colorization-quality.png", "plots/substitution-quality.png", "plots/memory-flops.svg"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "infeasible (est." in page and "testbox" in page
    md = (out / "report.md").read_text()
    assert "![memory memory](plots/memory-memory.png)" in md and "| psal-3 fwd " in md


def test_report_rejects_corrupt_input_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"schema": 1}\nnot json\n{"also": "bad"}\n')
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    src = write(custom_suite_records(), tmp_path / "ok")
    assert main(["report", str(src), "--format", "pdf"]) == 2
    assert "valid: rich" in capsys.readouterr().err


# --- one metrics catalogue; honest captions, units, plots, crossover ---

def test_catalogue_declares_each_metric_once_and_formats_in_one_unit_family() -> None:
    from attnbench import metrics
    from attnbench.report import gate as gate_module
    from attnbench.report.analysis import HIGHER_IS_BETTER

    assert gate_module.DEFAULT_TOLERANCES is metrics.DEFAULT_TOLERANCES and HIGHER_IS_BETTER is metrics.HIGHER_IS_BETTER
    assert metrics.get("peak_memory_bytes").estimate == "estimated_memory_bytes"
    line = metrics.summary_line({"peak_memory_bytes": 2**30, "estimated_memory_bytes": 2**31, "flops": 2.2e10,
                                 "time_median_s": 0.0543, "l2": 0.00729})
    assert line == "1.00 GiB (est. 2.00 GiB), 22.0 GFLOP, 54.3 ms, l2 0.00729"
    assert metrics.summary_line({"estimated_memory_bytes": 2.6e11}) == "est. 242 GiB"  # GiB, never GB
    assert metrics.parse_bytes("4GiB") == 4 * 2**30 and metrics.parse_bytes("500MB") == 5e8
    with pytest.raises(ValueError):
        metrics.parse_bytes("four")


def test_gate_reads_tolerances_from_the_suite_object() -> None:
    from attnbench.report.gate import suite_gate_settings
    from attnbench.suites import load

    assert suite_gate_settings("speed") == load("speed").gate and suite_gate_settings("no-such-suite") == {}


def test_captions_follow_the_grid_run_and_paper_figures_need_the_papers_settings() -> None:
    custom = [dict(r, channels=64, patch_size=3) for r in memory_records(sizes=(64, 128, 256))]
    df = suite_table(custom, "memory")
    assert not any("paper" in c for c in df.columns)
    assert "C=64, p=3" in df.attrs["title"] and "Table 1" not in df.attrs["title"]
    own = [dict(r, options={**r["options"], "data": "/home/me/my-photos"}) for r in colorization_records()]
    table = suite_table(own, "colorization")
    assert not any("paper" in c for c in table.columns) and "folder my-photos" in table.attrs["title"]
    # the paper's inpainting % are fractions here, as we measure them
    assert paper.lookup("inpainting", "l2", "full", {}, 256).text == "0.036"


def test_runs_on_different_data_never_share_a_row() -> None:
    base = colorization_records()[:2]
    other = [dict(r, key=r["key"] + "x", options={**r["options"], "photo": "rocket"}) for r in base]
    df = suite_table(base + other, "colorization")
    assert {"full on embedded", "full on photo rocket"} <= set(df.index)
    assert not any(name.endswith("'") for name in df.index)


def test_each_row_shows_the_parameters_it_ran_with() -> None:
    recs = colorization_records()
    for r in recs:
        if r["mechanism"] == "psal-3":
            r["metrics"]["resolved_params"] = {"k": 3, "iterations": 5, "patch_size": 7, "backend": "native"}
    df = suite_table(recs, "colorization")
    assert df.loc["psal-3", "params"] == "iterations=5, k=3" and df.loc["full[similarity=dot]", "params"] == "similarity=dot"


def test_crossover_is_interpolated_from_the_measured_curves() -> None:
    from attnbench.report.analysis import crossover
    from attnbench.report.tables import crossover_table

    kind, size = crossover([64, 128, 256], [2.0, 1.5, 0.5], [1.0, 1.0, 1.0])
    assert kind == "at" and 128 < size < 256
    assert crossover([64, 128], [0.5, 0.4], [1, 1]) == ("below", 64.0)
    assert crossover([64, 128], [2, 3], [1, 1]) == ("never", 128.0)
    table = crossover_table(memory_records(), "flash")
    row = next(name for name in table.index if name.startswith("full — memory (fwd"))
    assert table.loc[row, "less memory"].startswith(">")  # full never needs less than flash
    psal = next(name for name in table.index if name.startswith("psal-3 — memory (fwd"))
    assert table.loc[psal, "less memory"] == "≤ 64 px"


def test_plots_give_a_mechanism_one_look_and_legends_no_presets() -> None:
    import matplotlib.pyplot as plt

    from attnbench.report.plots import MEMORY, comparable_sizes, scaling_plot
    from attnbench.report.style import marker
    from attnbench.report.frame import to_frame

    known = ["full", "flash", "local", "linear", "performer", "reformer", "psal-1", "psal-3", "psal-aggreg", "knn-exact"]
    assert len({colour(m) for m in known}) == len(known) and len({marker(m) for m in known}) == len(known)
    assert colour("flash") == colour("flash[foo=1]") and marker("full") != marker("full[stride=2]")
    recs = memory_records()
    for k, r in enumerate(recs):  # two presets with different options in one plot
        r.update(preset="ci" if k % 2 else "table1", options={"metrics": ["memory"]} if k % 2 else {})
    fig = scaling_plot(to_frame(recs), MEMORY, "memory", budget=4 * 2**30)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts and not any("ci" in t.split() or "table1" in t for t in texts)
    assert any("budget 4.00 GiB" in t.get_text() for ax in fig.axes for t in ax.texts)
    plt.close(fig)
    df = to_frame(colorization_records() + [dict(colorization_records()[0], key="lone", size=512)])
    assert comparable_sizes(df[df["status"] == "ok"], "l2") == [256]  # not 512, where one mechanism ran


def test_examples_are_saved_only_when_a_run_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from attnbench import context
    from attnbench.cells import CellSpec
    from attnbench.tasks.examples import save_examples

    spec = CellSpec(suite="reconstruction", runner="x:y", mechanism="full", params={"stride": 2}, size=32)
    image = np.zeros((32, 32, 3), np.float32)
    monkeypatch.setattr(context, "_current", context.RunContext())
    assert save_examples(spec, image, {"target": image}) == []
    monkeypatch.setattr(context, "_current", context.RunContext(examples_dir=str(tmp_path / "ex")))
    written = save_examples(spec, image, {"target": image})
    assert sorted(p.name for p in written) == ["full[stride=2]-32.png", "target-32.png"]


def test_report_rejects_a_bad_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(memory_records(), tmp_path / "runs")
    assert main(["report", str(src), "--budget", "lots"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cost_plots_never_mix_devices() -> None:
    """CPU and GPU records of one suite get separate plots (and each its own machine's memory line)."""
    from pathlib import Path

    from attnbench.report.plots import suite_plots
    from attnbench.schema import read

    root = Path(__file__).resolve().parents[1] / "results" / "published"
    records = read(root / "memory-table1.jsonl") + read(root / "gpu-h200" / "memory-table1-cuda.jsonl")
    figures = suite_plots(records, "memory")
    assert {"memory", "memory-cuda"} <= set(figures)
    legend_cpu = [t.get_text() for t in figures["memory"].legends[0].get_texts()]
    legend_gpu = [t.get_text() for t in figures["memory-cuda"].legends[0].get_texts()]
    assert not any("cuda" in t for t in legend_cpu) and not any("cpu" in t for t in legend_gpu)


def _with_load(records: list[dict], peak: dict[str, float], cpus: int = 2) -> list[dict]:
    """Records as measured with a 1-minute load average of ``peak[mechanism]`` (others 0.5) on ``cpus``."""
    import copy

    out = copy.deepcopy(records)
    for rec in out:
        load = peak.get(rec["mechanism"], 0.5)
        rec["load"] = {"loadavg_1m_start": load, "loadavg_1m_end": load / 2, "steal_pct": 0.0, "cpus": cpus}
    return out


def test_a_time_measured_under_load_is_marked_and_never_quoted_in_the_headline() -> None:
    from attnbench.report.summary import sentences

    quiet = speed_records()
    # psal-3 is the fastest at 64 px; measured loaded, it must not be named fastest
    loaded = _with_load(speed_records(slow={"psal-3": 0.01}), {"psal-3": 15.0})
    df = suite_table(loaded, "speed")
    assert df.loc["psal-3 fwd", "64 px"].endswith("[load 15.0/2]") and "[load" not in df.loc["full fwd", "64 px"]
    assert any(n.startswith("[load L/N]") for n in df.attrs["notes"])
    time_lines = [s for s in sentences(loaded) if s.startswith("Time at")]
    assert time_lines and "psal-3" not in time_lines[0] and "load average at most 0.5 on 2 CPUs" in time_lines[0]
    assert any("load average above the core count" in s and "not quoted" in s for s in sentences(loaded))
    # records written before the load was recorded: quoted, and said to have no load on record
    (old_line,) = [s for s in sentences(quiet) if s.startswith("Time at")]
    assert "load not recorded" in old_line
    assert any(n.startswith("load not recorded for") for n in suite_table(quiet, "speed").attrs["notes"])


def test_the_speed_table_shows_achieved_rates_and_the_kernels_that_ran() -> None:
    import copy

    records = copy.deepcopy(speed_records())
    for rec in records:
        m = rec["metrics"]
        m.update(achieved_flops_per_s=m["flops"] / m["time_median_s"], achieved_flops_pct=12.5,
                 achieved_bytes_per_s=3e9, achieved_bandwidth_pct=30.0,
                 backend="sdpa-flash" if rec["mechanism"] == "flash" else "torch",
                 kernels=[{"name": "aten::bmm", "self_time_us": 90.0, "share": 0.9, "calls": 2},
                          {"name": "aten::copy_", "self_time_us": 10.0, "share": 0.1, "calls": 4}])
    speed, kernels = suite_tables(records, "speed")
    assert speed.loc["flash fwd", "backend"] == "sdpa-flash" and speed.loc["full fwd", "backend"] == "torch"
    assert "(12 %)" in speed.loc["full fwd", "64 px achieved"] and "3.00 GB/s (30 %)" in speed.loc["full fwd", "64 px achieved"]
    assert kernels.attrs["name"] == "kernels" and kernels.loc["full fwd", "size"] == "64 px"
    assert kernels.loc["full fwd", "top 3 ops by self time"] == "aten::bmm 90 %, aten::copy_ 10 %"
    # published records carry none of it: the tables stay as they were
    assert [t.attrs["name"] for t in suite_tables(speed_records(), "speed")] == ["speed"]
    assert "backend" not in suite_table(speed_records(), "speed").columns


def test_presets_at_other_settings_get_their_own_figures_and_headline() -> None:
    # p = 5 (peers) and p = 7 (table1) measure different problems: never one curve, one legend, or
    # one bar chart; presets that differ only in options (ci, table1) share their figures
    import copy

    import matplotlib.pyplot as plt

    from attnbench.report.plots import suite_plots
    from attnbench.report.summary import headline_figure, sentences

    table1 = memory_records()
    for r in table1:
        r["preset"] = "table1"
    ci = copy.deepcopy([r for r in memory_records((64, 128)) if r["mechanism"] in ("full", "flash")])
    for r in ci:
        r["preset"] = "ci"
        r["key"] += "-ci"
    peers = copy.deepcopy([r for r in memory_records() if r["mechanism"] in ("flash", "psal-3", "local")])
    for r in peers:
        r.update(preset="peers", patch_size=5, key=r["key"] + "-p5")
    figures = suite_plots(table1 + ci + peers, "memory")
    assert {"memory-table1-ci", "memory-peers", "flops-table1-ci", "flops-peers"} <= set(figures) and "memory" not in figures
    legend = [t.get_text() for t in figures["memory-peers"].legends[0].get_texts()]
    assert "psal-3" in " ".join(legend) and not any("full" in t or "p=" in t for t in legend)
    (flash,) = [t for t in legend if t.startswith("flash")]  # one entry per mechanism, both panels' fits
    assert " fwd, " in flash and " fwd+bwd)" in flash, flash
    assert "p=5" in figures["memory-peers"].texts[0].get_text() and "(peers)" in figures["memory-peers"].texts[0].get_text()
    assert list(suite_plots(table1 + ci, "memory"))[:2] == ["memory", "flops"]  # one setting: plain names
    fig = headline_figure(table1 + peers)
    title = fig.axes[0].get_title()
    assert "p=7" in title and "table1 preset" in title and "p=5" not in title  # the setting with more mechanisms
    (memory_line,) = [s for s in sentences(table1 + peers) if s.startswith("Memory at")]
    assert "table1 preset" in memory_line
    for f in [*figures.values(), fig]:
        plt.close(f)
