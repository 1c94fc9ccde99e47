"""Embedded frame pairs (no download): scikit-image ships every image used.

Why a camera motion: attention is only tested when the matches lie far apart, so the embedded
pairs carry a real one.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import UserError
from .images import as_rgb_float
from .pairs import FramePair

#: bump when the embedded pairs change, so that cached weights trained on old pairs are not reused
EMBEDDED_VERSION = 2
#: photographs (skimage.data names) the embedded camera-motion pairs are cut from
MOTION_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
#: the colorization split of the embedded data: train on these photos, test on the rest
TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "immunohistochemistry")
#: camera shift of the embedded motion pairs, as a fraction of the window side (min, max);
#: suites may ask for larger ones (option ``motion``), e.g. where a same-position copy is too good
DEFAULT_MOTION = (0.06, 0.12)
#: smallest side of a training window, as a share of the centred window's side
TRAIN_WINDOW_MIN = 0.6


@dataclass(frozen=True)
class CameraMotion:
    """The synthetic camera motion between the two frames of an embedded pair."""

    shift_yx: tuple[float, float]
    rotation_deg: float
    scale: float
    gain: float
    offset: float


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

