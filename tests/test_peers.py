"""The competitors (flex-local, natten, faiss-knn): their definitions against the
harness's own mechanisms, their parameters, and a clean refusal when the package is missing.

The generic contract (shapes, masks, gradients, estimates) is tests/test_contract.py's, which
covers these plugins through their entry points.
"""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from attnbench.errors import Unsupported, UnsupportedRequest
from attnbench.interface import ProblemShape
from attnbench.registry import mechanism, plugins
from helpers import skip_unless_available as _available

torch.set_num_threads(1)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _qkv(size=14, c=3, cv=2):
    return _rand(1, c, size, size), _rand(1, c, size, size, seed=1), _rand(1, cv, size, size, seed=2)


def _hole(size=14):
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[:, :, 4:8, 5:10] = True
    return mask


# ------------------------------------------------------------------------------- registration
@pytest.mark.parametrize("name", ["flex-local", "natten", "faiss-knn", "faiss-knn-hnsw"])
def test_listed_with_availability(name):
    info = next((i for i in plugins().values() if name in i.variants), None)
    assert info is not None, f"{name} is not registered"
    assert info.availability.ok or info.availability.reason


def test_missing_package_is_a_reason_not_a_crash(monkeypatch):
    import sys

    from attnbench_plugins import faiss_knn, natten_na

    for module in ("faiss", "natten"):
        monkeypatch.setitem(sys.modules, module, None)  # `import faiss` now raises ImportError
    faiss_knn.faiss_availability.cache_clear()
    natten_na.natten_availability.cache_clear()
    try:
        for found, package in ((faiss_knn.FaissKnn.availability(), "faiss-cpu"), (natten_na.NattenAttention.availability(), "natten")):
            assert not found.ok and package in found.reason and "peers" in found.reason
    finally:
        faiss_knn.faiss_availability.cache_clear()
        natten_na.natten_availability.cache_clear()


# --------------------------------------------------------------------------------- faiss-knn
@pytest.mark.parametrize("spec", ["faiss-knn[nprobe=1000]", "faiss-knn-hnsw[ef_search=200]"])
@pytest.mark.parametrize("k", [1, 3])
def test_faiss_knn_with_exhaustive_settings_is_knn_exact(spec, k):
    # probing every list (or a wide HNSW beam on a tiny index) is exact search: same output as knn-exact
    _available("faiss-knn")
    q, kk, v = _qkv()
    name, params = spec.split("[")
    key, value = params.rstrip("]").split("=")
    faiss = mechanism(name, patch_size=3, k=k, **{key: int(value)})
    exact = mechanism("knn-exact", patch_size=3, k=k)
    torch.testing.assert_close(faiss(q, kk, v), exact(q, kk, v), rtol=1e-4, atol=1e-4)


def test_faiss_knn_keeps_the_border_and_mask_rules():
    _available("faiss-knn")
    q, k, _ = _qkv()
    mask = _hole()
    idx = mechanism("faiss-knn[k=4]", patch_size=3).search(q, k, mask)
    cy, cx = idx // 14, idx % 14
    assert ((cy >= 1) & (cy < 13) & (cx >= 1) & (cx < 13)).all()
    touched = torch.nn.functional.max_pool2d(mask.float(), 3, stride=1, padding=1)[0, 0] > 0
    assert not touched.flatten()[idx.flatten()].any()
    assert all(len(set(row.tolist())) == 4 for row in idx.reshape(-1, 4))  # k distinct keys per query


def test_faiss_knn_parameters_are_recorded_and_checked():
    _available("faiss-knn")
    ivf = mechanism("faiss-knn", nlist=16, nprobe=2)
    assert ivf.params()["index"] == "ivf" and ivf.params()["nlist"] == 16 and ivf.params()["nprobe"] == 2
    hnsw = mechanism("faiss-knn-hnsw", ef_search=24)
    assert hnsw.params()["index"] == "hnsw" and hnsw.params()["ef_search"] == 24 and "nprobe" not in hnsw.params()
    with pytest.raises(UnsupportedRequest, match="nprobe"):
        mechanism("faiss-knn", nprobe=0)
    with pytest.raises(UnsupportedRequest, match="index"):
        mechanism("faiss-knn", index="lsh")


def test_faiss_knn_estimate_counts_the_unfolded_patches():
    # the patches faiss needs (float32 copies of every query and key patch) dominate: > 3 n d bytes
    _available("faiss-knn")
    shape = ProblemShape.square(128, 16, 7)
    est = mechanism("faiss-knn").estimate(shape)
    assert est.memory_bytes > 3 * shape.n_valid_keys * shape.patch_dim * 4
    more_probes = mechanism("faiss-knn[nprobe=16]").estimate(shape)
    assert more_probes.flops > est.flops


