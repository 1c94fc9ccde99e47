"""Each task runner on tiny inputs: sane metrics, records' cost fields, and PSAL's edge over Local."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata
from skimage import io
from skimage.transform import resize
from skimage.util import img_as_ubyte

import attnbench
from attnbench.cells import CellSpec
from attnbench.errors import Unavailable, UnsupportedRequest, UserError
from attnbench.suites import load


def available(name: str) -> bool:
    try:
        attnbench.mechanism(name)
        return True
    except (UserError, Unavailable):
        return False


def cell(suite: str, mechanism: str, size: int, **options) -> CellSpec:  # type: ignore[no-untyped-def]
    name, params = attnbench.specs.split_spec(mechanism)
    return CellSpec(suite=suite, runner="", mechanism=name, params=params, size=size, channels=3, patch_size=5,
                    options=options)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def shifted_pair(tmp_path: Path) -> Path:
    """A 48 px pair whose frame B sees the scene 14 px to the right: far for a 9 px local window."""
    photo = resize(skdata.astronaut()[80:400, 80:400], (80, 80), anti_aliasing=True)
    folder = tmp_path / "pairs"
    folder.mkdir()
    io.imsave(str(folder / "shift_a.png"), img_as_ubyte(photo[16:64, 8:56]), check_contrast=False)
    io.imsave(str(folder / "shift_b.png"), img_as_ubyte(photo[16:64, 22:70]), check_contrast=False)
    return folder


def test_reconstruction_gives_l2_and_costs() -> None:
    from attnbench.runners.reconstruction import run

    m = run(cell("reconstruction", "full", 24, pairs=2, timing=False))
    assert 0.0 < m["l2"] < 0.05 and len(m["l2_per_pair"]) == 2
    assert m["flops"] > 0 and m["peak_memory_bytes"] > 0 and m["estimated_memory_bytes"] > 0
    strided = run(cell("reconstruction", "full[stride=3]", 24, pairs=2, timing=False))
    assert strided["estimated_memory_bytes"] < m["estimated_memory_bytes"]


def test_reconstruction_refuses_other_channel_counts() -> None:
    from attnbench.runners.reconstruction import run

    spec = CellSpec(suite="reconstruction", runner="", mechanism="full", size=24, channels=16, options={"pairs": 1})
    with pytest.raises(UnsupportedRequest, match="channels must be 3"):
        run(spec)


@pytest.mark.parametrize("finder", ["psal-3", "knn-exact"])
def test_patch_matching_beats_local_attention_on_a_far_shift(finder: str, shifted_pair: Path) -> None:
    from attnbench.runners.reconstruction import run

    for name in (finder, "local"):
        if not available(name):
            pytest.skip(f"{name} not available yet")
    opts = {"pairs": 1, "timing": False, "data": str(shifted_pair)}
    local = run(cell("reconstruction", "local[window=9]", 48, **opts))["l2"]
    found = run(cell("reconstruction", finder, 48, **opts))["l2"]
    assert found < 0.5 * local


def test_colorization_trains_then_hits_the_cache_and_beats_grey() -> None:
    from attnbench.runners.colorization import run

    opts = {"steps": 30, "crop": 16, "train_pairs": 2, "test_pairs": 1}
    first = run(cell("colorization", "full", 24, **opts))
    assert not first["weights_cached"] and first["train_steps"] == 30
    assert 0.0 < first["l2"] < first["grey_l2"]
    assert first["flops"] > 0 and first["peak_memory_bytes"] > 0
    again = run(cell("colorization", "full", 24, **opts))
    assert again["weights_cached"] and again["l2"] == pytest.approx(first["l2"])


def test_colorization_records_carry_convergence_evidence_seeds_and_baselines() -> None:
    from attnbench.runners.colorization import run
    from attnbench.tasks.training import checkpoint_steps

    opts = {"steps": 10, "crop": 16, "train_pairs": 2, "test_pairs": 1, "seeds": 2, "schedule": "cosine", "warmup": 2}
    m = run(cell("colorization", "full", 24, **opts))
    assert m["seeds"] == [0, 1] and len(m["l2_seeds"]) == 2 and len(m["training"]) == 2
    assert m["l2"] == pytest.approx(sum(m["l2_seeds"]) / 2, rel=1e-5) and m["l2_std"] > 0  # seeds rounded to 7 digits
    assert m["l2_range"] == pytest.approx([min(m["l2_seeds"]), max(m["l2_seeds"])], rel=1e-4)
    for seed_run in m["training"]:
        assert [s for s, _ in seed_run["fit_curve"]] == checkpoint_steps(10) == [s for s, _ in seed_run["test_curve"]]
        assert seed_run["test_curve"][-1][1] == pytest.approx(m["l2_seeds"][seed_run["seed"]], rel=1e-5)
        assert seed_run["train_loss_curve"][-1][0] == 10 and isinstance(seed_run["converged"], bool)
    assert m["converged"] == all(m["converged_seeds"]) and "20%" in m["convergence_rule"]
    for base in ("no_attention_l2", "zero_motion_l2"):
        assert 0 < m[base] < 0.1 and len(m[f"{base}_seeds"]) == 2
    worst = max(m["l2_seeds"])
    assert m["beats_baselines"] == (worst < m["no_attention_l2"] and worst < m["zero_motion_l2"])


def test_colorization_refuses_bad_training_options() -> None:
    from attnbench.runners.colorization import run

    with pytest.raises(UnsupportedRequest, match="schedule"):
        run(cell("colorization", "full", 24, steps=5, schedule="step"))
    with pytest.raises(UnsupportedRequest, match="seeds"):
        run(cell("colorization", "full", 24, steps=5, seeds=0))


def test_colorization_cache_key_follows_resolved_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnbench_plugins.psal as psal
    from attnbench.tasks.colorization import ColorizationSetup, training_config
    from attnbench.tasks.training import config_key

    spec = cell("colorization", "psal-1", 24, steps=30, crop=16)
    setup = ColorizationSetup.from_spec(spec)
    config = training_config(spec, setup)
    assert config["resolved"]["search_k"] == 2 and "backend" not in config["resolved"]
    monkeypatch.setattr(psal, "DEFAULT_SEARCH_K", 1)  # a changed default must not reuse the old weights
    assert config_key(training_config(spec, setup)) != config_key(config)


def test_substitution_evaluates_own_and_swapped_attention() -> None:
    from attnbench.runners.colorization import run as colorize
    from attnbench.runners.substitution import run

    opts = {"steps": 10, "crop": 16, "train_pairs": 2, "test_pairs": 1}
    trained = colorize(cell("colorization", "full", 24, **opts))
    swapped = run(cell("substitution", "full", 24, substitute="full[stride=2]", **opts))
    assert swapped["weights_cached"] and swapped["weights_key"] == trained["weights_key"]
    assert swapped["l2"] == pytest.approx(trained["l2"])
    assert 0.0 < swapped["substituted_l2"] < 0.1
    assert swapped["substituted_estimated_memory_bytes"] < swapped["estimated_memory_bytes"]
    assert swapped["substituted_ratio"] == pytest.approx(swapped["substituted_l2"] / swapped["l2"])
    assert swapped["substituted_converged"] == swapped["converged"] == trained["converged"]
    if available("psal-1"):
        psal = run(cell("substitution", "full", 24, **opts))
        assert psal["substitute"] == "psal-1" and psal["substituted_l2"] > 0


def test_inpainting_fills_holes_with_masked_attention() -> None:
    from attnbench.runners.inpainting import run

    m = run(cell("inpainting", "full", 48, images=2, holes=2, iterations=1))
    for key in ("l1", "l2", "psnr", "ssim", "tv", "l1_hole", "l2_hole", "coarse_l2"):
        assert np.isfinite(m[key]), key
    assert 0 < m["l2"] < 0.05 and 10 < m["psnr"] < 60 and 0.5 < m["ssim"] <= 1.0
    assert 0 < m["hole_fraction"] < 0.3 and m["flops"] > 0


def test_highres_mode_records_full_attentions_estimate() -> None:
    from attnbench.runners.inpainting import run

    m = run(cell("inpainting", "full[stride=4]", 40, highres=True, photo="coffee", holes=1, hole_min=0.1,
                 hole_max=0.1, iterations=1, query_region="image"))
    assert m["image_hw"] == [40, 40] and m["query_hw"] == [40, 40]
    assert m["full_estimated_memory_bytes"] > m["estimated_memory_bytes"]
    assert m["machine_memory_bytes"] > 0


@pytest.mark.parametrize("suite", ["reconstruction", "colorization", "inpainting", "substitution"])
def test_suite_files_load_with_quick_and_paper_presets(suite: str) -> None:
    loaded = load(suite)
    assert loaded.default_preset == "quick" and "paper" in loaded.presets
    assert loaded.runner.startswith(f"attnbench.runners.{suite}:")
    _name, grid, _options = loaded.resolved("quick")
    assert grid["channels"] == 3 and grid["modes"] == ["fwd"]
    if suite in ("colorization", "substitution"):
        assert "smoke" in loaded.presets
        _name, _grid, options = loaded.resolved("quick")
        assert options["seeds"] >= 3  # headline rows carry a spread
