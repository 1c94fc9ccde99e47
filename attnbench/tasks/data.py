"""Frame pairs for the image-task suites: embedded (no download) and the user's own folders.

Why pairs: every task here (reconstruction, colorization, substitution) copies content from a
reference frame B into a frame A, as between two video frames. Attention is only tested when the
matches lie far apart, so the embedded pairs carry a real camera motion.

Embedded default (scikit-image ships every image used, nothing is downloaded):

* ``motorcycle``: ``skimage.data.stereo_motorcycle()``, a real stereo pair (left = A, right = B).
* ``<photo>-m<i>``: pairs cut from one photograph (astronaut, coffee, chelsea, rocket,
  immunohistochemistry) by a synthetic camera motion: frame A is a centred square window of the
  photo; frame B is the same window after a similarity transform of the camera (shift of 6-12 %
  of the window in a random direction by default, option ``motion`` = [min, max] for other
  ranges, the window then shrinking so that B stays inside the photo, rotation within +-4 degrees, scale 0.92-1.08) and a
  brightness change (gain 0.85-1.15, offset +-0.04). Content enters and leaves the view as in
  video frames about 10 apart. The motion is drawn from ``numpy.random.default_rng((seed,
  photo, i))``, so a seed gives the same pairs on every machine.
* Training pairs (colorization's ``train`` split) cut their window at a random place and size
  (60-100 % of the centred window's side, drawn from the same generator), so that 16 training
  pairs show 16 scenes, not 4 photos' centres 4 times over: with the centres only, Full (dot)
  fitted the training frames ever better while its test l2 rose by half (0.0044 -> 0.0068).
  Test pairs keep the centred window.

User data (``--data DIR``), either

* a folder of pairs: files ``NAME_a.EXT`` + ``NAME_b.EXT`` (A = the frame to reconstruct or
  colourise, B = the reference), or sub-folders that each hold exactly two images (sorted by
  name: first = A, second = B); EXT is png, jpg, jpeg, bmp or tif(f); or
* a DAVIS-style video folder: ``DIR/JPEGImages/<res>/<sequence>/*.jpg`` (``DIR`` may also be
  ``JPEGImages`` itself or one ``<res>`` folder; ``480p`` is preferred when several resolutions
  exist). Pairs are frames ``t`` and ``t + gap`` (gap 10, as the paper), ``t = 0, gap, 2 gap ...``,
  taken round-robin over the sequences so that a few pairs cover many sequences.

Training tasks (colorization) split user data: the last fifth of the sequences (DAVIS) or of the
pairs (folder of pairs), sorted by name and at least one, is the test split, the rest is trained
on; a folder with a single pair uses it for both. Reconstruction and inpainting use every pair.

Images are float32 RGB in [0, 1], H x W x 3, decoded by one path (:func:`read_image`: PIL, EXIF
orientation, then a conversion by the file's mode: CMYK, palette, 16-bit grey, YCbCr ...; grey
replicated to RGB, alpha composited over white). An unreadable, empty or unlisted entry, an
image with no RGB mapping (LAB), one above :data:`MAX_IMAGE_PIXELS`, one smaller than the cell's
size (never upscaled, see :func:`check_side`) or a pair whose frames differ in size is a
:class:`UserError` that names the file.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: bump when the embedded pairs change, so that cached weights trained on old pairs are not reused
EMBEDDED_VERSION = 2
#: photographs (skimage.data names) the embedded camera-motion pairs are cut from
MOTION_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
#: the colorization split of the embedded data: train on these photos, test on the rest
TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "immunohistochemistry")
DAVIS_GAP = 10
#: camera shift of the embedded motion pairs, as a fraction of the window side (min, max);
#: suites may ask for larger ones (option ``motion``), e.g. where a same-position copy is too good
DEFAULT_MOTION = (0.06, 0.12)
#: smallest side of a training window, as a share of the centred window's side
TRAIN_WINDOW_MIN = 0.6


@dataclass(frozen=True)
class FramePair:
    """Two frames of one scene: ``a`` is reconstructed / colourised from reference ``b``."""

    name: str
    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class CameraMotion:
    """The synthetic camera motion between the two frames of an embedded pair."""

    shift_yx: tuple[float, float]
    rotation_deg: float
    scale: float
    gain: float
    offset: float


# ----------------------------------------------------------------------------- image helpers
def as_rgb_float(image: np.ndarray) -> np.ndarray:
    """Any skimage/imageio array -> float32 H x W x 3 in [0, 1] (grey replicated, alpha dropped)."""
    from skimage import color, util

    img = np.asarray(image)
    if img.ndim == 2:
        img = color.gray2rgb(img)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = color.rgba2rgb(img)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB or grey image, got shape {img.shape}")
    return np.clip(util.img_as_float32(img), 0.0, 1.0).astype(np.float32)


#: the most pixels a --data image may hold once decoded (after a JPEG's reduced decode): a
#: 144-megapixel PNG took 6 GB and minutes per cell to decode and resize; 50 megapixels covers the
#: largest camera sensors (8688 x 5792) and costs about 0.6 GB as float32 RGB
MAX_IMAGE_PIXELS = 50_000_000
#: modes PIL converts to RGB exactly (palette without transparency, grey, CMYK, YCbCr, HSV ...)
_DIRECT_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV")
#: modes with an alpha channel: composited over white, as an image viewer shows them
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: 16-bit grey (PNG, TIFF): full scale is 65535
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _open(path: Path) -> "Image.Image":
    """``PIL.Image.open`` with attnbench's own pixel limit (checked by the caller, with a hint) in
    place of PIL's decompression-bomb warning/error; an empty or unreadable file is a UserError."""
    import warnings

    from PIL import Image

    try:
        empty = Path(path).stat().st_size == 0
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if empty:
        raise UserError(f"cannot read image {path}: the file is empty (0 bytes)")
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our limit is checked on the size, before decoding
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(path)
    except Exception as exc:  # PIL raises many types; the user only needs the file and why
        raise UserError(f"cannot read image {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(f"image {path} is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the "
                        f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels attnbench decodes; resize it first, e.g. "
                        f"`python -c \"from PIL import Image; im = Image.open('IN'); im.thumbnail((4096, 4096)); "
                        f"im.save('OUT')\"`")


