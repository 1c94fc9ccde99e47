"""Small numerical summaries that tables and plots share: scaling exponents and Pareto fronts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: quality metrics where a larger value is better (every other metric: smaller is better)
HIGHER_IS_BETTER: frozenset[str] = frozenset({"psnr", "ssim", "accuracy"})
#: quality metrics in the order tables show them
QUALITY_METRICS: tuple[str, ...] = ("l2", "l1", "psnr", "ssim", "tv", "mse", "mse_ratio")


def fit_exponent(n: Sequence[float], values: Sequence[float]) -> float | None:
    """Exponent ``a`` of ``value ∝ n**a``, least squares on log-log; None without two distinct n.

    This is the measured counterpart of the paper's complexity column (O(n²) for Full, O(n) for PSAL).
    """
    x = np.asarray(n, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[keep], y[keep]
    if np.unique(x).size < 2:
        return None
    slope, _ = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope)


def pareto_front(cost: Sequence[float], error: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both cost and error (lower is better for both),
    ordered by cost: the trade-off curve of the paper's Figure 5."""
    c = np.asarray(cost, dtype=float)
    e = np.asarray(error, dtype=float)
    idx = [i for i in np.lexsort((e, c)) if np.isfinite(c[i]) and np.isfinite(e[i])]
    front: list[int] = []
    best = np.inf
    for i in idx:
        if e[i] < best:
            front.append(int(i))
            best = e[i]
    return front