# ------------------------------------------------------------------------- local neighbourhoods
def test_flex_local_is_local_attention():
    # same window rule, same patch vectors: the same output as the `local` plugin (eager path here)
    _available("flex-local")
    for similarity in ("l2", "dot"):
        q, k, v = _rand(1, 3, 13, 16), _rand(1, 3, 11, 9, seed=1), _rand(1, 2, 11, 9, seed=2)
        flex = mechanism("flex-local", patch_size=3, window=5, similarity=similarity)
        local = mechanism("local", patch_size=3, window=5, similarity=similarity)
        torch.testing.assert_close(flex(q, k, v), local(q, k, v), rtol=1e-4, atol=1e-4)
        assert flex.last_compiled is False  # below compile_min_queries


def test_flex_local_compile_rule_is_recorded():
    _available("flex-local")
    m = mechanism("flex-local")
    assert m.params()["compile"] == "auto" and m.params()["compile_min_queries"] == 1024
    assert not m.compiled_for(100) and m.compiled_for(1024) == m.can_compile
    assert mechanism("flex-local", compile=False).compiled_for(10**6) is False


@pytest.mark.slow
def test_flex_local_compiled_matches_local():
    _available("flex-local")
    from attnbench_plugins.flex_local import can_compile

    if not can_compile():
        pytest.skip("torch.compile unavailable here")
    q, k, v = _qkv(size=20)
    flex = mechanism("flex-local", patch_size=3, window=7, compile=True)
    with torch.no_grad():
        out = flex(q, k, v)
    assert flex.last_compiled is True
    torch.testing.assert_close(out, mechanism("local", patch_size=3, window=7)(q, k, v), rtol=1e-4, atol=1e-4)


def test_natten_matches_local_away_from_the_border():
    # NATTEN shifts border windows inside the map (local truncates them): equal in the interior
    _available("natten")
    q, k, v = _qkv(size=16)
    out = mechanism("natten", patch_size=3, window=5)(q, k, v)
    ref = mechanism("local", patch_size=3, window=5)(q, k, v)
    torch.testing.assert_close(out[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], rtol=1e-4, atol=1e-4)


def test_natten_refuses_patch_vectors_its_cpu_backend_cannot_take():
    # the cell's shape, not the user's request: a final `unsupported`, never an `error`
    _available("natten")
    q, k, v = _qkv(size=12, c=16)
    with pytest.raises(Unsupported, match="512"):
        mechanism("natten", patch_size=7)(q, k, v)
    with pytest.raises(UnsupportedRequest, match="odd"):
        mechanism("natten", window=8)


def test_natten_cpu_estimate_holds_its_measured_peak():
    # the estimate decides `infeasible` before a cell runs: at 256 px the CPU path needs ~110 GB,
    # and an estimate of the scores alone (17 GB) let the cell start and run out of memory
    _available("natten")
    from attnbench.measure.call import AttentionCall
    from attnbench.measure.memory import measure_memory

    q, k, v = _qkv(size=48, c=16)
    module = mechanism("natten", patch_size=5)
    with torch.no_grad():
        module(q, k, v)
        _, peak = measure_memory(lambda: module(q, k, v))
    estimate = module.estimate(AttentionCall(module, q, k, v).shape()).memory_bytes
    assert peak.allocator_bytes <= estimate <= 1.3 * peak.allocator_bytes, (peak.allocator_bytes, estimate)


# ---------------------------------------------------------------------------- search suite
def test_search_suite_sweeps_each_peer_parameter(tmp_path):
    _available("faiss-knn")
    from attnbench.cli import main

    out = tmp_path / "search.jsonl"
    code = main(["run", "search", "--preset", "peers-ci", "--sizes", "24", "--mechanisms", "faiss-knn,psal-1",
                 "--out", str(out), "--no-table"])
    assert code in (0, None)
    records = {r["mechanism"]: r for r in map(json.loads, out.read_text().splitlines())}
    faiss = records["faiss-knn"]["metrics"]
    # every combination of the index's main knobs, as a user tuning faiss by hand would try
    assert faiss["swept"] == "nlist,nprobe"
    assert [(p["nlist"], p["nprobe"]) for p in faiss["convergence"]] == [(16, 1), (16, 4), (64, 1), (64, 4)]
    assert all(p["mse_ratio"] > 0 and p["time_s"] > 0 and 0 <= p["recall"] <= 1 for p in faiss["convergence"])
    assert records["psal-1"]["metrics"]["swept"] == "iterations"
    # every point's time is the median of repeated calls (one call of a shared VM varies by 10-30 %)
    for record in records.values():
        points = record["metrics"]["convergence"]
        for p in points:
            assert len(p["time_samples_s"]) >= 3, p
            assert p["time_s"] == pytest.approx(statistics.median(p["time_samples_s"]))
            assert p["time_iqr_s"] >= 0
        own = [p for p in points if p["time_s"] == record["metrics"]["time_s"]]
        assert own and record["metrics"]["time_iqr_s"] == own[0]["time_iqr_s"]


