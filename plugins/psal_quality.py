"""How good is PSAL's search? Convergence against exact k-NN, per iteration count.

The paper reports end-task quality only; users picking ``iterations`` need the search's own
curve: the recall of the exact nearest neighbour and how far PSAL's best patch is from the exact
best, as iterations grow. ``python -m attnbench_plugins.psal_quality IMG_Q IMG_K`` prints it.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .psal import PSAL, KnnExact


@dataclass(frozen=True)
class ConvergencePoint:
    iterations: int
    #: fraction of queries whose best PSAL match is as good as the exact 1-NN (ties count)
    recall: float
    #: mean best-match cost of PSAL / of the exact search (l2: >= 1, 1 = exact); dot: S_exact / S_psal
    distance_ratio: float
    #: cost evaluations made by the search per query
    evaluations_per_query: float


def _best_cost(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, patch_size: int, dot: bool) -> torch.Tensor:
    best = idx[..., :1].contiguous()
    return -torch.ops.attnbench.psal_similarity(q, k, best, patch_size, dot)[..., 0]


@torch.no_grad()
def convergence(
    q: torch.Tensor,
    k: torch.Tensor,
    iterations: Sequence[int] = (1, 2, 3, 5, 10),
    k_nn: int = 1,
    patch_size: int = 7,
    similarity: str = "l2",
    seed: int = 0,
    key_mask: Optional[torch.Tensor] = None,
) -> list[ConvergencePoint]:
    """PSAL-``k_nn`` search quality against ``knn-exact`` on the same (q, k), per iteration count."""
    dot = similarity == "dot"
    exact = KnnExact(k=1, patch_size=patch_size, similarity=similarity).search(q, k, key_mask)
    exact_cost = _best_cost(q, k, exact, patch_size, dot)
    tolerance = 1e-5 * exact_cost.abs().clamp(min=1.0)
    points = []
    for n in iterations:
        psal = PSAL(k=k_nn, iterations=n, seed=seed, patch_size=patch_size, similarity=similarity)
        idx = psal.search(q, k, key_mask)
        cost = _best_cost(q, k, idx, patch_size, dot)
        recall = float((cost <= exact_cost + tolerance).double().mean())
        ratio = float(cost.double().mean() / exact_cost.double().mean())
        evals = float(psal.last_evaluations.double().sum()) / (q.shape[0] * q.shape[2] * q.shape[3])
        points.append(ConvergencePoint(n, recall, ratio, evals))
    return points


def reconstruction_mse(out: torch.Tensor, target: torch.Tensor, patch_size: int) -> float:
    """MSE over query centres whose whole patch is inside the image (border queries excluded)."""
    r = patch_size // 2
    h, w = target.shape[-2:]
    return float(((out - target)[..., r : h - r, r : w - r] ** 2).mean())


def load_rgb(path: str, size: Optional[int] = None) -> torch.Tensor:
    """An image file as (1, 3, H, W) float32 in [0, 1], optionally resized to size x size."""
    from skimage import io, transform

    image = io.imread(path).astype(np.float32) / 255.0
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = image[..., :3]
    if size is not None and image.shape[:2] != (size, size):
        image = transform.resize(image, (size, size), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].contiguous()


def table(points: Sequence[ConvergencePoint]) -> pd.DataFrame:
    return pd.DataFrame([asdict(p) for p in points])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", help="image whose patches are searched for (e.g. img2_512.png)")
    parser.add_argument("keys", help="image searched in (e.g. img1_512.png)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--iterations", default="1,2,3,5,10")
    args = parser.parse_args(argv)
    q, k = load_rgb(args.queries, args.size), load_rgb(args.keys, args.size)
    points = convergence(q, k, [int(s) for s in args.iterations.split(",")], k_nn=args.k, patch_size=args.patch_size)
    print(table(points).to_string(index=False))


if __name__ == "__main__":
    main()
