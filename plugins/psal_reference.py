"""Pure-PyTorch reference of the PSAL kernels (native/psal.h), vectorised over queries.

It implements the same algorithm with the same counter-based RNG, so on inputs without
near-ties it reaches the same matches as the native kernel; tests use it to cross-check the
kernel, and the plugin falls back to it where the extension cannot be built (any device).
Every function here is differentiable through ordinary autograd where the op is.
Memory is O(n d) (unrolled patches), so it is meant for small and medium images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.patches import query_patches

from .psal_contract import (  # noqa: F401  (re-exported: the reference speaks the contract's names)
    INIT_TRIALS_PER_K,
    MAX_JUMP_DEFAULT,
    MIX_ADD,
    MIX_M1,
    MIX_M2,
    PROPAGATION_STEPS,
    REACH_UNLIMITED,
    SCHEDULE_DEFAULT,
    SCHEDULE_JACOBI,
    SCHEDULE_WAVEFRONT,
    SCHEDULES,
    born_stamp,
    entry_fresh,
    first_search_level,
    jump_steps,
    matchable_map,
    search_levels,
)

def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic), as psal_mix in psal.h."""
    x = x + _signed(MIX_ADD)
    x = (x ^ _srl(x, 30)) * _signed(MIX_M1)
    x = (x ^ _srl(x, 27)) * _signed(MIX_M2)
    return x ^ _srl(x, 31)


def rng_hash(seed: int, b: int, i: torch.Tensor, it: int, trial: int) -> torch.Tensor:
    """psal_hash(seed, b, i, it, trial) for a tensor of query indices i."""
    h = mix(torch.full_like(i, _signed(seed & ((1 << 64) - 1))))
    h = mix(h ^ b)
    h = mix(h ^ i)
    h = mix(h ^ it)
    return mix(h ^ trial)