def test_search_timing_options_are_every_suites_and_checked():
    from attnbench.errors import UserError
    from attnbench.options import MeasureOptions, parse
    from attnbench.runners.search_quality import SearchOptions

    opts = parse(SearchOptions, {"time_budget_s": 2.0}, "suite 'search'")
    assert opts.min_repeats == MeasureOptions.min_repeats and opts.time_budget_s == 2.0
    assert opts.records_time() and opts.calibrations() == ()  # no yardstick unless the time check asks
    with pytest.raises(UserError, match="min_repeats"):
        parse(SearchOptions, {"min_repeats": 0}, "suite 'search'")


def test_exact_search_is_cached_per_input(tmp_path, monkeypatch):
    # every cell of a size searches the same frames: the brute force runs once, then is read back
    from attnbench.runners import search_quality as sq

    monkeypatch.setattr(sq.tempfile, "gettempdir", lambda: str(tmp_path))
    q, k = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    first, seconds = sq.cached_exact_matches(q, k, [3, 5], 3)
    monkeypatch.setattr(sq, "exact_matches", lambda *a, **kw: pytest.fail("searched again"))
    again, seconds_again = sq.cached_exact_matches(q, k, [3, 5], 3)
    assert torch.equal(first, again) and seconds == seconds_again
    with pytest.raises(pytest.fail.Exception):
        sq.cached_exact_matches(q + 1, k, [3, 5], 3)  # other inputs: a new search


def test_a_multi_knob_curve_is_drawn_along_its_pareto_front():
    from attnbench.report.time_to_quality import curve_points, fastest_within, pareto_front

    points = [{"nlist": nl, "nprobe": npb, "time_s": t, "mse_ratio": m}
              for nl, npb, t, m in [(16, 1, 1.0, 1.20), (16, 4, 2.0, 1.04), (64, 1, 1.5, 1.30), (64, 4, 3.0, 1.02)]]
    record = {"status": "ok", "mechanism": "faiss-knn", "size": 64, "metrics": {"swept": "nlist,nprobe", "convergence": points}}
    df = curve_points([record])
    assert list(df["value"]) == ["nlist=16,nprobe=1", "nlist=16,nprobe=4", "nlist=64,nprobe=1", "nlist=64,nprobe=4"]
    front = pareto_front(df)
    assert list(front["value"]) == ["nlist=16,nprobe=1", "nlist=16,nprobe=4", "nlist=64,nprobe=4"]  # (64, 1) is beaten
    assert fastest_within(df, 1.05)["value"].tolist() == ["nlist=16,nprobe=4"]


def test_faiss_knn_builds_its_index_from_one_copy_of_the_patches():
    # the keys and queries faiss reads are made once each, straight into float32 rows: the search's
    # peak is those two arrays (plus small change), not the unfolded copies and their gathers
    _available("faiss-knn")
    from attnbench.measure.memory import measure_memory

    size, p, c = 64, 5, 16
    q, k, _ = _qkv(size=size, c=c)
    module = mechanism("faiss-knn", patch_size=p)
    module.search(q, k)  # warm: faiss' thread pools
    _, peak = measure_memory(lambda: module.search(q, k))
    d, n, nq = c * p * p, (size - p + 1) ** 2, size * size
    patches = (n + nq) * d * 4
    assert patches <= peak.allocator_bytes <= 1.15 * patches, (peak.allocator_bytes, patches)


def test_forward_only_mechanisms_record_fwd_bwd_as_unsupported(tmp_path):
    _available("flex-local")
    from attnbench.cli import main

    out = tmp_path / "memory.jsonl"
    code = main(["run", "memory", "--mechanisms", "flex-local", "--sizes", "16", "--patch-size", "3",
                 "--channels", "3", "--mode", "fwd+bwd", "--out", str(out), "--no-table"])
    assert code in (0, None)
    (record,) = map(json.loads, out.read_text().splitlines())
    assert record["status"] == "unsupported" and "forward only" in record["reason"]
    assert record["metrics"]["estimated_flops"] > 0  # the estimate is kept


@pytest.mark.parametrize("suite", ["memory", "speed"])
def test_peers_presets_use_a_setting_every_peer_takes(suite):
    # NATTEN's CPU backend stops at head dim 512; the peers presets must stay under it (p = 5, C = 16)
    _available("natten")
    from attnbench.suites import load

    _, grid, _ = load(suite).resolved("peers")
    assert set(grid["modes"]) == {"fwd", "fwd+bwd"} and min(grid["sizes"]) <= 64 and max(grid["sizes"]) >= 512
    natten = mechanism("natten", patch_size=grid["patch_size"])
    assert natten.head_dim(grid["channels"]) <= 512