def pil_to_rgb(image: "Image.Image", path: Path) -> np.ndarray:
    """A PIL image of any mode -> float32 H x W x 3 in [0, 1]; a mode without a known mapping to RGB
    (LAB, 32-bit integers beyond 16 bits, floats outside [0, 1]) is a UserError naming file and mode.

    Why by mode: reading the array and guessing from its channel count (what skimage does) takes a
    CMYK JPEG for RGBA and turns a pure red picture white, and clips 16-bit grey to 8 bits."""
    from PIL import Image

    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _DIRECT_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.float32) / 255.0
    if mode in _GREY16_MODES or mode in ("I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        if mode in _GREY16_MODES:
            grey = grey / 65535.0
        elif mode == "I":
            if grey.size and (grey.min() < 0 or grey.max() > 65535):
                raise UserError(f"image {path}: mode I (32-bit integers) with values in [{grey.min():g}, {grey.max():g}] "
                                "cannot be mapped to RGB (expected 16-bit values, 0-65535)")
            grey = grey / 65535.0
        elif grey.size and (not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1):
            raise UserError(f"image {path}: mode F (floats) with values outside [0, 1] cannot be mapped to RGB")
        return np.repeat(grey.astype(np.float32)[..., None], 3, axis=2)
    raise UserError(f"image {path}: mode {mode} cannot be mapped to RGB; save it as RGB, grey or CMYK")


def read_image(path: Path, size: Optional[int] = None) -> np.ndarray:
    """Read one image file as float32 RGB in [0, 1], through PIL whatever its container: EXIF
    orientation applied, then :func:`pil_to_rgb`. With ``size`` (the square side the cell needs), a
    JPEG is decoded reduced (``draft``: 1/2, 1/4, 1/8 scale, never below ``size``), and an image whose
    short side is below ``size`` is refused (:func:`check_side`). Any failure is a UserError naming the file."""
    from PIL import ImageOps

    image = _open(path)
    try:
        with image:
            if size is not None and image.format == "JPEG":
                image.draft(None, (size, size))
            _check_pixels(path, *image.size)
            if size is not None:
                check_side(path, *image.size, size)
            return pil_to_rgb(ImageOps.exif_transpose(image), path)
    except UserError:
        raise
    except Exception as exc:  # truncated data, a codec error: the user only needs the file and why
        raise UserError(f"cannot read image {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def check_side(path: Path, width: int, height: int, size: int) -> None:
    """Refuse to upscale: an image whose short side is below the cell's size is a UserError.

    Why not upscale with a note: interpolated pixels are smooth, so patch matching on them is easier
    and the quality figure then describes the interpolation, not the user's data (a 1x1 pair
    becomes a flat image every mechanism reconstructs perfectly)."""
    if min(width, height) < size:
        raise UserError(f"image {path} is {width}x{height}, smaller than the {size} px square the cell needs "
                        f"(attnbench does not upscale: it would invent the pixels the attention matches); "
                        f"use --sizes {min(width, height)} or smaller, or larger images")


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize (anti-aliased) to ``size`` x ``size``."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = image[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(crop, dtype=np.float32)
    out = resize(crop, (size, size), order=1, anti_aliasing=side > size, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def read_image_shape(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels, as displayed (EXIF
    orientation applied); an empty, unreadable or too large file is a UserError naming it."""
    image = _open(path)
    with image:
        width, height = image.size
        _check_pixels(path, width, height)
        try:
            rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation: 90 degrees
        except Exception as exc:  # a PNG's EXIF chunk may follow truncated pixel data
            raise UserError(f"cannot read image {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    return (height, width) if rotated else (width, height)


def read_square(path: Path, size: int) -> np.ndarray:
    """``square_resize(read_image(path), size)``, through the run's resized-image cache when it has
    one (``RunContext.resized_images``: a huge --data image is resized once per run, not per cell)."""
    from ..context import current

    folder = current().resized_images
    if not folder:
        return square_resize(read_image(path, size), size)
    stat = Path(path).stat()
    key = hashlib.sha1(f"{Path(path).resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{size}".encode()).hexdigest()
    cached = Path(folder) / f"{key}.npy"
    try:
        return np.load(cached)
    except (OSError, ValueError):
        pass
    image = square_resize(read_image(path, size), size)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    try:
        np.save(tmp, image)
        os.replace(tmp, cached)  # atomic: a concurrent cell reads the whole file or none
    except OSError:
        pass  # a cache that cannot be written only costs time
    return image


def square_pair(pair: FramePair, size: int) -> FramePair:
    """The same centre crop and resize applied to both frames."""
    return FramePair(pair.name, square_resize(pair.a, size), square_resize(pair.b, size))


def to_tensor(images: list[np.ndarray]):
    """List of H x W x 3 arrays -> (B, 3, H, W) float32 torch tensor."""
    import torch

    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


# ----------------------------------------------------------------------------- embedded pairs
def load_photo(name: str) -> np.ndarray:
    from skimage import data

    return as_rgb_float(getattr(data, name)())


def check_motion(motion: "tuple[float, float] | list[float]") -> tuple[float, float]:
    """A (min, max) shift fraction that motion_pair can honour: 0 <= min <= max <= 0.35."""
    try:
        lo, hi = (float(v) for v in motion)
    except (TypeError, ValueError):
        raise UserError(f"motion must be two numbers [min, max] (shift as a fraction of the frame), got {motion!r}") from None
    if not 0.0 <= lo <= hi <= 0.35:
        raise UserError(f"motion must satisfy 0 <= min <= max <= 0.35 (fractions of the frame), got {[lo, hi]}")
    return lo, hi


def window_fraction(motion: tuple[float, float]) -> float:
    """Side of frame A's window as a fraction of the photo's short side: 0.72 for the default
    motion, smaller for larger shifts so that frame B's moved window still lies in the photo."""
    return min(0.72, 0.9 / (1.0 + 2.0 * motion[1]))


def draw_motion(rng: np.random.Generator, side: int, shift: tuple[float, float] = DEFAULT_MOTION) -> CameraMotion:
    """A camera motion typical of video frames ~10 apart: far matches, small rotation and zoom."""
    magnitude = rng.uniform(*shift) * side
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return CameraMotion(
        shift_yx=(magnitude * math.sin(angle), magnitude * math.cos(angle)),
        rotation_deg=float(rng.uniform(-4.0, 4.0)),
        scale=float(rng.uniform(0.92, 1.08)),
        gain=float(rng.uniform(0.85, 1.15)),
        offset=float(rng.uniform(-0.04, 0.04)),
    )


def _window_map(motion: CameraMotion, centre_yx: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """Map (x, y) coordinates of frame B's window to photo coordinates (skimage ``warp`` order)."""
    theta = math.radians(motion.rotation_deg)
    cos, sin = math.cos(theta) * motion.scale, math.sin(theta) * motion.scale
    cy, cx = centre_yx
    dy, dx = motion.shift_yx

    def inverse_map(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0] - cx, xy[:, 1] - cy
        return np.stack([cos * x - sin * y + cx + dx, sin * x + cos * y + cy + dy], axis=1)

    return inverse_map


def frame_window(h: int, w: int, shift: tuple[float, float], rng: Optional[np.random.Generator]) -> tuple[int, int, int]:
    """Frame A's window (y0, x0, side) in an h x w photo: centred, or with ``rng`` a random place
    and size that still leaves room for the largest camera shift (plus rotation and zoom)."""
    side = int(window_fraction(shift) * min(h, w))
    if rng is None:
        return (h - side) // 2, (w - side) // 2, side
    side = max(8, int(side * rng.uniform(TRAIN_WINDOW_MIN, 1.0)))
    margin = int(math.ceil(side * (shift[1] + 0.1)))

    def offset(extent: int) -> int:
        free = extent - side
        return int(rng.integers(margin, free - margin + 1)) if free > 2 * margin else free // 2

    y0 = offset(h)
    return y0, offset(w), side


def motion_pair(photo: np.ndarray, name: str, rng: np.random.Generator,
                shift: tuple[float, float] = DEFAULT_MOTION, vary_window: bool = False) -> FramePair:
    """Cut frames A and B from one photo; B is seen by a moved camera (see module docstring);
    ``vary_window``: A's window at a random place and size (training pairs)."""
    from skimage.transform import warp

    h, w = photo.shape[:2]
    y0, x0, side = frame_window(h, w, shift, rng if vary_window else None)
    a = photo[y0 : y0 + side, x0 : x0 + side]
    centre = (y0 + (side - 1) / 2.0, x0 + (side - 1) / 2.0)
    corners = np.array([[x0, y0], [x0 + side - 1, y0], [x0, y0 + side - 1], [x0 + side - 1, y0 + side - 1]], float)
    for _ in range(100):  # redraw until frame B's window lies inside the photo
        motion = draw_motion(rng, side, shift)
        mapped = _window_map(motion, centre)(corners)
        if mapped.min() >= 0 and mapped[:, 0].max() <= w - 1 and mapped[:, 1].max() <= h - 1:
            break
    else:  # pragma: no cover - the margins above always leave room within a few draws
        raise RuntimeError(f"no camera motion fits inside {name}")
    full = warp(photo, _window_map(motion, centre), order=1, mode="edge", preserve_range=True)
    b = full[y0 : y0 + side, x0 : x0 + side] * motion.gain + motion.offset
    return FramePair(name, np.ascontiguousarray(a, np.float32), np.clip(b, 0.0, 1.0).astype(np.float32))


def stereo_pair() -> FramePair:
    from skimage import data

    left, right, _disparity = data.stereo_motorcycle()
    return FramePair("motorcycle", as_rgb_float(left), as_rgb_float(right))


def embedded_pairs(count: int, seed: int = 0, photos: Optional[tuple[str, ...]] = None,
                   include_stereo: bool = True, shift: tuple[float, float] = DEFAULT_MOTION,
                   vary_window: bool = False) -> list[FramePair]:
    """The first ``count`` embedded pairs: the stereo pair, then one motion per photo, round-robin
    (``shift``: the range of the camera shift, fractions of the frame; ``vary_window``: see
    motion_pair)."""
    photos = MOTION_PHOTOS if photos is None else photos
    out: list[FramePair] = [stereo_pair()] if include_stereo and count > 0 else []
    cache: dict[str, np.ndarray] = {}
    motion = 0
    while len(out) < count:
        for index, name in enumerate(photos):
            if len(out) >= count:
                break
            photo = cache.setdefault(name, load_photo(name))
            rng = np.random.default_rng((seed, MOTION_PHOTOS.index(name) if name in MOTION_PHOTOS else index, motion))
            out.append(motion_pair(photo, f"{name}-m{motion}", rng, shift, vary_window))
        motion += 1
    return out


def embedded_split(split: str, count: int, seed: int = 0, shift: tuple[float, float] = DEFAULT_MOTION) -> list[FramePair]:
    """Training pairs come from TRAIN_PHOTOS; test pairs are the stereo pair and held-out photos."""
    if split == "train":
        return embedded_pairs(count, seed, TRAIN_PHOTOS, include_stereo=False, shift=shift, vary_window=True)
    held_out = tuple(p for p in MOTION_PHOTOS if p not in TRAIN_PHOTOS)
    return embedded_pairs(count, seed + 1000, held_out, include_stereo=True, shift=shift)


def embedded_motion(options: dict) -> tuple[float, float]:
    """The camera-shift range a cell's embedded pairs use (option ``motion``, else the default)."""
    motion = options.get("motion")
    return DEFAULT_MOTION if motion is None else check_motion(motion)


# ----------------------------------------------------------------------------- user data
def _images_in(folder: Path) -> list[Path]:
    """The image files of a folder, by suffix; one that cannot be read as a file (a symlink loop, a
    dangling link, a folder named like an image) is a UserError naming it, never silently skipped."""
    found = []
    for path in folder.iterdir():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            path.resolve(strict=True)
            regular = path.is_file()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
            raise UserError(f"--data: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not regular:
            raise UserError(f"--data: {path} is not a regular file")
        found.append(path)
    return sorted(found)


def load_pair(name: str, path_a: Path, path_b: Path, size: Optional[int] = None) -> FramePair:
    """A user pair at full size, or centre-cropped and resized to ``size`` (through the run's cache)."""
    if size is not None:
        if read_image_shape(path_a) != read_image_shape(path_b):
            load_pair(name, path_a, path_b)  # the full-size check below names the sizes
        return FramePair(name, read_square(path_a, size), read_square(path_b, size))
    a, b = read_image(path_a), read_image(path_b)
    if a.shape != b.shape:
        raise UserError(f"frames of pair {name!r} differ in size: {path_a} is {a.shape[1]}x{a.shape[0]}, "
                        f"{path_b} is {b.shape[1]}x{b.shape[0]}")
    return FramePair(name, a, b)


def davis_root(folder: Path) -> Optional[Path]:
    """The ``<res>`` folder holding sequence folders, if ``folder`` is DAVIS-style; else None."""
    if (folder / "JPEGImages").is_dir():
        folder = folder / "JPEGImages"
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if folder.name == "JPEGImages" and subdirs:
        preferred = [p for p in subdirs if p.name == "480p"]
        return preferred[0] if preferred else subdirs[0]
    if subdirs and all(len(_images_in(d)) > 2 for d in subdirs) and not any(_images_in(folder)):
        return folder  # a <res> folder: sequences of many frames each
    return None


def davis_pair_paths(res_folder: Path, split: str, gap: int = DAVIS_GAP) -> list[tuple[str, Path, Path]]:
    sequences = sorted(p for p in res_folder.iterdir() if p.is_dir())
    if not sequences:
        raise UserError(f"{res_folder}: no sequence folders; expected JPEGImages/<res>/<sequence>/*.jpg")
    sequences = split_entries(sequences, split)
    per_sequence = []
    for seq in sequences:
        frames = _images_in(seq)
        per_sequence.append([(f"{seq.name}/{frames[t].stem}", frames[t], frames[t + gap])
                             for t in range(0, len(frames) - gap, gap)])
    ordered = [pairs[i] for i in range(max(map(len, per_sequence), default=0)) for pairs in per_sequence if i < len(pairs)]
    if not ordered:
        raise UserError(f"{res_folder}: no sequence has {gap + 1} frames or more (pairs are {gap} frames apart)")
    return ordered


def folder_pair_paths(folder: Path) -> list[tuple[str, Path, Path]]:
    """``NAME_a``/``NAME_b`` files, or sub-folders of exactly two images."""
    found: list[tuple[str, Path, Path]] = []
    files = {p.stem: p for p in _images_in(folder)}
    for stem, path in sorted(files.items()):
        if stem.endswith("_a"):
            other = files.get(stem[:-2] + "_b")
            if other is None:
                raise UserError(f"{path}: no matching {stem[:-2]}_b image (pairs are NAME_a.EXT + NAME_b.EXT)")
            found.append((stem[:-2], path, other))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = _images_in(sub)
        if len(images) != 2:
            raise UserError(f"{sub}: a pair folder must hold exactly two images, found {len(images)}")
        found.append((sub.name, images[0], images[1]))
    return found


def user_pair_paths(folder: str | Path, split: str = "all") -> list[tuple[str, Path, Path]]:
    """Find the pairs in a user folder (layouts in the module docstring), without reading them."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--data {folder}: not a folder")
    davis = davis_root(root)
    if davis is not None:
        return davis_pair_paths(davis, split)
    found = folder_pair_paths(root)
    if not found:
        raise UserError(f"--data {folder}: no image pairs found; expected NAME_a.png + NAME_b.png files, "
                        "sub-folders of two images, or JPEGImages/<res>/<sequence>/*.jpg (DAVIS)")
    return split_entries(found, split)


def split_entries(entries: list, split: str) -> list:
    """The last fifth (at least one) is the test split, the rest training; one entry serves both."""
    if split == "all" or len(entries) < 2:
        return entries
    n_test = max(1, len(entries) // 5)
    return entries[: len(entries) - n_test] if split == "train" else entries[len(entries) - n_test :]


def user_pairs(folder: str | Path, count: int, split: str = "all", size: Optional[int] = None) -> list[FramePair]:
    """Read the first ``count`` pairs of ``split`` (``all``, ``train``, ``test``) of a user folder,
    at full size or square at ``size``."""
    return [load_pair(*entry, size=size) for entry in user_pair_paths(folder, split)[:count]]


def check_user_images(folder: str | Path, count: int, size: Optional[int] = None) -> int:
    """Read (fully decode) the first ``count`` pairs of a user folder before any cell runs, as the
    cells will (``size``: the largest square side they need); return how many pairs it holds. An
    empty folder, one without pairs, an unreadable, empty, truncated, too large or too small
    image, or one whose mode has no RGB mapping is a UserError naming the file."""
    entries = user_pair_paths(folder, "all")
    for entry in entries[:max(count, 1)]:
        load_pair(*entry, size=size)
    return len(entries)


def task_pairs(options: dict, count: int, seed: int, split: str = "all", size: Optional[int] = None) -> list[FramePair]:
    """The pairs a cell uses: ``options['data']`` (from ``--data``) when set, else the embedded ones;
    with ``size``, user pairs come square at that size (resized once per run, see read_square)."""
    folder = options.get("data")
    if folder:
        return user_pairs(folder, count, split, size)
    shift = embedded_motion(options)
    if split == "all":
        return embedded_pairs(count, seed, shift=shift)
    return embedded_split(split, count, seed, shift)


def data_identity(options: dict) -> str:
    """A string that changes when the data a cached network was trained on changes."""
    folder = options.get("data")
    if not folder:
        shift = embedded_motion(options)
        return f"embedded-v{EMBEDDED_VERSION}" + ("" if shift == DEFAULT_MOTION else f"-motion{shift[0]:g}-{shift[1]:g}")
    entries = user_pair_paths(folder, "train")
    stamp = repr([(name, str(a), a.stat().st_size, b.stat().st_size) for name, a, b in entries])
    return f"user:{Path(folder).resolve()}:{hashlib.sha1(stamp.encode()).hexdigest()[:12]}"
