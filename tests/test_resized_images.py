"""A big --data image is decoded and resized once per run, not once per cell: the run's cache
(RunContext.resized_images) holds it resized per cell size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import io

from attnbench import context
from attnbench.errors import UserError
from attnbench.tasks import images, user_data


def _write(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    io.imsave(path, (rng.random((h, w, 3)) * 255).astype(np.uint8), check_contrast=False)
    return path


def test_cached_square_equals_the_direct_resize_and_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _write(tmp_path / "big_a.png", 300, 400, 0)
    direct = images.square_resize(images.read_image(image), 64)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(context, "_current", context.RunContext(resized_images=str(cache)))
    first = images.read_square(image, 64)
    assert np.array_equal(first, direct)
    assert len(list(cache.glob("*.npy"))) == 1

    def no_decode(path: Path, size: object = None) -> np.ndarray:
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(images, "read_image", no_decode)
    assert np.array_equal(images.read_square(image, 64), direct)  # later cells: from the cache
    with pytest.raises(AssertionError, match="decoded again"):
        images.read_square(image, 32)  # another size is another entry


def test_without_a_run_cache_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "_current", context.RunContext())
    image = _write(tmp_path / "x_a.png", 40, 50, 1)
    assert images.read_square(image, 16).shape == (16, 16, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_a.png"]


def test_user_pairs_at_a_size_still_refuse_frames_of_different_sizes(tmp_path: Path) -> None:
    _write(tmp_path / "p_a.png", 40, 50, 2)
    _write(tmp_path / "p_b.png", 40, 60, 3)
    with pytest.raises(UserError, match="differ in size"):
        user_data.user_pairs(tmp_path, 1, size=16)
    _write(tmp_path / "p_b.png", 40, 50, 3)
    [pair] = user_data.user_pairs(tmp_path, 1, size=16)
    assert pair.a.shape == pair.b.shape == (16, 16, 3)
