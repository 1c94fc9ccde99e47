"""PSAL (Patch-based Stochastic Attention Layer) and exact k-NN patch attention, as plugins.

``psal`` (names ``psal-1``, ``psal-3``, ``psal-<k>``, ``psal-aggreg``, ``psal-<k>-aggreg``) finds
each query patch's k best key patches with PatchMatch (jump-flooding propagation + random
search, paper Section 3.2) and returns the softmax(S / T)-weighted values at their centres
(Eq. 5), optionally aggregated over the patch neighbourhood (Eq. 10). ``knn-exact`` finds the
exact k best by chunked brute force and uses the same output definition: the quality ceiling
PSAL approximates. Both follow the border rule of :mod:`attnbench.patches` and the hole mask.

The work is three ``attnbench::`` custom ops (see :mod:`attnbench_plugins.psal_ops`):
search (indices, not differentiable), similarity at those indices (differentiable w.r.t. q, k)
and attend (differentiable w.r.t. the similarities and v), native C++ when it builds.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, CostEstimate, ProblemShape

from . import psal_contract as contract
from . import psal_ops
from . import psal_pyramid as pyramid
from .psal_cost import expected_evaluations, expected_pyramid_evaluations, expected_pyramid_flops

#: Matches the search keeps per query when ``search_k`` is not given: ``max(k, DEFAULT_SEARCH_K)``.
#: A one-entry heap converges slowly on large images. PSAL-1 reconstructing the 512^2 video pair
#: (10 iterations, MSE over every valid centre, relative to the exact 1-NN's; seeds 0-3):
#: search_k = 1: 1.149 (seed 0), 2: 1.087-1.098, 3: 1.068-1.073, at 237 / 466 / 694 evaluations
#: per query (20 iterations with one entry: 1.124 at 456). The extra entries carry more
#: hypotheses through propagation and random search; 2 is the cheapest width within 10% of exact.
#: ``attnbench run search --preset video-pair [--seed N]`` re-measures it.
DEFAULT_SEARCH_K = 2

#: init=pyramid defaults: coarse levels searched before the full size, the pooling factor per
#: level, the coarse heap's width per full-size heap entry and the coarse iterations. Measured
#: (MSE ratio to the exact 1-NN, PSAL-1 search_k 4 then 4 full-size iterations, video pair, queries
#: img2, rows every 8th at 512 px; one run each, 2026-12-07): one level with a coarse 3 x 3 patch,
#: a coarse heap of 8 and 10 coarse iterations reaches 1.051 (572 evaluations per query); 5 coarse
#: iterations 1.065, a heap of 4 1.095, of 12 1.040 (714), two levels (128 then 256 px) 1.078; the
#: coarse patch p = 7 instead of 3 1.18 after 3 iterations against 1.11. Random start, search_k 4:
#: 1.061 after 10 iterations (673 evaluations), 1.052 after 15 (869). The coarse heap's entries all
#: seed the full-size heap: passing its best 4 of 8 gave 1.058 against 1.051. The coarse level runs
#: Jacobi (``pyramid_schedule``): the wavefront there gave 1.061 (both levels) against 1.051; the
#: full size may run either (``schedule``): after 15 coarse iterations the wavefront reaches 1.044
#: in 3 full-size iterations (613 evaluations per query), Jacobi 1.046 in 4 (663).
DEFAULT_PYRAMID_LEVELS = 1
DEFAULT_PYRAMID_SCALE = 2
DEFAULT_PYRAMID_WIDTH_FACTOR = 2
DEFAULT_PYRAMID_ITERATIONS = 10
#: a coarse heap's best search_k + PYRAMID_SEED_EXTRA entries seed the finer heap: the seed field
#: is held during the full-size search, and all 2 x 3 of PSAL-3's would put its peak at 512 px 11 %
#: above the random start's (the best 6 of 8 gave 1.051 above, as all 8)
PYRAMID_SEED_EXTRA = 2


def _checked_schedule(name: str, value: Optional[str]) -> str:
    """A schedule name of psal.h (None: the default one), refused in one line otherwise."""
    if value is None:
        return contract.schedule_name(contract.SCHEDULE_DEFAULT)
    if value not in contract.SCHEDULES:
        raise UnsupportedRequest(f"{name} must be one of {', '.join(contract.SCHEDULES)}, got {value!r}")
    return value


def _check_positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UnsupportedRequest(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _valid_keys(keys: torch.Tensor, key_mask: Optional[torch.Tensor], patch_size: int, k_nn: int, who: str) -> tuple[torch.Tensor, int]:
    """Matchable key centres (B, Hk, Wk) and the fewest of any batch element; refuse fewer than k_nn."""
    valid = contract.matchable_map((keys.shape[2], keys.shape[3]), patch_size, key_mask, keys.shape[0], keys.device)
    fewest = int(valid.flatten(1).sum(1).min())
    if fewest < k_nn:
        raise UnsupportedRequest(f"{who}: only {fewest} key patches avoid the border and the mask; k = {k_nn} needs more")
    return valid, fewest


def _checked_field(field: torch.Tensor, q: torch.Tensor, valid: torch.Tensor, who: str) -> torch.Tensor:
    """A caller's initial field as (B, Hq, Wq, K0), refused in one line unless every entry is -1
    or a matchable key centre (the kernels would skip the others silently: psal.h, it = 0)."""
    B, _, hq, wq = q.shape
    nk = valid.shape[1] * valid.shape[2]
    if not isinstance(field, torch.Tensor) or field.dtype not in (torch.int32, torch.int64):
        got = field.dtype if isinstance(field, torch.Tensor) else type(field).__name__
        raise UnsupportedRequest(f"{who}: init_nnf must be an int32 or int64 tensor of key indices, got {got}")
    if field.device != q.device:
        raise UnsupportedRequest(f"{who}: init_nnf is on {field.device}, the queries on {q.device}")
    if field.dim() == 3 and field.shape[:2] == (B, hq * wq):
        field = field.reshape(B, hq, wq, field.shape[2])
    if field.dim() != 4 or field.shape[:3] != (B, hq, wq) or field.shape[3] < 1:
        raise UnsupportedRequest(f"{who}: init_nnf must be (B, Hq, Wq, K0) = ({B}, {hq}, {wq}, K0 >= 1) or "
                                 f"(B, Hq * Wq, K0), got {tuple(field.shape)}")
    bad = (field < -1) | (field >= nk)
    if bad.any():
        raise UnsupportedRequest(f"{who}: init_nnf entries must be -1 (none) or key indices in [0, {nk}), got "
                                 f"{int(field[bad][0])}")
    given = field.reshape(B, -1).to(torch.long)
    ok = (given < 0) | torch.gather(valid.reshape(B, -1), 1, given.clamp(min=0))
    if not ok.all():
        b, e = (int(t[0]) for t in (~ok).nonzero(as_tuple=True))
        c = int(given[b, e])
        raise UnsupportedRequest(f"{who}: init_nnf has {int((~ok).sum())} entries that are not matchable key centres "
                                 f"(border or hole), e.g. key ({c // valid.shape[2]}, {c % valid.shape[2]}) of batch {b}")
    return field


class PSAL(AttentionMechanism):
    """PatchMatch attention: O(n) memory, O(n d N log n) time (paper Section 3).

    Borders: keys are matchable only where their whole patch is inside the key image (and off the
    hole); border queries use replicate-padded patches, so they get real matches. Aggregation
    (Eq. 10): query i takes the k matches of every neighbour i + delta in its p x p window,
    shifted back by delta, with the neighbour's similarity as score; neighbours outside the query
    image are dropped (a shifted match always lies inside the key image and off the hole, being a
    pixel of a matchable key patch). Memory stays O(k n): the p^2 k terms are never stored.
    Search width: the search keeps ``search_k`` (default ``max(k, 2)``, see ``DEFAULT_SEARCH_K``)
    matches per query and the attention uses the best k; ``search_k=1`` is the paper's PSAL-1.
    Naming: the spec parameter ``k`` (``psal-3`` = ``psal[k=3]``) is stored as ``k_nn``, the
    neighbour count; ``k``/``keys`` in method signatures is always the keys tensor.
    Backend: resolved once, in the constructor (``backend``, reported in ``params()``).
    """

    variants = ("psal-1", "psal-3", "psal-aggreg")
    supports_mask = True
    summary = "Patch-based Stochastic Attention: PatchMatch k-NN (jump flooding), optional aggregation"
    complexity = "O(n d N log n)"

    @classmethod
    def prepare(cls) -> str:
        """One-time set-up before a run's cells (``attnbench run`` calls it once, in a child with a
        timeout): build the native kernel so that no worker builds it under a cell's timeout."""
        from . import psal_build

        return psal_build.prepare()

    def __init__(
        self,
        k: int = 1,
        aggregation: bool = False,
        iterations: int = 5,
        seed: int = 0,
        patch_size: int = 7,
        similarity: str = "l2",
        temperature: float = 1.0,
        schedule: Optional[str] = None,
        search_k: Optional[int] = None,
        init: str = pyramid.INIT_RANDOM,
        pyramid_levels: int = DEFAULT_PYRAMID_LEVELS,
        pyramid_scale: int = DEFAULT_PYRAMID_SCALE,
        pyramid_search_k: Optional[int] = None,
        pyramid_iterations: int = DEFAULT_PYRAMID_ITERATIONS,
        pyramid_schedule: Optional[str] = None,
        reach: int = contract.REACH_UNLIMITED,
        max_jump: int = contract.MAX_JUMP_DEFAULT,
        **params: Any,
    ):
        super().__init__(patch_size=patch_size, similarity=similarity, temperature=temperature, **params)
        #: neighbours each query attends to (the spec's ``k``)
        self.k_nn = _check_positive_int("k", k, 1)
        #: matches the search keeps per query (its heap); the attention uses the best k_nn of them
        self.search_k = max(self.k_nn, DEFAULT_SEARCH_K) if search_k is None else _check_positive_int("search_k", search_k, self.k_nn)
        self.iterations = _check_positive_int("iterations", iterations, 0)
        #: search schedule (psal.h): "wavefront" (in-place sweeps) or "jacobi" (double-buffered)
        self.schedule = _checked_schedule("schedule", schedule)
        if not isinstance(aggregation, bool):
            raise UnsupportedRequest(f"aggregation must be true or false, got {aggregation!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UnsupportedRequest(f"seed must be an integer, got {seed!r}")
        self.aggregation = aggregation
        self.seed = seed
        if init not in pyramid.INITS:
            raise UnsupportedRequest(f"init must be one of {', '.join(pyramid.INITS)}, got {init!r}")
        #: initial field: "random" (psal.h) or "pyramid" (coarse-to-fine, psal_pyramid)
        self.init = init
        #: init=pyramid: coarse levels (pooled by pyramid_scale ** level) searched before the full size
        self.pyramid_levels = _check_positive_int("pyramid_levels", pyramid_levels, 1)
        self.pyramid_scale = _check_positive_int("pyramid_scale", pyramid_scale, 2)
        #: init=pyramid: the coarse levels' heap (every entry seeds the finer heap) and iterations
        self.pyramid_search_k = (DEFAULT_PYRAMID_WIDTH_FACTOR * self.search_k if pyramid_search_k is None
                                 else _check_positive_int("pyramid_search_k", pyramid_search_k, 1))
        self.pyramid_iterations = _check_positive_int("pyramid_iterations", pyramid_iterations, 0)
        #: init=pyramid: the coarse levels' schedule (the full size runs ``schedule``)
        self.pyramid_schedule = _checked_schedule("pyramid_schedule", pyramid_schedule)
        #: the full-size search's reach limits (psal.h): the random search's largest radius in px
        #: (0: the whole image) and the largest jump-flooding step; for a search started from a good
        #: field (init=pyramid, init_nnf), whose long displacements are in the field already
        self.reach = _check_positive_int("reach", reach, 0)
        if max_jump not in contract.PROPAGATION_STEPS or isinstance(max_jump, bool):
            raise UnsupportedRequest(f"max_jump must be one of {', '.join(map(str, contract.PROPAGATION_STEPS))} "
                                     f"(the jump-flooding steps), got {max_jump!r}")
        self.max_jump = max_jump
        # PSAL-1 without aggregation has one weight of 1 per query: no gradient reaches q or k.
        self.differentiable_wrt = ("v",) if (self.k_nn == 1 and not aggregation) else ("q", "k", "v")
        #: "native" (C++ kernel) or "reference" (pure PyTorch), see psal_build / ATTNBENCH_PSAL_BACKEND
        self.backend = psal_ops.prepare()
        #: why the reference runs when nobody asked for it (recorded with the cell), else None
        self.backend_note = psal_ops.backend_note(self.backend)
        #: cost evaluations of the last search, (B,) int64 tensor (what the FLOP counter reports)
        self.last_evaluations: Optional[torch.Tensor] = None

    @classmethod
    def parse_variant(cls, suffix: str) -> dict[str, Any]:
        """``"3"`` -> k=3, ``"aggreg"`` -> aggregation, ``"3-aggreg"`` -> both."""
        parts = suffix.split("-")
        params: dict[str, Any] = {}
        if parts and parts[-1] == "aggreg":
            params["aggregation"] = True
            parts = parts[:-1]
        if len(parts) == 1 and parts[0].isdigit() and int(parts[0]) >= 1:
            params["k"] = int(parts[0])
        elif parts:
            raise ValueError(suffix)
        return params

    @classmethod
    def exact_params(cls, shape: ProblemShape, usable_keys: int) -> Optional[dict[str, Any]]:
        """A heap as wide as the usable keys holds every key: the sparse softmax is the full one."""
        return {"k": usable_keys, "search_k": usable_keys}

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "k": self.k_nn,
            "aggregation": self.aggregation,
            "iterations": self.iterations,
            "seed": self.seed,
            "schedule": self.schedule,
            "search_k": self.search_k,
            "init": self.init,
            **({"pyramid_levels": self.pyramid_levels, "pyramid_scale": self.pyramid_scale,
                "pyramid_search_k": self.pyramid_search_k, "pyramid_iterations": self.pyramid_iterations,
                "pyramid_schedule": self.pyramid_schedule}
               if self.init == pyramid.INIT_PYRAMID else {}),
            # only when limited, so that every record of the default search keeps its parameters
            **({"reach": self.reach} if self.reach != contract.REACH_UNLIMITED else {}),
            **({"max_jump": self.max_jump} if self.max_jump < contract.MAX_JUMP_DEFAULT else {}),
            "backend": self.backend,
        }

    @property
    def with_similarity(self) -> bool:
        """Whether the weights depend on S (more than one term per query)."""
        return self.k_nn > 1 or self.aggregation

    def search(self, q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
               init_nnf: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The k-NN field alone: (B, Hq, Wq, k_nn) flat key-image indices of the matched centres.

        The search keeps ``search_k`` matches per query (fewer when fewer keys are matchable);
        its heaps are sorted best first, so the best k_nn are its first k_nn entries.
        ``init_nnf``: a field to start from instead of a random one, (B, Hq, Wq, K0) or
        (B, Hq * Wq, K0) int32/int64 flat key indices (e.g. the previous video frame's
        ``search``), -1 for none; each entry must be a matchable key centre (psal.h, it = 0).
        """
        who = self.name or "psal"
        valid, fewest = _valid_keys(k, key_mask, self.patch_size, self.k_nn, who)
        width = min(self.search_k, fewest)
        if init_nnf is not None:
            if self.init == pyramid.INIT_PYRAMID:
                raise UnsupportedRequest(f"{who}: init_nnf gives the initial field, init=pyramid computes one: pass one")
            init_nnf = _checked_field(init_nnf, q, valid, who)
        q, k = q.detach(), k.detach()
        if self.init == pyramid.INIT_PYRAMID:
            idx, evaluations = pyramid.coarse_to_fine(self._search_op, q, k, key_mask, valid, self.patch_size, width,
                                                      self.iterations, contract.SCHEDULES[self.schedule],
                                                      self.pyramid_plan, self._full_size_search)
        else:
            idx, evaluations = self._full_size_search(q, k, valid, self.patch_size, width, self.iterations,
                                                      contract.SCHEDULES[self.schedule], init_nnf)
        self.last_evaluations = evaluations
        return idx if width == self.k_nn else idx[..., : self.k_nn].contiguous()

    @property
    def pyramid_plan(self) -> pyramid.Pyramid:
        """The coarse levels of init=pyramid (psal_pyramid)."""
        return pyramid.Pyramid(self.pyramid_levels, self.pyramid_scale, self.pyramid_search_k, self.pyramid_iterations,
                               min(self.pyramid_search_k, self.search_k + PYRAMID_SEED_EXTRA),
                               contract.SCHEDULES[self.pyramid_schedule])

    def _search_op(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, patch_size: int, width: int,
                   iterations: int, schedule: int, init: Optional[torch.Tensor],
                   reach: int = contract.REACH_UNLIMITED,
                   max_jump: int = contract.MAX_JUMP_DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
        """One call of the search op with this layer's settings (every pyramid level is one)."""
        return torch.ops.attnbench.psal_search(
            q, k, valid, patch_size, width, iterations, self.similarity == "dot", self.seed,
            schedule, self.backend == contract.BACKEND_REFERENCE, init, reach, max_jump,
        )

    def _full_size_search(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, patch_size: int, width: int,
                          iterations: int, schedule: int,
                          init: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The search op at full size, with the layer's reach limits (coarse levels: _search_op)."""
        return self._search_op(q, k, valid, patch_size, width, iterations, schedule, init, self.reach, self.max_jump)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
                init_nnf: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The mechanism contract's forward, plus ``init_nnf`` (see :meth:`search`)."""
        if init_nnf is None:
            return super().forward(q, k, v, key_mask)
        self.check_inputs(q, k, v, key_mask)
        if key_mask is not None and key_mask.dim() == 3:
            key_mask = key_mask[:, None]
        return self.attend(q, k, v, key_mask, init_nnf)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
        init_nnf: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # without a field, search() is called as before the option existed (wrappers may replace it)
        idx = self.search(q, k, key_mask) if init_nnf is None else self.search(q, k, key_mask, init_nnf=init_nnf)
        return psal_ops.matched_attention(q, k, v, idx, self.patch_size, self.similarity == "dot", self.aggregation,
                                          self.temperature, with_similarity=self.with_similarity, backend=self.backend)

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        """Peak bytes (net of inputs) of the backend in use and FLOPs (evaluation model of psal_cost)."""
        width = min(self.search_k, max(shape.n_valid_keys, self.k_nn))
        if self.backend == contract.BACKEND_REFERENCE:
            memory = contract.reference_memory(shape, self.k_nn, width, self.aggregation, self.with_similarity)
        else:
            memory = contract.native_memory(shape, self.k_nn, width, self.iterations, contract.SCHEDULES[self.schedule],
                                            self.with_similarity)
        if self.init == pyramid.INIT_PYRAMID:
            plan = self.pyramid_plan
            evals = expected_pyramid_evaluations(shape.query_hw, shape.key_hw, shape.patch_size, width,
                                                 self.iterations, plan, self.reach, self.max_jump)
            flops = expected_pyramid_flops(shape.batch, shape.query_hw, shape.key_hw, shape.channels,
                                           shape.patch_size, width, self.iterations, plan, self.reach, self.max_jump)
            if self.backend != contract.BACKEND_REFERENCE:
                memory = max(memory, contract.native_pyramid_memory(
                    shape, self.k_nn, width, self.iterations, contract.SCHEDULES[self.schedule], self.with_similarity,
                    plan, pyramid.level_patch_size(shape.patch_size, plan.scale)))
        else:
            evals = expected_evaluations(shape.query_hw, shape.key_hw, shape.patch_size, width, self.iterations,
                                         reach=self.reach, max_jump=self.max_jump)
            flops = contract.search_flops(shape.batch * evals, shape.channels, shape.patch_size)
        flops += contract.matched_attention_flops(shape, self.k_nn, self.aggregation, self.with_similarity)
        return CostEstimate(
            memory_bytes=int(memory),
            flops=int(flops),
            formula=self.complexity,
            notes=f"{evals / max(shape.n_queries, 1):.0f} evaluations per query; backend {self.backend}",
        )


class KnnExact(AttentionMechanism):
    """Exact k-NN patch attention by chunked brute force: O(n d) memory, O(n^2 d) time."""

    supports_mask = True
    summary = "Exact k-NN patch attention (chunked brute force): the ceiling PSAL approximates"
    complexity = "O(n^2 d)"

    #: scores held at once (queries per chunk x keys)
    chunk_elements = 1 << 23
    #: share of the matmul yardstick the chunked addmm + top-k reaches on CPU: its 256 px memory
    #: cell (p = 5, C = 16, ~4.5 calls) took 80 s for 3.3 TFLOP a call, ~185 GFLOP/s of 309 (60 %)
    MATMUL_SHARE = 0.5

    def __init__(self, k: int = 1, patch_size: int = 7, similarity: str = "l2", temperature: float = 1.0, **params: Any):
        super().__init__(patch_size=patch_size, similarity=similarity, temperature=temperature, **params)
        #: neighbours each query attends to (the spec's ``k``)
        self.k_nn = _check_positive_int("k", k, 1)
        self.differentiable_wrt = ("v",) if self.k_nn == 1 else ("q", "k", "v")
        #: backend of the similarity + attend ops, resolved once (the search is plain PyTorch)
        self.backend = psal_ops.prepare()
        #: why the reference runs when nobody asked for it (recorded with the cell), else None
        self.backend_note = psal_ops.backend_note(self.backend)

    @classmethod
    def exact_params(cls, shape: ProblemShape, usable_keys: int) -> Optional[dict[str, Any]]:
        return {"k": usable_keys}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "k": self.k_nn, "backend": self.backend}

    def search(self, q: torch.Tensor, k: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Exact k-NN field: (B, Hq, Wq, k_nn) flat key-image indices, best first."""
        p, r = self.patch_size, self.patch_size // 2
        B, C, hq, wq = q.shape
        hk, wk = k.shape[2], k.shape[3]
        gw = wk - 2 * r
        valid = _valid_keys(k, key_mask, p, self.k_nn, self.name or "knn-exact")[0][:, r : hk - r, r : wk - r].flatten(1)
        idx = torch.empty(B, hq * wq, self.k_nn, dtype=torch.long, device=q.device)
        rows_per_chunk = max(1, self.chunk_elements // max(valid.shape[1] * wq, 1))
        with torch.no_grad():
            qpad = F.pad(q, (r, r, r, r), mode="replicate") if r else q
            for b in range(B):
                kp = F.unfold(k[b : b + 1], p)[0]  # (d, n_grid)
                bias = torch.linalg.vector_norm(kp, dim=0) ** 2 if self.similarity == "l2" else torch.zeros_like(kp[0])
                bias = torch.where(valid[b], -bias, torch.full_like(bias, -math.inf))
                for y0 in range(0, hq, rows_per_chunk):
                    y1 = min(hq, y0 + rows_per_chunk)
                    qp = F.unfold(qpad[b : b + 1, :, y0 : y1 + 2 * r], p)[0].T  # (rows * wq, d)
                    scores = torch.addmm(bias, qp, kp, alpha=2.0 if self.similarity == "l2" else 1.0)
                    best = scores.topk(self.k_nn, dim=1).indices
                    idx[b, y0 * wq : y1 * wq] = (best // gw + r) * wk + best % gw + r
                    del qp, scores, best  # free this chunk before the next one is allocated
        return idx.reshape(B, hq, wq, self.k_nn)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        idx = self.search(q, k, key_mask)
        return psal_ops.matched_attention(q, k, v, idx, self.patch_size, self.similarity == "dot", False,
                                          self.temperature, with_similarity=self.k_nn > 1, backend=self.backend)

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        s = shape.dtype_bytes
        B, nq, d, K = shape.batch, shape.n_queries, shape.patch_dim, self.k_nn
        n_grid = max(shape.n_valid_keys, 1)
        wq = shape.query_hw[1]
        rows = max(1, min(shape.query_hw[0], self.chunk_elements // max(n_grid * wq, 1)))
        r = shape.patch_size // 2
        shared = contract.matched_attention_memory(shape, K)
        padded_q = B * shape.channels * (shape.query_hw[0] + 2 * r) * (wq + 2 * r) * s
        chunk = rows * wq * (2 * d * s + n_grid * s + K * 16)  # patches (+ a contiguous copy), scores, top-k
        search = shared["idx"] + B * shape.n_keys + padded_q + n_grid * (d + 2) * s + chunk
        forward = max(search, shared["idx"] + max(shared["similarity"], shared["attend"]))
        memory = forward
        if shape.backward:
            memory = max(forward, contract.saved_for_backward_memory(shape, K)
                         + contract.matched_attention_backward_memory(shape, K, K > 1))
        flops = contract.FLOPS_PER_ELEMENT * B * nq * n_grid * d
        flops += contract.matched_attention_flops(shape, K, False, K > 1)
        return CostEstimate(memory_bytes=int(memory), flops=int(flops), formula=self.complexity,
                            matmul_share=self.MATMUL_SHARE)
