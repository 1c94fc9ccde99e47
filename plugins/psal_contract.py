"""The PSAL contract of native/psal.h in Python: every constant and formula the plugin, the ops,
the pure-PyTorch reference and the cost model share, each defined once here.

Why one module: psal.h fixes the algorithm (schedules, propagation steps, RNG constants, the
matchable rule, what counts as one evaluation); the Python side needs the same facts in four
places. Change a fact here and in psal.h (and the kernels), nowhere else.

Contents: RNG and search constants; schedules; the matchable rule; FLOP formulas (search,
similarity, attend, each with one name); memory formulas of the native kernels and of the
reference.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from attnbench.interface import ProblemShape

if TYPE_CHECKING:  # psal_pyramid imports this module
    from .psal_pyramid import Pyramid

# ------------------------------------------------------------------------- constants (psal.h)
#: splitmix64 constants of psal_mix
MIX_ADD = 0x9E3779B97F4A7C15
MIX_M1 = 0xBF58476D1CE4E5B9
MIX_M2 = 0x94D049BB133111EB
#: random initial draws per heap entry before the in-order fill (psal.h "it = 0")
INIT_TRIALS_PER_K = 64
#: jump-flooding distances of the propagation, each in the four axis directions
PROPAGATION_STEPS = (1, 2, 4, 8)
#: the reach limits' "no limit" values (psal.h "reach and max_jump"): the default search
REACH_UNLIMITED = 0
MAX_JUMP_DEFAULT = PROPAGATION_STEPS[-1]

#: search schedules (psal.h PSAL_SCHEDULE_*): "jacobi" reads the neighbours' heaps of the previous
#: iteration; "wavefront" sweeps in place (scan order, reversed on even iterations)
SCHEDULE_JACOBI = 0
SCHEDULE_WAVEFRONT = 1
SCHEDULES = {"jacobi": SCHEDULE_JACOBI, "wavefront": SCHEDULE_WAVEFRONT}
SCHEDULE_DEFAULT = SCHEDULE_JACOBI

#: FLOPs per patch element of one cost evaluation or one weighted value: a multiply-add (GEMM convention)
FLOPS_PER_ELEMENT = 2
#: bytes of one int64 index (idx tensors); heaps store int32
INDEX_BYTES = 8
#: zeroed bytes after each channel-last copy of the CPU kernel (psal_cpu.cpp kSlackBytes): the last,
#: masked vector of a patch row may read past the image's data
SLACK_BYTES = 64
#: bytes of a heap entry's birth iteration in the native kernels (psal.h: psal_born_stamp, uint8)
BORN_BYTES = 1

#: the backends a layer may resolve to (psal_build, ATTNBENCH_PSAL_BACKEND)
BACKEND_NATIVE = "native"
BACKEND_REFERENCE = "reference"


def schedule_name(code: int) -> str:
    return next(name for name, value in SCHEDULES.items() if value == code)


#: psal_born_stamp's ceiling: a heap entry's birth iteration saturates here, and is then always fresh
BORN_SATURATED = 255


def born_stamp(it: int) -> int:
    """psal_born_stamp: the iteration an entry entered its heap, saturated at BORN_SATURATED."""
    return min(it, BORN_SATURATED)


def entry_fresh(born: torch.Tensor, it: int) -> torch.Tensor:
    """psal_entry_fresh: whether neighbours propagate an entry at iteration ``it`` (psal.h's
    seen-entry rule: entries born <= it - 2 were seen already, skipping them changes no match)."""
    return (born == BORN_SATURATED) | (born + 1 >= it)


def search_levels(hk: int, wk: int) -> int:
    """Number of random-search windows: floor(log2(max(Hk, Wk))) + 1 (the last radius is 1)."""
    return max(hk, wk).bit_length()


def first_search_level(hk: int, wk: int, reach: int = REACH_UNLIMITED) -> int:
    """psal_first_level: the first random-search level whose radius max(Hk, Wk) >> level is <=
    ``reach`` (0: no limit, level 0); the levels before it are skipped, their draws unused."""
    if reach <= 0:
        return 0
    level = 0
    while (max(hk, wk) >> level) > reach:
        level += 1
    return level


def jump_steps(max_jump: int = MAX_JUMP_DEFAULT) -> tuple[int, ...]:
    """psal_jump_steps: the jump-flooding distances <= ``max_jump`` (at least 1)."""
    return tuple(step for step in PROPAGATION_STEPS if step <= max_jump)


# ------------------------------------------------------------------------ the matchable rule
def matchable_map(key_hw: tuple[int, int], patch_size: int, key_mask: torch.Tensor | None, batch: int,
                  device: torch.device) -> torch.Tensor:
    """(B, Hk, Wk) bool: key centres whose whole patch is in the image and avoids the hole."""
    hk, wk = key_hw
    r = patch_size // 2
    valid = torch.zeros(batch, hk, wk, dtype=torch.bool, device=device)
    if key_mask is None:
        valid[:, r : hk - r, r : wk - r] = True
    else:
        touched = F.max_pool2d(key_mask.reshape(batch, 1, hk, wk).to(torch.float32), patch_size, stride=1) > 0
        valid[:, r : hk - r, r : wk - r] = ~touched[:, 0]
    return valid


# ------------------------------------------------------------------------------------ FLOPs
def search_flops(evaluations: float, channels: int, patch_size: int) -> int:
    """FLOPs of a search that made ``evaluations`` cost evaluations (2 p^2 C each)."""
    return int(evaluations * FLOPS_PER_ELEMENT * patch_size**2 * channels)


def similarity_flops(n_matches: int, channels: int, patch_size: int) -> int:
    """FLOPs of psal_similarity: one p^2 C multiply-add per (query, match)."""
    return FLOPS_PER_ELEMENT * patch_size**2 * channels * n_matches


def attend_terms(n_matches: int, patch_size: int, aggregation: bool) -> int:
    """Softmax terms of psal_attend: one per match, p^2 per match with aggregation (Eq. 10)."""
    return n_matches * (patch_size**2 if aggregation else 1)


def attend_flops(n_matches: int, value_channels: int, patch_size: int, aggregation: bool) -> int:
    """FLOPs of psal_attend: one Cv-wide multiply-add per term."""
    return FLOPS_PER_ELEMENT * attend_terms(n_matches, patch_size, aggregation) * value_channels


def matched_attention_flops(shape: ProblemShape, k_nn: int, aggregation: bool, with_similarity: bool) -> int:
    """FLOPs of similarity + attend at k_nn matches per query (backward: each op's two gradients)."""
    n_matches = shape.batch * shape.n_queries * k_nn
    attend = attend_flops(n_matches, shape.value_channels, shape.patch_size, aggregation)
    similarity = similarity_flops(n_matches, shape.channels, shape.patch_size) if with_similarity else 0
    flops = attend + similarity
    if shape.backward:
        flops += 2 * attend + 2 * similarity
    return flops


# ----------------------------------------------------------------------------------- memory
def matched_attention_memory(shape: ProblemShape, k_nn: int) -> dict[str, int]:
    """Bytes of the native similarity + attend phases that every k-NN mechanism here shares."""
    s = shape.dtype_bytes
    B, C, Cv, nq, nk = shape.batch, shape.channels, shape.value_channels, shape.n_queries, shape.n_keys
    r = shape.patch_size // 2
    padded_q = (shape.query_hw[0] + 2 * r) * (shape.query_hw[1] + 2 * r) * C * s + SLACK_BYTES
    return {
        "idx": B * nq * k_nn * INDEX_BYTES,
        "similarity": padded_q + nk * C * s + SLACK_BYTES + B * nq * k_nn * s,
        "attend": nk * Cv * s + B * Cv * nq * s + B * nq * s,
        "padded_q": padded_q,
    }


def matched_attention_backward_memory(shape: ProblemShape, k_nn: int, needs_qk: bool) -> int:
    """Extra bytes of the native backward ops (gathers through an inverse index, per batch element)."""
    s = shape.dtype_bytes
    B, C, Cv, nq, nk = shape.batch, shape.channels, shape.value_channels, shape.n_queries, shape.n_keys
    r = shape.patch_size // 2
    padded = (shape.query_hw[0] + 2 * r) * (shape.query_hw[1] + 2 * r) * C * s + SLACK_BYTES
    inverse = 2 * (nk + 1) * 8 + nq * k_nn * 4
    grad_out = B * Cv * nq * s
    # grad_out copied channel-last + grad_v (+ for grad_s: values copied, g.out, g*out, grad_s)
    attend_bwd = nq * Cv * s + B * Cv * nk * s + inverse
    if needs_qk:
        attend_bwd += nq * Cv * s + nk * Cv * s + nq * s + B * nq * k_nn * s
    similarity_bwd = 2 * padded + nk * C * s + B * C * (nq + nk) * s + inverse if needs_qk else 0
    # grad_v and grad_s stay alive while the similarity backward runs
    return grad_out + max(attend_bwd, similarity_bwd + B * nq * k_nn * s + B * Cv * nk * s)


def saved_for_backward_memory(shape: ProblemShape, k_nn: int) -> int:
    """Bytes autograd keeps between forward and backward: idx, S, out, lse."""
    s = shape.dtype_bytes
    B, nq = shape.batch, shape.n_queries
    return B * nq * k_nn * INDEX_BYTES + B * nq * k_nn * s + B * shape.value_channels * nq * s + B * nq * s


def native_search_memory(shape: ProblemShape, width: int, iterations: int, schedule: int) -> int:
    """Peak bytes of psal_search_cpu: output, int32 copy, heaps (double for jacobi; each entry a
    cost, an int32 index and its one-byte birth iteration), channel-last copies."""
    s = shape.dtype_bytes
    B, C, nq, nk = shape.batch, shape.channels, shape.n_queries, shape.n_keys
    searched = B * nq * width * INDEX_BYTES
    heaps = (2 if schedule == SCHEDULE_JACOBI and iterations > 0 else 1) * nq * width * (s + 4 + BORN_BYTES)
    padded_q = matched_attention_memory(shape, width)["padded_q"]
    return searched + B * nq * width * 4 + B * nk + B * 8 + padded_q + nk * C * s + SLACK_BYTES + heaps + nk * 4


def native_memory(shape: ProblemShape, k_nn: int, width: int, iterations: int, schedule: int,
                  with_similarity: bool) -> int:
    """Peak bytes of the native kernels (search of ``width``, attention to the best ``k_nn``)."""
    shared = matched_attention_memory(shape, k_nn)
    search = native_search_memory(shape, width, iterations, schedule)
    searched = shape.batch * shape.n_queries * width * INDEX_BYTES
    best_k_copy = searched + shared["idx"] if width > k_nn else 0
    forward = max(search, best_k_copy, shared["idx"] + max(shared["similarity"], shared["attend"]))
    if not shape.backward:
        return forward
    return max(forward, saved_for_backward_memory(shape, k_nn)
               + matched_attention_backward_memory(shape, k_nn, with_similarity))


#: bytes of one entry of an initial field handed to the search (psal_pyramid builds int32 fields)
FIELD_BYTES = 4


def native_pyramid_memory(shape: ProblemShape, k_nn: int, width: int, iterations: int, schedule: int,
                          with_similarity: bool, plan: "Pyramid", coarse_patch: int) -> int:
    """Peak bytes of an init=pyramid call on the native kernels (psal_pyramid.coarse_to_fine).

    The full-size search holds the int32 initial field (``plan.seed_width`` entries per query, and
    the coarse levels' evaluation counts) besides its own memory; building that field from the
    first coarse level holds about four field-sized int32 temporaries (gathered offsets, centres,
    the index copy of the matchable test); the first coarse level's search (``coarse_patch``,
    ``plan.coarse_width``) holds its pooled inputs and the field of the level below. Coarser levels
    are smaller still."""
    scale, seed_width = plan.scale, plan.seed_width
    field = shape.batch * shape.n_queries * seed_width * FIELD_BYTES
    full = native_memory(shape, k_nn, width, iterations, schedule, with_similarity)
    search = native_search_memory(shape, width, iterations, schedule) + field + 2 * shape.batch * 8
    upsample = 4 * field + shape.batch * shape.n_keys
    coarse_shape = ProblemShape(shape.batch, shape.channels, shape.value_channels,
                                (shape.query_hw[0] // scale, shape.query_hw[1] // scale),
                                (shape.key_hw[0] // scale, shape.key_hw[1] // scale), coarse_patch,
                                shape.dtype_bytes, shape.mode)
    pooled = shape.batch * shape.channels * (coarse_shape.n_queries + coarse_shape.n_keys) * shape.dtype_bytes
    coarse = (native_search_memory(coarse_shape, plan.coarse_width, plan.coarse_iterations, plan.coarse_schedule) + pooled
              + coarse_shape.batch * coarse_shape.n_queries * seed_width * FIELD_BYTES)
    return max(full, search, upsample, coarse)


def reference_memory(shape: ProblemShape, k_nn: int, width: int, aggregation: bool, with_similarity: bool) -> int:
    """Peak bytes of the pure-PyTorch reference (psal_reference.py), which unrolls patches.

    Search (one batch element at a time): all query and key patches, plus the query patches,
    the candidates' key patches, their difference and its square gathered for every query
    at once. Similarity: query and key patches, the k matched key patches, difference and
    square (backward keeps about 3/4 of a matched set more). Attend: scores, pixels, values and
    products per term (backward keeps scores, weights and pixels). Each phase adds index and
    RNG temporaries (64 int64 per query). Calibrated on measured peaks (tests bound them).
    """
    s, d = shape.dtype_bytes, shape.patch_dim
    B, nq, n_grid, K, cv = shape.batch, shape.n_queries, shape.n_valid_keys, k_nn, shape.value_channels
    temporaries = 64 * nq * 8
    search = B * nq * width * INDEX_BYTES + (5 * nq + n_grid) * d * s + nq * width * (3 * INDEX_BYTES + s) + temporaries
    terms = attend_terms(B * nq * K, shape.patch_size, aggregation)
    attend = terms * (2 * INDEX_BYTES + 3 * s + 2 * cv * s) + temporaries
    similarity = B * (nq + n_grid + 3 * nq * K) * d * s + temporaries if with_similarity else 0
    if not shape.backward:
        return max(search, similarity, attend)
    kept = (3 * B * nq * K * d * s) // 4 if with_similarity else 0
    return max(search, similarity + kept + terms * (INDEX_BYTES + 3 * s), attend)
