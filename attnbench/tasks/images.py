"""One image file in, float32 RGB in [0, 1] out: the single decoding path of --data images.

Why one path: every suite must see the same pixels for the same file, whatever its container or
mode. :func:`read_image` goes through PIL, applies the EXIF orientation, then converts by the
file's mode (CMYK, palette, 16-bit grey, YCbCr ...; grey replicated to RGB, alpha composited over
white). An unreadable or empty file, an image with no RGB mapping (LAB), one above
:data:`MAX_IMAGE_PIXELS` or one smaller than the cell's size (never upscaled, see
:func:`check_side`) is a :class:`UserError` that names the file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:  # imported lazily at run time: PIL and torch are slow to import
    import torch
    from PIL import Image


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



def to_tensor(images: list[np.ndarray]) -> "torch.Tensor":
    """List of H x W x 3 arrays -> (B, 3, H, W) float32 torch tensor."""
    import torch

    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
