"""Cell runner of the ``inpainting`` suite (paper Table 6) and its high-resolution demonstration.

Training-free protocol (why, and the steps: :mod:`attnbench.tasks.inpainting`): biharmonic coarse
fill, then masked attention (queries over the holes, keys outside them, ``key_mask`` = holes)
refines the holes. Metrics l1, l2, PSNR, TV, SSIM of the whole image (``skimage.metrics``), l1/l2
over the holes, the coarse fill's figures, and the cost of the first attention call.

Options: ``images`` (default 4; frame A of the embedded pairs, or of ``--data`` pairs),
``holes`` per image (3), ``hole_min``/``hole_max`` (sides as a fraction of the image: 0.08/0.16),
``iterations`` (2), ``temperature`` (softmax temperature, default 1.0), ``query_region``
(``holes`` or ``image``), ``timing`` (false), ``memory_fraction`` (0.85).
``highres = true`` inpaints one photo (``photo``, default rocket) upscaled to the cell size
(>= 2000 px in the ``highres`` preset) and records what Full attention would need for the same
whole-image call (``full_estimated_memory_bytes``) beside the machine's memory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..cells import CellSpec
from ..errors import UnsupportedRequest
from ..interface import dtype_from_name
from ..measure.memory import total_memory_bytes
from ..measure.call import AttentionCall, CallBudget
from ..options import ImageOptions, MeasureOptions
from ..tasks.costs import build, measure_attention
from ..tasks.data import task_pairs
from ..tasks.images import square_resize
from ..tasks.examples import save_examples
from ..tasks.inpainting import InpaintingCase, coarse_fill, full_attention_estimate, make_case, refine, upscaled_photo
from ..tasks.metrics import all_metrics, l1, l2, mean_metrics, ssim, tv
from .reconstruction import check_task_spec, mechanism_params


@dataclass(frozen=True)
class InpaintingOptions(MeasureOptions, ImageOptions):
    #: images filled (frame A of the pairs)
    images: int = 4
    #: holes per image, their sides as a fraction of the image side
    holes: int = 3
    hole_min: float = 0.08
    hole_max: float = 0.16
    #: refinements of the coarse fill
    iterations: int = 2
    temperature: Optional[float] = None
    #: "holes" (queries over each hole) or "image" (every pixel is a query)
    query_region: str = "holes"
    timing: bool = False
    #: inpaint one photo upscaled to the cell size instead of the pairs
    highres: bool = False
    photo: str = "rocket"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query_region not in ("holes", "image"):
            raise UnsupportedRequest(f"inpainting: query_region must be 'holes' or 'image', got {self.query_region!r}")

    def images_needed(self) -> int:
        return self.images

    def measured(self) -> frozenset[str]:
        return frozenset({"memory", "flops", *(["time"] if self.timing else [])})


OPTIONS = InpaintingOptions


def cases(spec: CellSpec) -> list[InpaintingCase]:
    """The images of the cell with their holes, deterministic for the seed."""
    opts = InpaintingOptions.of(spec)
    if opts.highres:
        images = [(opts.photo, upscaled_photo(opts.photo, spec.size))]
    else:
        pairs = task_pairs(spec.options, opts.images, spec.seed, size=spec.size)
        images = [(p.name, square_resize(p.a, spec.size)) for p in pairs]
    margin = max(spec.patch_size, spec.size // 16)
    return [make_case(name, image, np.random.default_rng((spec.seed, index)), opts.holes,
                      opts.hole_min, opts.hole_max, margin)
            for index, (name, image) in enumerate(images)]


def run(spec: CellSpec) -> dict[str, Any]:
    check_task_spec(spec, "inpainting")
    if spec.batch != 1:
        raise UnsupportedRequest(f"inpainting fills one image at a time: batch must be 1, got {spec.batch}")
    opts = InpaintingOptions.of(spec)
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    module = build(spec.mechanism, spec.patch_size, mechanism_params(spec), spec.device)
    if not module.supports_mask:
        raise UnsupportedRequest(f"{spec.mechanism} does not support key_mask; inpainting needs masked attention "
                                 "(keys outside the hole only)")
    query_region, iterations = opts.query_region, opts.iterations

    metrics: dict[str, Any] = {"resolved_params": module.params()}
    budget = CallBudget.for_cell(spec, opts, opts.measured())

    def run_call(index: int, box: tuple[int, int, int, int], call: AttentionCall) -> torch.Tensor:
        if index or "flops" in metrics:
            return call()
        # the first call of the cell: estimate, refuse if it cannot fit, and measure it while it works
        qy0, qx0, qy1, qx1 = box
        metrics["query_hw"] = [qy1 - qy0, qx1 - qx0]
        out, cost = measure_attention(call, budget, known=metrics)
        metrics.update(cost)
        assert out is not None  # memory and FLOPs are always measured here
        return out

    per_image, coarse_scores, fill_time = [], [], 0.0
    all_cases = cases(spec)
    for case in all_cases:
        image_hw = case.mask.shape
        coarse = coarse_fill(case)
        coarse_scores.append({"coarse_l2": l2(coarse, case.image), "coarse_ssim": ssim(coarse, case.image),
                              "coarse_tv": tv(coarse)})
        t0 = time.perf_counter()
        result = refine(module, coarse, case, iterations, device, dtype, query_region, run_call)
        fill_time += time.perf_counter() - t0
        if case is all_cases[0]:
            save_examples(spec, result, {"input": np.where(case.mask[..., None], 1.0, case.image), "target": case.image})
        scores = all_metrics(result, case.image)
        scores.update(l1_hole=l1(result, case.image, case.mask), l2_hole=l2(result, case.image, case.mask))
        per_image.append(scores)

    metrics.update(mean_metrics(per_image))
    metrics.update(mean_metrics(coarse_scores))
    metrics["fill_time_s"] = round(fill_time, 3)
    metrics["hole_fraction"] = float(np.mean([c.mask.mean() for c in all_cases]))
    metrics["images"] = [c.name for c in all_cases]
    if opts.highres:
        hw = all_cases[0].mask.shape
        metrics["image_hw"] = list(hw)
        metrics["full_estimated_memory_bytes"] = full_attention_estimate(hw, 3, spec.patch_size)
        metrics["machine_memory_bytes"] = total_memory_bytes(spec.device)
    return metrics
