"""Small numerical summaries that tables and plots share: scaling exponents, Pareto fronts, crossovers."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..metrics import HIGHER_IS_BETTER, QUALITY_METRICS  # noqa: F401  (declared once, in the catalogue)

#: an exponent fitted through two noisy points says little: fits need at least this many sizes
MIN_FIT_POINTS = 3


def fit_exponent(n: Sequence[float], values: Sequence[float], min_points: int = MIN_FIT_POINTS) -> float | None:
    """Exponent ``a`` of ``value ∝ n**a``, least squares on log-log; None with fewer than ``min_points`` distinct n.

    This is the measured counterpart of the paper's complexity column (O(n²) for Full, O(n) for PSAL).
    """
    x = np.asarray(n, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[keep], y[keep]
    if np.unique(x).size < max(2, min_points):
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


def crossover(sizes: Sequence[float], values: Sequence[float], reference: Sequence[float]) -> tuple[str, float | None]:
    """The smallest image side at which ``values`` drops below ``reference`` (CAB's "efficiency length").

    Both curves are measured at ``sizes``; between two sizes where the ratio crosses 1 the crossing is
    interpolated on log-log axes (costs follow power laws). Returns ``(kind, size)``: ``"at"`` with the
    interpolated side, ``"below"`` (already less at the smallest size compared, returned), ``"never"``
    (more at every size compared; the largest one is returned) or ``"none"`` (no size with both).
    """
    pts = sorted((float(s), float(v) / float(r)) for s, v, r in zip(sizes, values, reference)
                 if all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in (s, v, r)))
    if not pts:
        return "none", None
    if pts[0][1] < 1:
        return "below", pts[0][0]
    for (s0, r0), (s1, r1) in zip(pts, pts[1:]):
        if r0 >= 1 > r1:
            t = math.log(r0) / (math.log(r0) - math.log(r1))
            return "at", math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0)))
    return "never", pts[-1][0]