def uniform_hi(h: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    return (_srl(h, 32) * n) >> 32


def uniform_lo(h: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    return ((h & 0xFFFFFFFF) * n) >> 32


class _Costs:
    """Patch costs of one batch element's queries against candidate key centres."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, patch_size: int, dot: bool):
        self.qp = query_patches(q[None], patch_size)[0]  # (nq, d)
        r = patch_size // 2
        self.kp = F.unfold(k[None], patch_size)[0].T  # (n_grid, d) over valid key centres
        self.grid_w = k.shape[2] - 2 * r
        self.wk = k.shape[2]
        self.r = r
        self.dot = dot

    def __call__(self, rows: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        cy, cx = centres // self.wk, centres % self.wk
        kp = self.kp[(cy - self.r) * self.grid_w + (cx - self.r)]
        qp = self.qp[rows]
        if self.dot:
            return -(qp * kp).sum(-1)
        return ((qp - kp) ** 2).sum(-1)


def _insert(D: torch.Tensor, J: torch.Tensor, born: torch.Tensor, rows: torch.Tensor, cost: torch.Tensor,
            cand: torch.Tensor, stamp: int) -> None:
    """Heap insertion for many queries at once: stable sort keeps psal.h's tie rule."""
    d = torch.cat([D[rows], cost[:, None]], 1)
    j = torch.cat([J[rows], cand[:, None]], 1)
    bn = torch.cat([born[rows], torch.full_like(cand[:, None], stamp)], 1)
    order = torch.sort(d, dim=1, stable=True).indices[:, : D.shape[1]]
    D[rows] = torch.gather(d, 1, order)
    J[rows] = torch.gather(j, 1, order)
    born[rows] = torch.gather(bn, 1, order)


def search(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    patch_size: int,
    k_nn: int,
    iterations: int,
    dot: bool,
    seed: int,
    schedule: int = SCHEDULE_DEFAULT,
    init: torch.Tensor | None = None,
    reach: int = REACH_UNLIMITED,
    max_jump: int = MAX_JUMP_DEFAULT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchMatch search as specified in psal.h -> (idx (B, Hq, Wq, K) int64, n_evals (B,) int64).

    ``init``: the optional (B, Hq, Wq, K0) initial field of psal.h (its entries inserted first, in
    order; negative entries mean none; the random initialisation fills what is left);
    ``reach``, ``max_jump``: psal.h's reach limits (the random search's largest radius, 0 for
    none; the largest jump-flooding step)."""
    if schedule not in SCHEDULES.values():
        raise ValueError(f"psal_search: schedule must be one of {sorted(SCHEDULES.values())}, got {schedule}")
    if reach < 0 or max_jump < 1:
        raise ValueError(f"psal_search: reach must be >= 0 and max_jump >= 1, got {reach} and {max_jump}")
    B, _, hq, wq = q.shape
    hk, wk = k.shape[2], k.shape[3]
    r, K = patch_size // 2, k_nn
    nq = hq * wq
    dev = q.device
    idx_out = torch.empty(B, hq, wq, K, dtype=torch.long, device=dev)
    evals = torch.zeros(B, dtype=torch.long, device=dev)
    qi = torch.arange(nq, device=dev)
    ys, xs = qi // wq, qi % wq
    levels = search_levels(hk, wk)
    first_level, steps = first_search_level(hk, wk, reach), jump_steps(max_jump)
    with torch.no_grad():
        for b in range(B):
            cost_of = _Costs(q[b], k[b], patch_size, dot)
            vmap = valid[b].clone()
            vmap[:r] = False
            vmap[hk - r :] = False
            vmap[:, :r] = False
            vmap[:, wk - r :] = False
            vflat = vmap.flatten()
            usable = vflat.nonzero()[:, 0]
            n_usable = usable.numel()
            if n_usable < K:
                raise RuntimeError(f"psal_search: only {n_usable} matchable key patches for k = {K}")
            D = torch.full((nq, K), float("inf"), dtype=q.dtype, device=dev)
            J = torch.full((nq, K), -1, dtype=torch.long, device=dev)
            born = torch.zeros((nq, K), dtype=torch.long, device=dev)  # iteration of insertion
            count = 0
            stamp = 0  # born_stamp of the iteration running

            def consider(cy: torch.Tensor, cx: torch.Tensor, active: torch.Tensor, rows: torch.Tensor | None = None) -> None:
                """insert() of candidate (cy, cx)[t] into the heap of query rows[t] (all when None)."""
                nonlocal count
                inside = (cy >= r) & (cy < hk - r) & (cx >= r) & (cx < wk - r)
                cand = (cy.clamp(0, hk - 1) * wk + cx.clamp(0, wk - 1))
                heaps = J if rows is None else J[rows]
                ok = active & inside & vflat[cand] & ~(heaps == cand[:, None]).any(1)
                sel = ok.nonzero()[:, 0]
                if sel.numel() == 0:
                    return
                count += sel.numel()
                target = sel if rows is None else rows[sel]
                _insert(D, J, born, target, cost_of(target, cand[sel]), cand[sel], stamp)

            # Initialisation (it = 0): the caller's entries in order, then distinct random usable centres.
            if init is not None:
                given = init[b].reshape(nq, -1).to(torch.long)
                for m in range(given.shape[1]):
                    c = given[:, m]
                    present = (c >= 0) & (c < hk * wk)
                    c = torch.where(present, c, torch.zeros_like(c))
                    consider(c // wk, c % wk, present)
            for trial in range(INIT_TRIALS_PER_K * K):
                need = (J >= 0).sum(1) < K
                if not need.any():
                    break
                c = usable[uniform_hi(rng_hash(seed, b, qi, 0, trial), n_usable)]
                consider(c // wk, c % wk, need)
            need = (J >= 0).sum(1) < K
            if need.any():
                start = uniform_hi(rng_hash(seed, b, qi, 0, INIT_TRIALS_PER_K * K), n_usable)
                for s in range(n_usable):
                    need = (J >= 0).sum(1) < K
                    if not need.any():
                        break
                    c = usable[(start + s) % n_usable]
                    consider(c // wk, c % wk, need)

            wmax = max(hk, wk)

            def update(rows: torch.Tensor, it: int, neighbour_j: torch.Tensor, neighbour_born: torch.Tensor) -> None:
                """One iteration for the queries `rows`: propagation from `neighbour_j` (its fresh
                entries), random search."""
                nonlocal stamp
                stamp = born_stamp(it)
                everyone = torch.ones(rows.numel(), dtype=torch.bool, device=dev)
                ry, rx = ys[rows], xs[rows]
                # Jump flooding: neighbours' matches, shifted back.
                for step in steps:
                    for dy, dx in ((-step, 0), (step, 0), (0, -step), (0, step)):
                        ny, nx = ry + dy, rx + dx
                        inside = (ny >= 0) & (ny < hq) & (nx >= 0) & (nx < wq)
                        n = ny.clamp(0, hq - 1) * wq + nx.clamp(0, wq - 1)
                        for m in range(K):
                            j = neighbour_j[n, m]
                            fresh = entry_fresh(neighbour_born[n, m], it)
                            consider(j // wk - dy, j % wk - dx, inside & fresh, rows)
                # Random search around a snapshot of the current matches.
                snap = J[rows].clone()
                for level in range(first_level, levels):
                    w = wmax >> level
                    for m in range(K):
                        cy, cx = snap[:, m] // wk, snap[:, m] % wk
                        h = rng_hash(seed, b, rows, it, level * K + m)
                        y0, y1 = (cy - w).clamp(min=r), (cy + w).clamp(max=hk - r - 1)
                        x0, x1 = (cx - w).clamp(min=r), (cx + w).clamp(max=wk - r - 1)
                        consider(y0 + uniform_hi(h, y1 - y0 + 1), x0 + uniform_lo(h, x1 - x0 + 1), everyone, rows)

            if schedule == SCHEDULE_WAVEFRONT:
                # In place, one anti-diagonal y + x at a time (its queries share no row or column,
                # so processing them together is the sequential sweep of psal.h).
                diagonal = ys + xs
                order = torch.argsort(diagonal, stable=True)
                counts = torch.bincount(diagonal, minlength=hq + wq - 1).tolist()
                groups = list(torch.split(order, counts))
                for it in range(1, iterations + 1):
                    for rows in groups if it % 2 == 1 else reversed(groups):
                        update(rows, it, J, born)
            else:
                for it in range(1, iterations + 1):
                    update(qi, it, J.clone(), born.clone())
            idx_out[b] = J.reshape(hq, wq, K)
            evals[b] = count
    return idx_out, evals


def similarity(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, patch_size: int, dot: bool) -> torch.Tensor:
    """S (B, Hq, Wq, K) at the matched centres: -||q - k||^2 (l2) or q . k (dot); differentiable."""
    B, _, hq, wq = q.shape
    K = idx.shape[-1]
    r = patch_size // 2
    wk = k.shape[3]
    qp = query_patches(q, patch_size)  # (B, nq, d)
    kp = F.unfold(k, patch_size).transpose(1, 2)  # (B, n_grid, d)
    flat = idx.reshape(B, -1)
    grid = (flat // wk - r) * (wk - 2 * r) + (flat % wk - r)
    sel = torch.gather(kp, 1, grid[:, :, None].expand(-1, -1, kp.shape[2])).reshape(B, hq * wq, K, -1)
    if dot:
        s = (qp[:, :, None] * sel).sum(-1)
    else:
        s = -((qp[:, :, None] - sel) ** 2).sum(-1)
    return s.reshape(B, hq, wq, K)


def attend_terms(s: torch.Tensor, idx: torch.Tensor, key_w: int, patch_size: int, aggregation: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and value pixels of every term of every query: (B, nq, T) each (psal.h, Attend)."""
    B, hq, wq, K = s.shape
    if not aggregation:
        return s.reshape(B, hq * wq, K), idx.reshape(B, hq * wq, K)
    r = patch_size // 2
    s_map = F.pad(s.permute(0, 3, 1, 2), (r, r, r, r), value=float("-inf"))
    i_map = F.pad(idx.permute(0, 3, 1, 2), (r, r, r, r), value=0)
    scores, pixels = [], []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            sl = (slice(None), slice(None), slice(r + dy, r + dy + hq), slice(r + dx, r + dx + wq))
            scores.append(s_map[sl])
            shifted = i_map[sl] - dy * key_w - dx
            pixels.append(torch.where(torch.isinf(s_map[sl]), torch.zeros_like(shifted), shifted))
    score = torch.cat(scores, 1).flatten(2).transpose(1, 2)
    pixel = torch.cat(pixels, 1).flatten(2).transpose(1, 2)
    return score, pixel


def attend(
    s: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, patch_size: int, aggregation: bool, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(S / T)-weighted values at the matched centres (Eq. 5, or Eq. 10 with aggregation)."""
    B, hq, wq, _ = s.shape
    cv, wk = v.shape[1], v.shape[3]
    score, pixel = attend_terms(s, idx, wk, patch_size, aggregation)
    logits = score / temperature
    lse = torch.logsumexp(logits, -1)
    weights = torch.exp(logits - lse[..., None])  # (B, nq, T)
    vflat = v.flatten(2)  # (B, Cv, nk)
    vals = torch.gather(vflat, 2, pixel.reshape(B, 1, -1).expand(-1, cv, -1)).reshape(B, cv, hq * wq, -1)
    out = (vals * weights[:, None]).sum(-1)
    return out.reshape(B, cv, hq, wq), lse.reshape(B, hq, wq)
