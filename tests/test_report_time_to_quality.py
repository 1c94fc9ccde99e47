"""Search suite time-to-quality: curve points from records, the fastest point within the bar, the report's plot."""
from __future__ import annotations

from attnbench.report.plots import suite_plots
from attnbench.report.time_to_quality import QUALITY_BAR, curve_points, fastest_within, figure
from attnbench.schema import make_record

from _report_records import ENV, spec


def _record(mechanism: str, size: int, swept: str, curve: list[tuple[int, float, float]], status: str = "ok",
            params: dict | None = None) -> dict:
    metrics = {"swept": swept, "time_s": curve[0][1], "mse_ratio": curve[0][2],
               "convergence": [{swept: v, "time_s": t, "mse_ratio": m} for v, t, m in curve]}
    return make_record(spec("search", mechanism, size, params=params or {}), status, "", metrics if status == "ok" else {},
                       ENV)


RECORDS = [
    _record("psal-1", 64, "iterations", [(1, 0.10, 1.30), (5, 0.30, 1.04), (10, 0.60, 1.02)]),
    _record("psal-1", 64, "iterations", [(1, 0.2, 1.2), (5, 0.5, 1.01)], params={"search_k": 4}),
    _record("faiss-knn", 64, "nprobe", [(1, 1.0, 1.10), (4, 1.5, 1.03), (8, 2.0, 1.01)]),
    _record("faiss-knn-hnsw", 64, "ef_search", [(8, 3.0, 1.2)]),  # never within the bar
    _record("psal-1", 128, "iterations", [(5, 9.0, 1.0)], status="error"),  # failed cells carry no curve
]


def test_curve_points_name_each_spec_and_skip_failed_cells() -> None:
    points = curve_points(RECORDS)
    assert set(points["mechanism"]) == {"psal-1", "psal-1[search_k=4]", "faiss-knn", "faiss-knn-hnsw"}
    assert len(points) == 3 + 2 + 3 + 1 and set(points["size"]) == {64}
    assert points[points["mechanism"] == "faiss-knn"]["value"].tolist() == [1, 4, 8]


def test_fastest_within_takes_each_methods_quickest_point_under_the_bar() -> None:
    best = fastest_within(curve_points(RECORDS), QUALITY_BAR)
    got = {row.mechanism: (row.value, row.time_s) for row in best.itertuples()}
    assert got == {"psal-1": (5, 0.30), "psal-1[search_k=4]": (5, 0.5), "faiss-knn": (4, 1.5)}
    assert best["time_s"].is_monotonic_increasing  # fastest first
    assert fastest_within(curve_points(RECORDS), 1.001).empty


def test_report_draws_the_curves_only_for_records_that_have_them() -> None:
    plots = suite_plots(RECORDS, "search")
    assert [name for name in plots if name.startswith("time-to-quality")] == ["time-to-quality-ci"]  # one per preset
    fig = plots["time-to-quality-ci"]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "64 x 64 px"
    assert len(ax.get_lines()) == 4 + 1  # one curve per mechanism, plus the dotted bar
    assert figure(curve_points([])) is None
    plain = [{**r, "metrics": {k: v for k, v in r["metrics"].items() if k != "convergence"}} for r in RECORDS]
    assert not [name for name in suite_plots(plain, "search") if name.startswith("time-to-quality")]
    seeds = [_record("psal-1", 64, "iterations", [(1, 0.1, 1.3), (5, 0.3, 1.0 + s / 100)]) for s in (1, 2)]
    for s, record in zip((1, 2), seeds):
        record["seed"] = s
    labels = [line.get_label() for line in figure(curve_points(seeds)).axes[0].get_lines()]
    assert labels[:2] == ["psal-1 seed 1", "psal-1 seed 2"]  # one curve per seed, not one zigzag
    other_run = [{**r, "preset": "peers"} for r in RECORDS[:1]]
    assert {"time-to-quality-ci", "time-to-quality-peers"} <= set(suite_plots(RECORDS + other_run, "search"))


def test_psal_quality_cli_refuses_missing_or_curveless_records_in_one_line(tmp_path, capsys) -> None:
    import pytest

    from helpers import write_records
    from attnbench_plugins.psal_quality import main

    with pytest.raises(SystemExit) as missing:
        main(["--time-to-quality", str(tmp_path / "nope.jsonl")])
    plain = {**RECORDS[0], "metrics": {"mse_ratio": 1.0}}
    write_records([plain], tmp_path / "plain.jsonl")
    with pytest.raises(SystemExit) as curveless:
        main(["--time-to-quality", str(tmp_path / "plain.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert missing.value.code == 2 and curveless.value.code == 2 and len(err) == 2
    assert "no such results file" in err[0] and "--preset peers" in err[1]
    write_records([RECORDS[2]], tmp_path / "curves.jsonl")
    main(["--time-to-quality", str(tmp_path / "curves.jsonl"), "--plot", str(tmp_path / "ttq.png")])
    assert (tmp_path / "ttq.png").stat().st_size > 0 and "faiss-knn" in capsys.readouterr().out


def test_each_point_shows_the_spread_of_its_timed_calls() -> None:
    from matplotlib.collections import LineCollection

    record = _record("psal-1", 64, "iterations", [(1, 0.2, 1.3), (5, 0.5, 1.04)])
    record["metrics"]["convergence"][1]["time_samples_s"] = [0.4, 0.5, 0.5, 0.9]
    points = curve_points([record])
    row = points[points["value"] == 5].iloc[0]
    assert row.time_q1_s < row.time_s < row.time_q3_s  # quartiles of the samples around the median
    single = points[points["value"] == 1].iloc[0]
    assert single.time_q1_s == single.time_s == single.time_q3_s  # one call: no spread to show
    bars = [c for c in figure(points).axes[0].collections if isinstance(c, LineCollection)]
    spans = sorted(tuple(sorted((a[0], b[0]))) for c in bars for a, b in c.get_segments())
    assert (row.time_q1_s, row.time_q3_s) in spans


def test_a_variant_keeps_its_colour_in_every_figure_of_a_report() -> None:
    from attnbench.report.time_to_quality import variant_colours

    every = ["psal-1", "psal-1[search_k=4]", "psal-1[init=pyramid]", "faiss-knn"]
    video = variant_colours(["psal-1[search_k=4]", "psal-1[init=pyramid]", "faiss-knn"], every)
    stereo = variant_colours(["psal-1[init=pyramid]", "psal-1"], every)
    assert video["psal-1[init=pyramid]"] == stereo["psal-1[init=pyramid]"]
    assert video["psal-1[search_k=4]"] != video["psal-1[init=pyramid]"]
    assert variant_colours(["psal-1[init=pyramid]"])  # alone: its own palette
