"""Quality metrics against values computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from attnbench.tasks import metrics


def test_l1_l2_and_psnr_of_a_constant_error() -> None:
    truth = np.zeros((8, 8, 3))
    result = np.full((8, 8, 3), 0.1)
    assert metrics.l1(result, truth) == pytest.approx(0.1)
    assert metrics.l2(result, truth) == pytest.approx(0.01)
    assert metrics.psnr(result, truth) == pytest.approx(20.0)  # 10 log10(1 / 0.01)


def test_masked_errors_count_only_the_hole() -> None:
    truth = np.zeros((4, 4, 3))
    result = truth.copy()
    result[:2] = 0.5
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    assert metrics.l1(result, truth, mask) == pytest.approx(0.5)
    assert metrics.l2(result, truth, mask) == pytest.approx(0.25)
    assert metrics.l2(result, truth) == pytest.approx(0.125)


def test_ssim_is_one_for_identical_and_lower_for_noisy_images() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3))
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert metrics.ssim(np.clip(img + rng.normal(0, 0.2, img.shape), 0, 1), img) < 0.9


def test_total_variation_of_a_vertical_edge() -> None:
    img = np.zeros((4, 5, 3))
    img[:, 2:] = 1.0  # one jump of 1 per row, between columns 1 and 2
    # horizontal differences: 4 rows x 4 pairs, one of which jumps -> mean 1/4; vertical: 0
    assert metrics.tv(img) == pytest.approx(0.25)
    assert metrics.tv(np.full((4, 4, 3), 0.3)) == 0.0


def test_all_metrics_and_their_mean() -> None:
    truth = np.zeros((16, 16, 3))
    one = metrics.all_metrics(np.full_like(truth, 0.1), truth)
    assert set(one) == {"l1", "l2", "psnr", "ssim", "tv"}
    two = metrics.all_metrics(np.full_like(truth, 0.3), truth)
    assert metrics.mean_metrics([one, two])["l1"] == pytest.approx(0.2)
