"""PSAL's coarse-to-fine initial field (``psal[init=pyramid]``): the classic multi-scale PatchMatch.

Why: a random initial field propagates slowly across large displacements (a good match travels
at most 15 px per Jacobi iteration), so on large images the full-size search needs many
iterations. Searching the query and key images average-pooled by ``scale ** level`` first, and
starting each finer level from the coarser level's matches (offsets scaled, clamped to the key
border), gives the full-size search a field that is already roughly right; the usual iterations
then refine it.

What makes the coarse levels pay (measured on the video pair and the embedded stereo pair,
docs/results.md): a coarse level searches patches of about the same image area as the full-size
patch (:func:`level_patch_size`: 3 x 3 on maps pooled by 2 for p = 7; p itself on the pooled maps
matched 4x the area and its field stalled above the random start's), keeps a wider heap than the
full size (``coarse_width``: the finer level starts from every entry, so it sees more hypotheses)
and runs its own iteration count; an iteration there costs a quarter of a full-size one.

Why here, in Python: every level is one call of the ``psal_search`` op with its ``init`` field
(psal.h "it = 0"), so the native CPU kernel, the CUDA kernels and the PyTorch reference share this
orchestration and differ only in what psal.h specifies; the kernels equal the reference bit for
bit with init=pyramid because they do without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .psal_contract import matchable_map

#: the ``init`` settings of a PSAL layer: "random" (psal.h's random field) or "pyramid" (this module)
INIT_RANDOM = "random"
INIT_PYRAMID = "pyramid"
INITS = (INIT_RANDOM, INIT_PYRAMID)

#: a search at one level: (q, k, valid, patch_size, width, iterations, schedule (psal.h code), init or None)
#: -> (idx (B, H, W, width) int64, n_evals (B,))
SearchAt = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int, int, Optional[torch.Tensor]],
                    tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Level:
    """One level: pooling factor, the pooled query and key sizes and the patch searched there."""

    factor: int
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]
    patch_size: int


@dataclass(frozen=True)
class Pyramid:
    """What the coarse levels do: how many, the pooling factor per level, their heap width, their
    iteration count and schedule (psal.h code; the full-size search keeps the layer's own) and
    how many of a coarse heap's best entries seed each finer query (the seed field is what the
    finer search holds besides its own memory)."""

    levels: int
    scale: int
    coarse_width: int
    coarse_iterations: int
    seed_width: int
    coarse_schedule: int


def level_patch_size(patch_size: int, factor: int) -> int:
    """The patch searched on maps pooled by ``factor``: the largest odd size covering at most the
    full-size patch's area (patch_size / factor), at least 3 (patch_size itself when smaller), so
    that a coarse cost ranks what the full-size cost ranks, blurred."""
    if factor == 1 or patch_size <= 3:
        return patch_size
    fits = patch_size // factor
    return max(3, fits if fits % 2 == 1 else fits - 1)


def coarse_levels(query_hw: tuple[int, int], key_hw: tuple[int, int], patch_size: int, levels: int,
                  scale: int) -> list[Level]:
    """The coarse levels searched, finest first: factor scale**l for l = 1..levels, stopping before
    a level whose key image is smaller than its patch or whose query image is empty (such a level
    has nothing to match, so fewer levels run; the full-size search always runs)."""
    out = []
    for level in range(1, levels + 1):
        f = scale**level
        p = level_patch_size(patch_size, f)
        q_hw, k_hw = (query_hw[0] // f, query_hw[1] // f), (key_hw[0] // f, key_hw[1] // f)
        if min(q_hw) < 1 or min(k_hw) < p:
            break
        out.append(Level(f, q_hw, k_hw, p))
    return out


def pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average over factor x factor blocks (the trailing rows/columns that fill no block dropped)."""
    return F.avg_pool2d(x, factor) if factor > 1 else x


def pool_mask(mask: Optional[torch.Tensor], factor: int) -> Optional[torch.Tensor]:
    """A coarse pixel is in the hole when any pixel of its block is."""
    if mask is None:
        return None
    m = mask.reshape(mask.shape[0], 1, mask.shape[-2], mask.shape[-1]).to(torch.float32)
    return F.max_pool2d(m, factor) > 0


