"""Analytic cost model of PSAL: candidate evaluations from shapes alone.

The search proposes, per batch element, K initial candidates per query, then per iteration
K candidates for each of the 16 jump-flooding neighbours that exist and K per random-search
window. A proposal is only evaluated when it is a matchable key and not already in the heap.
The model discounts the two losses that do not depend on the data: propagated candidates that
the shift pushes off the valid key grid (probability ~ step / grid size for uniformly spread
matches), and random-search draws that land on the match they were drawn around (one cell of
a (2w+1)^2 window). From the second iteration on, a neighbour's entry is only propagated while
fresh (psal.h's seen-entry rule: inserted in the previous iteration or this one). The model takes
the fresh share of a heap from the record statistics of i.i.d. costs: after iteration t a heap
holds the best K of the K + t c candidates seen (c per iteration), each equally likely to be any
of them, so a share c / (K + t c) of it entered in iteration t. Measured counts stay within 10%
of it (tests/test_psal_kernel.py::test_evaluation_model_within_10_percent_of_counted: random
inputs, Jacobi +6-8 %; the wavefront schedule, whose entries of this iteration are fresh too, -5-7 %).
"""
from __future__ import annotations

from .psal_contract import (MAX_JUMP_DEFAULT, REACH_UNLIMITED, first_search_level, jump_steps, search_flops,
                            search_levels)
from .psal_pyramid import Pyramid, coarse_levels


def expected_evaluations(
    query_hw: tuple[int, int], key_hw: tuple[int, int], patch_size: int, k_nn: int, iterations: int,
    given: int = 0, reach: int = REACH_UNLIMITED, max_jump: int = MAX_JUMP_DEFAULT,
) -> float:
    """Expected cost evaluations of one batch element's search (what the kernel counts).

    ``given``: entries per query of a caller's initial field (psal.h, it = 0), each evaluated
    once (taken as distinct and matchable); the random initialisation tops the heap up to k.
    ``reach``, ``max_jump``: psal.h's reach limits (fewer windows, fewer jump steps)."""
    hq, wq = query_hw
    nq = hq * wq
    gh, gw = max(key_hw[0] - patch_size + 1, 1), max(key_hw[1] - patch_size + 1, 1)
    propagation = 0.0
    for step in jump_steps(max_jump):
        vertical = 2 * max(hq - step, 0) * wq * max(1.0 - step / gh, 0.0)
        horizontal = 2 * max(wq - step, 0) * hq * max(1.0 - step / gw, 0.0)
        propagation += k_nn * (vertical + horizontal)
    wmax = max(key_hw)
    windows = [
        min(2 * (wmax >> level) + 1, gh) * min(2 * (wmax >> level) + 1, gw)
        for level in range(first_search_level(*key_hw, reach), search_levels(*key_hw))
    ]
    random_search = nq * k_nn * sum(1.0 - 1.0 / cells for cells in windows)
    per_query = (propagation + random_search) / nq  # candidates of one query in one iteration
    total = nq * max(k_nn, given)
    for it in range(1, iterations + 1):
        fresh = 1.0 if it == 1 else per_query / (k_nn + (it - 1) * per_query)
        total += propagation * fresh + random_search
    return total


def search_flops_estimate(batch: int, query_hw: tuple[int, int], key_hw: tuple[int, int], channels: int,
                          patch_size: int, k_nn: int, iterations: int, given: int = 0,
                          reach: int = REACH_UNLIMITED, max_jump: int = MAX_JUMP_DEFAULT) -> int:
    """FLOPs of the search from shapes alone (fake tensors, ``estimate``): the model's evaluations."""
    evals = expected_evaluations(query_hw, key_hw, patch_size, k_nn, iterations, given, reach, max_jump)
    return search_flops(batch * evals, channels, patch_size)


def expected_pyramid_levels(
    query_hw: tuple[int, int], key_hw: tuple[int, int], patch_size: int, k_nn: int, iterations: int,
    pyramid: Pyramid, reach: int = REACH_UNLIMITED, max_jump: int = MAX_JUMP_DEFAULT,
) -> list[tuple[int, float]]:
    """(patch size, expected evaluations) of every search of an init=pyramid call (psal_pyramid),
    coarsest first: each coarse level's search with the pyramid's width and iterations, started
    from the coarser level's seed field (``seed_width`` entries per query), then the full-size one
    (with the reach limits ``reach``, ``max_jump``)."""
    plan = coarse_levels(query_hw, key_hw, patch_size, pyramid.levels, pyramid.scale)
    out, given = [], 0
    for level in reversed(plan):
        grid = (level.key_hw[0] - level.patch_size + 1) * (level.key_hw[1] - level.patch_size + 1)
        width = min(pyramid.coarse_width, grid)
        out.append((level.patch_size, expected_evaluations(level.query_hw, level.key_hw, level.patch_size, width,
                                                           pyramid.coarse_iterations, given)))
        given = min(width, pyramid.seed_width)
    out.append((patch_size, expected_evaluations(query_hw, key_hw, patch_size, k_nn, iterations, given, reach, max_jump)))
    return out


def expected_pyramid_evaluations(
    query_hw: tuple[int, int], key_hw: tuple[int, int], patch_size: int, k_nn: int, iterations: int,
    pyramid: Pyramid, reach: int = REACH_UNLIMITED, max_jump: int = MAX_JUMP_DEFAULT,
) -> float:
    """Expected evaluations of an init=pyramid search, every level's (what the kernels count)."""
    return sum(evals for _, evals in expected_pyramid_levels(query_hw, key_hw, patch_size, k_nn, iterations, pyramid,
                                                             reach, max_jump))


def expected_pyramid_flops(batch: int, query_hw: tuple[int, int], key_hw: tuple[int, int], channels: int,
                           patch_size: int, k_nn: int, iterations: int, pyramid: Pyramid,
                           reach: int = REACH_UNLIMITED, max_jump: int = MAX_JUMP_DEFAULT) -> int:
    """FLOPs of an init=pyramid search: each level's evaluations at its own patch size."""
    return sum(search_flops(batch * evals, channels, p)
               for p, evals in expected_pyramid_levels(query_hw, key_hw, patch_size, k_nn, iterations, pyramid,
                                                       reach, max_jump))
