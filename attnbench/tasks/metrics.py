"""Image quality metrics of the task suites, on float RGB images in [0, 1] (H x W x 3).

Names match the result schema: ``l1``, ``l2`` (mean absolute / squared error over pixels and
channels, the paper's "l1 loss" and "l2 loss"), ``psnr`` (dB), ``ssim`` (in [0, 1]; the paper
prints x100) and ``tv`` (total variation of the result alone: mean absolute difference between
horizontal neighbours plus that between vertical neighbours, the TV loss of the inpainting code
the paper used; it measures smoothness and needs no ground truth). PSNR and SSIM come from
``skimage.metrics`` so that they agree with the rest of the field.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from skimage import metrics as skm


def l1(result: np.ndarray, truth: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean absolute error; with ``mask`` (H x W bool), over the masked pixels only."""
    err = np.abs(result.astype(np.float64) - truth)
    return float(err[mask].mean() if mask is not None else err.mean())


def l2(result: np.ndarray, truth: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean squared error; with ``mask`` (H x W bool), over the masked pixels only."""
    err = (result.astype(np.float64) - truth) ** 2
    return float(err[mask].mean() if mask is not None else err.mean())


def psnr(result: np.ndarray, truth: np.ndarray) -> float:
    return float(skm.peak_signal_noise_ratio(truth.astype(np.float64), result.astype(np.float64), data_range=1.0))


def ssim(result: np.ndarray, truth: np.ndarray) -> float:
    channel_axis = -1 if result.ndim == 3 else None
    return float(skm.structural_similarity(truth.astype(np.float64), result.astype(np.float64),
                                           data_range=1.0, channel_axis=channel_axis))


def tv(result: np.ndarray) -> float:
    """Anisotropic total variation per pixel: mean |dI/dx| + mean |dI/dy|."""
    img = result.astype(np.float64)
    return float(np.abs(np.diff(img, axis=1)).mean() + np.abs(np.diff(img, axis=0)).mean())


def all_metrics(result: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Every metric of Table 6 for one image."""
    return {"l1": l1(result, truth), "l2": l2(result, truth), "psnr": psnr(result, truth),
            "ssim": ssim(result, truth), "tv": tv(result)}


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over images (keys of the first image)."""
    return {key: float(np.mean([m[key] for m in per_image])) for key in per_image[0]}
