"""Cell runner of the ``search`` suite: how close an approximate search gets to the exact 1-NN.

Reconstruct frame A (queries) from frame B's patches (keys; values = B's pixels), as the PSAL
paper's reconstruction test does, and compare with the exact nearest neighbour found by brute
force on the same input, for several iteration counts (the convergence curve users need to pick
``iterations``):

* ``mse``: mean squared error of the reconstruction to A over valid query centres (rows sampled
  every ``row_step`` rows at large sizes, the same rows for both methods);
* ``mse_ratio``: that MSE over the exact 1-NN's (issue 3's target: <= 1.10 at 10 iterations);
* ``recall``: share of queries whose match is the exact 1-NN (meaningful for k = 1);
* ``distance_ratio``: mean patch distance of the matches over the exact one's.

The mechanism only sees the ``AttentionMechanism`` interface: the match of each query is read
back by appending the key centres' coordinates to the values (for k = 1 the output at a query is
exactly the value at its match).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..cells import CellSpec
from ..errors import UserError
from ..options import ImageOptions
from ..registry import mechanism
from ..tasks.data import FramePair, read_image, square_pair, stereo_pair, to_tensor, user_pairs


@dataclass(frozen=True)
class SearchOptions(ImageOptions):
    #: iteration counts of the convergence curve (the mechanism's own count is always added)
    iterations: list[int] = field(default_factory=list)
    #: above ``all_rows_up_to`` px the exact search runs on every ``row_step``-th row
    row_step: int = 1
    all_rows_up_to: int = 256
    #: a query/key image pair given by path (else ``data`` or the embedded stereo pair)
    query_image: Optional[str] = None
    key_image: Optional[str] = None


OPTIONS = SearchOptions


def load_frames(spec: CellSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(query frame A, key frame B) as (1, 3, S, S) tensors in [0, 1]."""
    opts = spec.options
    if opts.get("data"):
        pair = user_pairs(opts["data"], 1)[0]
    elif opts.get("query_image"):
        paths = [Path(opts["query_image"]), Path(opts["key_image"])]
        for path in paths:
            if not path.exists():
                raise UserError(f"image {path} not found (paths are relative to where attnbench runs); "
                                "run from the repository root or pass --data DIR")
        pair = FramePair(paths[0].stem, read_image(paths[0]), read_image(paths[1]))
    else:
        pair = stereo_pair()
    pair = square_pair(pair, spec.size)
    return to_tensor([pair.a]), to_tensor([pair.b])


def exact_matches(q: torch.Tensor, k: torch.Tensor, rows: list[int], patch_size: int) -> torch.Tensor:
    """Valid-grid index of the exact l2 nearest key patch for every query on ``rows`` (brute force)."""
    r = patch_size // 2
    keys = F.unfold(k, patch_size)[0]  # (d, n_valid)
    neg_norm = -(keys * keys).sum(0)
    padded = F.pad(q, (r, r, r, r), mode="replicate")
    best = []
    for y in rows:
        patches = F.unfold(padded[:, :, y : y + patch_size], patch_size)[0].T  # (W, d)
        best.append(torch.addmm(neg_norm, patches, keys, alpha=2.0).argmax(1))
    return torch.stack(best)  # (rows, W)


def patch_distance(q: torch.Tensor, k: torch.Tensor, rows: list[int], index: torch.Tensor, patch_size: int) -> torch.Tensor:
    r = patch_size // 2
    keys = F.unfold(k, patch_size)[0]
    padded = F.pad(q, (r, r, r, r), mode="replicate")
    out = []
    for i, y in enumerate(rows):
        patches = F.unfold(padded[:, :, y : y + patch_size], patch_size)[0]  # (d, W)
        out.append(((patches - keys[:, index[i]]) ** 2).sum(0))
    return torch.stack(out)


def run(spec: CellSpec) -> dict[str, Any]:
    opts = spec.options
    p, r = spec.patch_size, spec.patch_size // 2
    q, k = load_frames(spec)
    size = spec.size
    step = int(opts.get("row_step", 1)) if size > int(opts.get("all_rows_up_to", 256)) else 1
    rows = list(range(r, size - r, step))
    cols = slice(r, size - r)
    grid_w = size - p + 1

    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    values = torch.cat([k, ys[None, None], xs[None, None]], 1)  # RGB + the key centre's coordinates
    target = q[0][:, rows][:, :, cols]

    t0 = time.perf_counter()
    exact = exact_matches(q, k, rows, p)
    exact_time = time.perf_counter() - t0
    ey, ex = exact // grid_w + r, exact % grid_w + r
    exact_mse = float(((k[0][:, ey, ex][:, :, cols] - target) ** 2).mean())
    exact_dist = patch_distance(q, k, rows, exact, p)[:, cols].mean()

    metrics: dict[str, Any] = {"exact_mse": exact_mse, "exact_time_s": exact_time, "rows_sampled": len(rows),
                               "row_step": step, "convergence": []}
    base = mechanism(spec.mechanism, patch_size=p, default_seed=spec.seed, **spec.params)
    metrics["resolved_params"] = base.params()  # defaults included (search_k, seed, backend...)
    target_iterations = metrics["resolved_params"].get("iterations")
    counts = sorted(set(opts.get("iterations", [])) | ({target_iterations} if target_iterations else set()))
    for iterations in counts or [None]:
        extra = {} if iterations is None else {"iterations": iterations}
        module = mechanism(spec.mechanism, patch_size=p, default_seed=spec.seed, **{**spec.params, **extra})
        t0 = time.perf_counter()
        with torch.no_grad():
            out = module(q, k, values)[0]
        elapsed = time.perf_counter() - t0
        recon = out[:3][:, rows][:, :, cols]
        my = out[3][rows].round().long() - r
        mx = out[4][rows].round().long() - r
        index = (my.clamp(0, grid_w - 1) * grid_w + mx.clamp(0, grid_w - 1))
        mse = float(((recon - target) ** 2).mean())
        point = {
            "iterations": iterations,
            "mse": mse,
            "mse_ratio": mse / exact_mse if exact_mse > 0 else float("nan"),
            "recall": float((index == exact)[:, cols].float().mean()),
            "distance_ratio": float(patch_distance(q, k, rows, index, p)[:, cols].mean() / exact_dist),
            "time_s": elapsed,
        }
        metrics["convergence"].append(point)
        if iterations == target_iterations or iterations is None:
            metrics.update({key: point[key] for key in ("mse", "mse_ratio", "recall", "distance_ratio")})
            metrics["time_s"] = elapsed
    return metrics
