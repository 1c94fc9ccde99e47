"""Frame pairs of the task suites: embedded determinism and the user-data folder layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import io
from skimage.util import img_as_ubyte

from attnbench.errors import UserError
from attnbench.tasks import data, embedded, images, pairs, user_data

VIDEO_PAIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "video-pair"


def test_embedded_pairs_are_deterministic_for_a_seed() -> None:
    first, again, other = embedded.embedded_pairs(3, seed=0), embedded.embedded_pairs(3, seed=0), embedded.embedded_pairs(3, seed=1)
    assert [p.name for p in first] == ["motorcycle", "astronaut-m0", "coffee-m0"]
    for x, y in zip(first, again):
        assert np.array_equal(x.a, y.a) and np.array_equal(x.b, y.b)
    assert np.array_equal(first[0].b, other[0].b)  # the stereo pair is real, not drawn
    assert not np.array_equal(first[1].b, other[1].b)  # camera motions depend on the seed


def test_motion_pair_frames_differ_by_a_far_camera_motion() -> None:
    pair = embedded.embedded_pairs(2, seed=0)[1]
    assert pair.a.shape == pair.b.shape and pair.a.dtype == np.float32
    assert 0.0 <= pair.b.min() and pair.b.max() <= 1.0
    side = pair.a.shape[0]
    motion = embedded.draw_motion(np.random.default_rng((0, 0, 0)), side)
    assert 0.06 * side <= np.hypot(*motion.shift_yx) <= 0.12 * side
    # frame B is not frame A: a zero-displacement copy would make the task trivial
    assert np.abs(pair.a - pair.b).mean() > 0.05


def test_larger_motion_option_moves_the_camera_further_and_keys_the_cache() -> None:
    shift = (0.15, 0.30)
    rng = np.random.default_rng((0, 0, 0))
    motions = [embedded.draw_motion(rng, 100, shift) for _ in range(50)]
    assert all(15.0 <= np.hypot(*m.shift_yx) <= 30.0 for m in motions)
    default = data.task_pairs({}, 2, 0, "train")[0]
    moved = data.task_pairs({"motion": list(shift)}, 2, 0, "train")[0]
    assert default.name == moved.name and moved.a.shape == moved.b.shape
    # a smaller window of the same photo, so that frame B's moved window stays inside it
    assert moved.a.shape[0] < default.a.shape[0]
    assert embedded.window_fraction(embedded.DEFAULT_MOTION) == 0.72
    assert data.data_identity({}) != data.data_identity({"motion": list(shift)})  # no stale cached weights
    assert data.data_identity({}) == data.data_identity({"motion": list(embedded.DEFAULT_MOTION)})


@pytest.mark.parametrize("motion", [[0.3, 0.1], [0.1, 0.5], [-0.1, 0.2], ["a", 0.2], [0.1]])
def test_bad_motion_option_is_a_user_error_before_any_work(motion) -> None:
    from attnbench.tasks.colorization import ColorizationOptions

    with pytest.raises(UserError, match="motion must"):
        ColorizationOptions(motion=motion)


def test_training_pairs_are_cut_at_varied_places_test_pairs_centred() -> None:
    shift = (0.15, 0.30)
    train = embedded.embedded_split("train", 8, 0, shift)
    astronaut = [p for p in train if p.name.startswith("astronaut")]
    assert len(astronaut) == 2 and not np.array_equal(astronaut[0].a, astronaut[1].a)  # two scenes, not one
    photo = embedded.load_photo("astronaut")
    centred = int(embedded.window_fraction(shift) * min(photo.shape[:2]))
    assert all(embedded.TRAIN_WINDOW_MIN * centred - 1 <= p.a.shape[0] <= centred for p in astronaut)
    for p in train:
        assert p.a.shape == p.b.shape and 0.0 <= p.b.min() and p.b.max() <= 1.0
    again = embedded.embedded_split("train", 8, 0, shift)
    assert all(np.array_equal(x.a, y.a) and np.array_equal(x.b, y.b) for x, y in zip(train, again))
    # test frames A keep the centred window of their photo
    coffee = next(p for p in embedded.embedded_split("test", 2, 0, shift) if p.name.startswith("coffee"))
    image = embedded.load_photo("coffee")
    side = int(embedded.window_fraction(shift) * min(image.shape[:2]))
    y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    assert np.allclose(coffee.a, image[y0 : y0 + side, x0 : x0 + side])


def test_embedded_train_and_test_splits_do_not_share_photos() -> None:
    train = {p.name.split("-")[0] for p in embedded.embedded_split("train", 8)}
    test = {p.name.split("-")[0] for p in embedded.embedded_split("test", 3)}
    assert train and test and not train & test


def test_square_pair_resizes_both_frames() -> None:
    pair = pairs.square_pair(embedded.embedded_pairs(1)[0], 24)
    assert pair.a.shape == pair.b.shape == (24, 24, 3)


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(str(path), img_as_ubyte(image), check_contrast=False)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_folder_of_pairs_by_suffix_and_by_subfolder(tmp_path: Path) -> None:
    _save(tmp_path / "cat_a.png", _image(20, 30, 1))
    _save(tmp_path / "cat_b.png", _image(20, 30, 2))
    _save(tmp_path / "scene" / "0001.png", _image(16, 16, 3))
    _save(tmp_path / "scene" / "0002.png", _image(16, 16, 4))
    pairs = user_data.user_pairs(tmp_path, 10)
    assert [p.name for p in pairs] == ["cat", "scene"]
    assert pairs[0].a.shape == (20, 30, 3)
    assert np.allclose(pairs[0].a, _image(20, 30, 1), atol=1 / 255)


def test_grey_images_become_rgb(tmp_path: Path) -> None:
    grey = (np.random.default_rng(0).random((12, 12)) * 255).astype(np.uint8)
    io.imsave(str(tmp_path / "g_a.png"), grey, check_contrast=False)
    io.imsave(str(tmp_path / "g_b.png"), grey, check_contrast=False)
    (pair,) = user_data.user_pairs(tmp_path, 1)
    assert pair.a.shape == (12, 12, 3) and np.array_equal(pair.a[..., 0], pair.a[..., 2])


def test_davis_layout_pairs_frames_ten_apart(tmp_path: Path) -> None:
    for seq in ("bear", "car", "dog", "elk", "fox"):
        for t in range(12):
            _save(tmp_path / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", _image(8, 8, t))
    entries = user_data.user_pair_paths(tmp_path)
    assert len(entries) == 5 * 1  # one pair (0, 10) per 12-frame sequence
    name, a, b = entries[0]
    assert (a.name, b.name) == ("00000.jpg", "00010.jpg") and name == "bear/00000"
    train, test = user_data.user_pair_paths(tmp_path, "train"), user_data.user_pair_paths(tmp_path, "test")
    assert [n.split("/")[0] for n, *_ in test] == ["fox"]
    assert "fox" not in {n.split("/")[0] for n, *_ in train}


def test_unreadable_image_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    _save(tmp_path / "x_a.png", _image(8, 8))
    (tmp_path / "x_b.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="x_b.png"):
        user_data.user_pairs(tmp_path, 1)


def test_mismatched_pair_is_a_user_error_naming_both_files(tmp_path: Path) -> None:
    _save(tmp_path / "x_a.png", _image(8, 8))
    _save(tmp_path / "x_b.png", _image(9, 8))
    with pytest.raises(UserError, match=r"x_a\.png.*x_b\.png"):
        user_data.user_pairs(tmp_path, 1)


def test_incomplete_or_empty_folders_say_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="NAME_a"):
        user_data.user_pairs(tmp_path, 1)
    _save(tmp_path / "lonely_a.png", _image(8, 8))
    with pytest.raises(UserError, match="lonely_b"):
        user_data.user_pairs(tmp_path, 1)


def test_task_pairs_uses_the_data_option(tmp_path: Path) -> None:
    _save(tmp_path / "p_a.png", _image(8, 8))
    _save(tmp_path / "p_b.png", _image(8, 8, 5))
    assert [p.name for p in data.task_pairs({"data": str(tmp_path)}, 4, 0)] == ["p"]
    assert data.data_identity({}) != data.data_identity({"data": str(tmp_path)})


@pytest.mark.skipif(not (VIDEO_PAIR / "img1_512.png").exists(), reason="shared video pair not present")
def test_real_video_pair_reads_as_a_pair(tmp_path: Path) -> None:
    pair = user_data.load_pair("video", VIDEO_PAIR / "img1_512.png", VIDEO_PAIR / "img2_512.png")
    assert pair.a.shape == pair.b.shape and pair.a.shape[2] == 3
    assert 0.0 < np.abs(pair.a - pair.b).mean() < 0.5


def test_folder_of_pairs_is_split_for_training(tmp_path: Path) -> None:
    for i in range(5):
        _save(tmp_path / f"p{i}_a.png", _image(8, 8, i))
        _save(tmp_path / f"p{i}_b.png", _image(8, 8, i + 10))
    train = [n for n, *_ in user_data.user_pair_paths(tmp_path, "train")]
    test = [n for n, *_ in user_data.user_pair_paths(tmp_path, "test")]
    assert train == ["p0", "p1", "p2", "p3"] and test == ["p4"]
    assert len(user_data.user_pair_paths(tmp_path)) == 5


# ----------------------------------------------------------------------------- one decoding path, by mode
RED = (1.0, 0.0, 0.0)


def _pil_image(mode: str):
    """A small image of ``mode`` whose pixels all mean pure red (or mid grey for grey-only modes)."""
    from PIL import Image

    if mode == "CMYK":
        return Image.new("CMYK", (16, 12), (0, 255, 255, 0))
    if mode == "P":
        image = Image.new("P", (16, 12), 0)
        image.putpalette([255, 0, 0] + [0, 0, 255] * 255)
        return image
    if mode == "YCbCr":
        return Image.new("RGB", (16, 12), (255, 0, 0)).convert("YCbCr")
    if mode == "RGBA":
        return Image.new("RGBA", (16, 12), (255, 0, 0, 255))
    if mode == "LA":
        return Image.new("LA", (16, 12), (128, 255))
    if mode == "I;16":
        return Image.fromarray(np.full((12, 16), 32768, np.uint16))
    if mode == "I":
        return Image.new("I", (16, 12), 32768)
    if mode == "F":
        return Image.new("F", (16, 12), 0.5)
    if mode == "L":
        return Image.new("L", (16, 12), 128)
    return Image.new(mode, (16, 12), (255, 0, 0))


@pytest.mark.parametrize("mode, suffix", [
    ("CMYK", ".jpg"), ("CMYK", ".tif"), ("P", ".png"), ("P", ".bmp"), ("YCbCr", ".jpg"), ("RGBA", ".png"),
    ("RGBA", ".tif"), ("LA", ".png"), ("I;16", ".png"), ("I;16", ".tif"), ("I", ".tif"), ("F", ".tif"), ("L", ".bmp"),
    ("RGB", ".bmp"),
])
def test_every_container_and_mode_decodes_to_its_colours(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    image = _pil_image(mode)
    image.save(path, **({"quality": 100} if suffix == ".jpg" else {}))
    rgb = images.read_image(path)
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.float32
    expected = (0.5, 0.5, 0.5) if mode in ("LA", "I;16", "I", "F", "L") else RED
    assert np.allclose(rgb.reshape(-1, 3).mean(0), expected, atol=0.03), (mode, suffix, rgb[0, 0])


def test_a_cmyk_jpeg_of_pure_red_is_red_not_white(tmp_path: Path) -> None:
    _pil_image("CMYK").save(tmp_path / "r_a.jpg", quality=100)
    _pil_image("CMYK").save(tmp_path / "r_b.jpg", quality=100)
    (pair,) = user_data.user_pairs(tmp_path, 1)
    assert np.allclose(pair.a[..., 0], 1.0, atol=0.02) and pair.a[..., 1:].max() < 0.02


def test_palette_transparency_is_composited_over_white(tmp_path: Path) -> None:
    image = _pil_image("P")
    image.info["transparency"] = 0  # the red entry is transparent
    image.save(tmp_path / "t.png")
    assert np.allclose(images.read_image(tmp_path / "t.png"), 1.0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    from PIL import Image

    image = Image.new("RGB", (16, 8), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 8, 8))  # left half blue
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    image.save(tmp_path / "o.jpg", exif=exif, quality=100)
    rgb = images.read_image(tmp_path / "o.jpg")
    assert rgb.shape == (16, 8, 3)
    assert rgb[2, 4, 2] > 0.9 and rgb[13, 4, 0] > 0.9  # blue on top after the rotation
    assert images.read_image_shape(tmp_path / "o.jpg") == (8, 16)


@pytest.mark.parametrize("mode", ["LAB", "I-wide", "F-wide"])
def test_a_mode_without_an_rgb_mapping_is_one_line_naming_file_and_mode(tmp_path: Path, mode: str) -> None:
    from PIL import Image

    path = tmp_path / "odd.tif"
    {"LAB": lambda: Image.new("LAB", (8, 8), (50, 0, 0)), "I-wide": lambda: Image.new("I", (8, 8), 1 << 20),
     "F-wide": lambda: Image.new("F", (8, 8), 3.0)}[mode]().save(path)
    with pytest.raises(UserError, match=rf"odd\.tif.*mode {mode.split('-')[0]}") as info:
        images.read_image(path)
    assert "\n" not in str(info.value)


def test_an_empty_file_says_it_is_empty(tmp_path: Path) -> None:
    (tmp_path / "e_a.png").write_bytes(b"")
    _save(tmp_path / "e_b.png", _image(8, 8))
    with pytest.raises(UserError, match=r"e_a\.png.*empty") as info:
        data.check_user_images(tmp_path, 1)
    assert "backend" not in str(info.value)


def test_a_symlink_loop_is_an_error_naming_it_not_dropped(tmp_path: Path) -> None:
    _save(tmp_path / "good_a.png", _image(8, 8))
    _save(tmp_path / "good_b.png", _image(8, 8))
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_a.png")
    with pytest.raises(UserError, match="loop_a.png"):
        user_data.user_pair_paths(tmp_path)
    (tmp_path / "loop_a.png").unlink()
    (tmp_path / "gone_a.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(UserError, match="gone_a.png"):
        user_data.user_pair_paths(tmp_path)


def test_an_image_smaller_than_the_cell_is_refused_not_upscaled(tmp_path: Path) -> None:
    _save(tmp_path / "tiny_a.png", _image(1, 1))
    _save(tmp_path / "tiny_b.png", _image(1, 1, 1))
    with pytest.raises(UserError, match=r"tiny_a\.png is 1x1.*64 px.*--sizes 1"):
        data.check_user_images(tmp_path, 1, size=64)
    with pytest.raises(UserError, match="does not upscale"):
        user_data.user_pairs(tmp_path, 1, size=64)
    assert user_data.user_pairs(tmp_path, 1, size=1)[0].a.shape == (1, 1, 3)


def test_a_huge_image_is_refused_from_its_header_with_the_limit_and_how_to_resize(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (12000, 12000), 7).save(tmp_path / "huge_a.png")  # 144 megapixels, a few KB on disk
    Image.new("L", (12000, 12000), 7).save(tmp_path / "huge_b.png")
    assert (tmp_path / "huge_a.png").stat().st_size < 1 << 20
    with pytest.raises(UserError, match=r"huge_a\.png is 12000x12000 \(144 megapixels\).*50 megapixels.*thumbnail"):
        data.check_user_images(tmp_path, 1, size=64)
    with pytest.raises(UserError, match="144 megapixels"):
        images.read_image_shape(tmp_path / "huge_a.png")


def test_a_large_jpeg_is_decoded_reduced_for_a_small_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    Image.new("RGB", (800, 600), (255, 0, 0)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100_000)  # the full 480,000 pixels are over the limit
    with pytest.raises(UserError, match="megapixels"):
        images.read_image(tmp_path / "big.jpg")
    reduced = images.read_image(tmp_path / "big.jpg", size=64)  # decoded at 1/8 scale: 100 x 75
    assert reduced.shape == (75, 100, 3) and np.allclose(reduced[..., 0], 1.0, atol=0.02)
