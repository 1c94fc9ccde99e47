"""Training-free inpainting with masked attention (the protocol of the ``inpainting`` suite).

Why training-free: the paper's inpainting claim (Table 6) is that PSAL replaces the Full
attention of Contextual Attention with no loss of quality. Re-training that GAN (800k steps on
Places2) is out of reach on a CPU, and a network trained for a few minutes would measure its
training noise more than its attention. Here every mechanism gets the same coarse fill and the
same fixed refinement, so any difference in the result is the attention's: which known patches
it finds for the hole, exactly the role the attention plays inside Contextual Attention.

Protocol, per image:

1. holes: ``holes`` rectangles with sides drawn in ``[hole_min, hole_max]`` x image size,
   inside the image and away from its border, from ``numpy.random.default_rng((seed, index))``;
2. coarse fill: ``skimage.restoration.inpaint_biharmonic`` (smooth, no texture);
3. ``iterations`` refinements: masked attention with queries = the patches of the current image
   over each hole (the hole's bounding box, with a margin of p // 2 so that every query sees a
   real patch), keys and values = the whole image with ``key_mask`` = the holes, so only patches
   wholly in the known region are copied; the hole pixels take the attention output. The next
   iteration's queries contain the previous fill, which sharpens it (as in Wexler et al.'s
   patch-based completion).

With ``query_region = "image"`` every pixel is a query (the layer sees the whole image, as a
network layer would; the high-resolution demonstration uses this), and only hole pixels are
replaced. Metrics: l1, l2, PSNR, TV, SSIM on the whole image (as the paper), plus l1 and l2 over
the hole pixels only and the coarse fill's figures for reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..interface import AttentionMechanism
from ..measure.call import AttentionCall


@dataclass(frozen=True)
class InpaintingCase:
    name: str
    image: np.ndarray  # H x W x 3 float32 in [0, 1], the ground truth
    mask: np.ndarray  # H x W bool, True = hole
    holes: tuple[tuple[int, int, int, int], ...]  # (y0, x0, y1, x1), end exclusive


def draw_holes(size: int, rng: np.random.Generator, count: int, smallest: float, largest: float,
               margin: int) -> tuple[tuple[int, int, int, int], ...]:
    """Rectangles inside the image, at least ``margin`` pixels from its border."""
    holes = []
    for _ in range(count):
        h, w = (int(round(rng.uniform(smallest, largest) * size)) for _ in range(2))
        h, w = max(1, min(h, size - 2 * margin - 1)), max(1, min(w, size - 2 * margin - 1))
        y0 = int(rng.integers(margin, size - margin - h + 1))
        x0 = int(rng.integers(margin, size - margin - w + 1))
        holes.append((y0, x0, y0 + h, x0 + w))
    return tuple(holes)


def make_case(name: str, image: np.ndarray, rng: np.random.Generator, count: int, smallest: float,
              largest: float, margin: int) -> InpaintingCase:
    size = image.shape[0]
    holes = draw_holes(size, rng, count, smallest, largest, margin)
    mask = np.zeros(image.shape[:2], bool)
    for y0, x0, y1, x1 in holes:
        mask[y0:y1, x0:x1] = True
    return InpaintingCase(name, image, mask, holes)


def coarse_fill(case: InpaintingCase) -> np.ndarray:
    """Biharmonic fill of the holes: a smooth first guess, as the coarse stage of the paper's network."""
    from skimage.restoration import inpaint_biharmonic

    damaged = np.where(case.mask[..., None], 0.0, case.image)
    filled = inpaint_biharmonic(damaged, case.mask, channel_axis=-1)
    return np.clip(filled, 0.0, 1.0).astype(np.float32)


def hole_boxes(case: InpaintingCase) -> list[tuple[int, int, int, int]]:
    """Bounding boxes of the connected holes (overlapping rectangles merge)."""
    from skimage.measure import label, regionprops

    return [tuple(int(c) for c in r.bbox) for r in regionprops(label(case.mask, connectivity=1))]  # type: ignore[misc]


def _chw(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device, dtype)


def attention_calls(module: AttentionMechanism, current: np.ndarray, case: InpaintingCase, device: torch.device,
                    dtype: torch.dtype, query_region: str) -> list[tuple[tuple[int, int, int, int], int, AttentionCall]]:
    """The masked-attention calls of one refinement: (query box, margin, call) per call (forward, no graph)."""
    keys = _chw(current, device, dtype)
    key_mask = torch.from_numpy(case.mask)[None, None].to(device)
    height, width = case.mask.shape
    if query_region == "image":
        boxes, r = [(0, 0, height, width)], 0
    else:
        boxes, r = hole_boxes(case), module.patch_size // 2
    calls = []
    for y0, x0, y1, x1 in boxes:
        qy0, qx0, qy1, qx1 = max(0, y0 - r), max(0, x0 - r), min(height, y1 + r), min(width, x1 + r)
        queries = keys[:, :, qy0:qy1, qx0:qx1]
        calls.append(((qy0, qx0, qy1, qx1), r, AttentionCall(module, queries, keys, keys, key_mask=key_mask)))
    return calls


def refine(module: AttentionMechanism, coarse: np.ndarray, case: InpaintingCase, iterations: int,
           device: torch.device, dtype: torch.dtype, query_region: str = "holes",
           run_call: Optional[Callable[[int, tuple[int, int, int, int], AttentionCall], torch.Tensor]] = None,
           ) -> np.ndarray:
    """Replace the hole pixels by the masked attention's output, ``iterations`` times.

    ``run_call(index, query_box, call)`` runs each attention call (index counts calls from 0);
    the suite runner uses it to measure the first call while doing the work.
    """
    current = coarse.copy()
    index = 0
    for _ in range(iterations):
        for box, _r, call in attention_calls(module, current, case, device, dtype, query_region):
            out = run_call(index, box, call) if run_call is not None else call()
            qy0, qx0, qy1, qx1 = box
            region = case.mask[qy0:qy1, qx0:qx1]
            target = current[qy0:qy1, qx0:qx1]
            target[region] = np.clip(out[0].permute(1, 2, 0).float().cpu().numpy()[region], 0.0, 1.0)
            index += 1
    return current


def upscaled_photo(name: str, size: int) -> np.ndarray:
    """A skimage photo, square-cropped and upscaled (bicubic) to ``size``: the high-resolution test image."""
    from skimage.transform import resize

    from .embedded import load_photo

    photo = load_photo(name)
    h, w = photo.shape[:2]
    side = min(h, w)
    crop = photo[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    return np.clip(resize(crop, (size, size), order=3, anti_aliasing=False), 0, 1).astype(np.float32)


def full_attention_estimate(shape_hw: tuple[int, int], channels: int, patch_size: int) -> Optional[int]:
    """Bytes Full attention (no stride) would need for one call over the whole image, if registered."""
    from ..errors import Unavailable, UserError
    from ..interface import ProblemShape
    from ..registry import mechanism

    try:
        full = mechanism("full", patch_size=patch_size)
    except (Unavailable, UserError):
        return None
    shape = ProblemShape(batch=1, channels=channels, value_channels=channels, query_hw=shape_hw, key_hw=shape_hw,
                         patch_size=patch_size)
    return int(full.estimate(shape).memory_bytes)