def upsample_field(idx: torch.Tensor, coarse_key_w: int, query_hw: tuple[int, int], key_hw: tuple[int, int],
                   scale: int, patch_size: int, valid: torch.Tensor) -> torch.Tensor:
    """A coarse field (B, hc, wc, K) as the finer level's initial field (B, Hq, Wq, K) int32.

    Query (y, x) takes the matches of its coarse parent (y // scale, x // scale) (the last coarse
    row/column for the rows/columns pooling dropped), each offset scaled: centre
    (y + scale * (jy - yc), x + scale * (jx - xc)), clamped into the finer level's key border
    (``patch_size``: that level's patch); a centre that is not matchable (the hole) becomes -1,
    which the search skips (psal.h: no entry)."""
    B, hc, wc, K = idx.shape
    hq, wq = query_hw
    hk, wk = key_hw
    r = patch_size // 2
    dev = idx.device
    ys, xs = torch.arange(hq, device=dev), torch.arange(wq, device=dev)
    yc, xc = (ys // scale).clamp(max=hc - 1), (xs // scale).clamp(max=wc - 1)
    coarse = idx.to(torch.int32)
    jy, jx = coarse // coarse_key_w, coarse % coarse_key_w  # (B, hc, wc, K)
    # offsets of the coarse matches, per coarse query, scaled
    dy = (jy - torch.arange(hc, device=dev, dtype=torch.int32)[None, :, None, None]) * scale
    dx = (jx - torch.arange(wc, device=dev, dtype=torch.int32)[None, None, :, None]) * scale
    del jy, jx, coarse
    cy = (ys.to(torch.int32)[None, :, None, None] + dy[:, yc][:, :, xc]).clamp_(r, hk - r - 1)
    cx = (xs.to(torch.int32)[None, None, :, None] + dx[:, yc][:, :, xc]).clamp_(r, wk - r - 1)
    field = cy.mul_(wk).add_(cx)
    del cx
    ok = torch.gather(valid.reshape(B, -1), 1, field.reshape(B, -1).to(torch.long)).reshape(field.shape)
    return field.masked_fill_(~ok, -1)


def coarse_to_fine(search: SearchAt, q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor],
                   valid: torch.Tensor, patch_size: int, width: int, iterations: int, schedule: int,
                   pyramid: Pyramid, refine: Optional[SearchAt] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-size search started from the coarse levels' matches -> (idx, n_evals summed over
    every level's search; a coarse evaluation costs one patch of that level's size, see
    ``psal_cost.expected_pyramid_flops``). ``refine``: the full-size search when it differs from
    the coarse levels' ``search`` (the layer's reach limits apply there only: a coarse level starts
    from random, or from a field that is coarse, and needs the whole image's reach)."""
    B = q.shape[0]
    full = Level(1, tuple(q.shape[2:]), tuple(k.shape[2:]), patch_size)
    plan = coarse_levels(full.query_hw, full.key_hw, patch_size, pyramid.levels, pyramid.scale)
    init: Optional[torch.Tensor] = None
    total = torch.zeros(B, dtype=torch.long, device=q.device)
    for depth in range(len(plan) - 1, -1, -1):  # coarsest first
        level = plan[depth]
        valid_l = matchable_map(level.key_hw, level.patch_size, pool_mask(key_mask, level.factor), B, q.device)
        fewest = int(valid_l.flatten(1).sum(1).min())
        if fewest < 1:  # the hole covers this level: start the next one from random
            init = None
            continue
        idx, evals = search(pool(q, level.factor), pool(k, level.factor), valid_l, level.patch_size,
                            min(pyramid.coarse_width, fewest), pyramid.coarse_iterations, pyramid.coarse_schedule, init)
        total += evals
        finer = plan[depth - 1] if depth > 0 else full
        finer_valid = valid if depth == 0 else matchable_map(finer.key_hw, finer.patch_size,
                                                             pool_mask(key_mask, finer.factor), B, q.device)
        init = upsample_field(idx[..., : pyramid.seed_width], level.key_hw[1], finer.query_hw, finer.key_hw, pyramid.scale, finer.patch_size,
                              finer_valid)
        del idx, valid_l, finer_valid  # only the field stays alive during the finer search
    idx, evals = (refine or search)(q, k, valid, patch_size, width, iterations, schedule, init)
    return idx, total + evals
