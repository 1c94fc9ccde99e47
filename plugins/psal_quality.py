"""How good is PSAL's search? Convergence against exact k-NN, per iteration count.

The paper reports end-task quality only; users picking ``iterations`` need the search's own
curve: the recall of the exact nearest neighbour and how far PSAL's best patch is from the exact
best, as iterations grow. ``python -m attnbench_plugins.psal_quality IMG_Q IMG_K`` prints it.
``... psal_quality --time-to-quality RECORDS.jsonl --plot FIG.png`` draws the search suite's
time-to-quality curves (MSE ratio vs seconds, per mechanism and size; ``--preset peers``) and
prints, per size, the fastest point of each mechanism within ``--quality`` (1.05) of exact
(both from :mod:`attnbench.report.time_to_quality`, which the HTML report uses too).
The measures (exact search, recall, distance ratio, image loading) are the search suite's own,
:mod:`attnbench.runners.search_quality`; this module only runs PSAL's search at each count.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch

from attnbench.runners import search_quality as sq
from attnbench.runners.search_quality import load_image, reconstruction_mse  # noqa: F401  (re-exported)

from .psal import PSAL
from .psal_contract import matchable_map


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
    """(B, Hq, Wq) cost of each query's best match ``idx[..., 0]`` (flat key-image indices)."""
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
    """PSAL-``k_nn`` search quality against the exact search on the same (q, k) (batch 1), per count."""
    dot = similarity == "dot"
    r, rows = patch_size // 2, list(range(q.shape[2]))
    valid = matchable_map(tuple(k.shape[2:]), patch_size, key_mask, 1, k.device)[0, r : k.shape[2] - r, r : k.shape[3] - r]
    exact = sq.exact_matches(q, k, rows, patch_size, dot, valid.flatten())
    exact_cost = sq.patch_cost(q, k, rows, exact, patch_size, dot)
    points = []
    for n in iterations:
        psal = PSAL(k=k_nn, iterations=n, seed=seed, patch_size=patch_size, similarity=similarity)
        best = psal.search(q, k, key_mask)[0, ..., 0]
        cost = sq.patch_cost(q, k, rows, sq.grid_index(best, k.shape[3], patch_size), patch_size, dot)
        evals = float(psal.last_evaluations.double().sum()) / (q.shape[0] * q.shape[2] * q.shape[3])
        points.append(ConvergencePoint(n, sq.recall(cost, exact_cost), sq.distance_ratio(cost, exact_cost), evals))
    return points


def load_rgb(path: str, size: Optional[int] = None) -> torch.Tensor:
    """An image file as (1, 3, H, W) float32 in [0, 1] (``size``: centre-cropped square, resized)."""
    return load_image(path, size)


def table(points: Sequence[ConvergencePoint]) -> pd.DataFrame:
    return pd.DataFrame([asdict(p) for p in points])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-to-quality", nargs="+", metavar="RECORDS", help="search-suite records (JSON Lines)")
    parser.add_argument("--plot", type=Path, help="where to draw the time-to-quality figure (PNG)")
    parser.add_argument("--quality", type=float, help="MSE ratio a method must reach (default: QUALITY_BAR, 1.05)")
    parser.add_argument("queries", nargs="?", help="image whose patches are searched for (e.g. img2_512.png)")
    parser.add_argument("keys", nargs="?", help="image searched in (e.g. img1_512.png)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--iterations", default="1,2,3,5,10")
    args = parser.parse_args(argv)
    if args.time_to_quality:
        from attnbench.errors import UserError
        from attnbench.report.plots import save
        from attnbench.report.time_to_quality import QUALITY_BAR, curve_points, figure, fastest_within
        from attnbench.schema import read_all

        try:
            points = curve_points(read_all(args.time_to_quality))
        except UserError as exc:
            parser.exit(2, f"psal_quality: {exc}\n")
        if points.empty:
            parser.exit(2, "psal_quality: no time-to-quality curves in these records "
                           "(they come from `attnbench run search --preset peers --data DIR`)\n")
        quality = QUALITY_BAR if args.quality is None else args.quality
        fig = figure(points, quality)
        if args.plot and fig is not None:
            save(fig, args.plot.with_suffix(""), [args.plot.suffix.lstrip(".") or "png"])
        print(fastest_within(points, quality).to_string(index=False))
        return
    if not (args.queries and args.keys):
        parser.error("give QUERIES and KEYS images, or --time-to-quality RECORDS")
    q, k = load_rgb(args.queries, args.size), load_rgb(args.keys, args.size)
    points = convergence(q, k, [int(s) for s in args.iterations.split(",")], k_nn=args.k, patch_size=args.patch_size)
    print(table(points).to_string(index=False))


if __name__ == "__main__":
    from attnbench.cli import closed_stdout

    try:
        main()
    except BrokenPipeError:  # `... | head`: stop quietly, as attnbench does
        sys.exit(closed_stdout())
