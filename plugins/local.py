"""2D local attention (Parmar et al. 2018, "Image Transformer"): each query sees a w x w window.

The paper's Local baseline (w = 50). Computed blocked, as Parmar et al. do: query tiles are
compared with the key region that covers all their windows, so memory grows as O(w^2 n) instead
of O(n^2), and a window mask keeps every query to exactly its own window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from attnbench.errors import UnsupportedRequest
from attnbench.interface import AttentionMechanism, CostEstimate, ProblemShape
from attnbench.patches import usable_keys, valid_key_grid
from attnbench_plugins.full import centre_on_keys, masked_softmax_attend, needs_grad, patch_scores


#: share of the matmul yardstick the tiled windows reach, measured on CPU (`speed --preset peers`,
#: p = 5, C = 16, of a median yardstick; ~0.8x that of the best-of one): forward 13 % at 64 px,
#: 16 % at 128 px; forward + backward 2.9 % and 4.7 %, and at 256 px a timed cell (~9 calls'
#: time with warm-up, repeats and the profiled call) did not end within 900 s: < 1 % per call
#: of 880 GFLOP at 263 GFLOP/s (small matmuls, masks, autograd)
MATMUL_SHARE = {"fwd": 0.1, "fwd+bwd": 0.015}


def window_bounds(n_query: int, n_key: int, window: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row (or column): the half-open range of valid-key grid indices in its window.

    A query at position y sits at key-image position ``floor((y + 0.5) n_key / n_query)`` (the
    identity when the maps have one size); its window covers ``w`` key centres starting ``w // 2``
    before that position. Grid index = key centre - p // 2; callers clip to the grid.
    """
    y = torch.arange(n_query, dtype=torch.float64)
    centre = torch.floor((y + 0.5) * n_key / n_query).long()
    low = centre - window // 2 - patch_size // 2
    return low, low + window


class LocalAttention(AttentionMechanism):
    """Softmax attention restricted to keys whose centre lies in a w x w window around the query.

    ``window`` (w, default 50 as in the paper) is the side of the window in key pixels; windows
    are truncated at the image border (a query near the border sees fewer keys; one whose window
    holds no usable key returns 0). For cross-attention the query position is scaled to the key
    grid. ``block`` (default ceil(w/2)) is the side of the query tiles processed together.

    Implementation: one strip of ``block`` query rows at a time; within it, all tiles are batched
    against key regions of a common size Rh x Rw (Rh, Rw ~ block + w - 1, clipped to the grid).
    Cost with Q = block^2 queries per tile, R = Rh Rw keys per region, nt tiles, E bytes/element:
    forward peak ~ one strip of nt_row tiles: E B nt_row (Q d + R d + max(Q R, 2 d Rh Wk / nt_row))
    + B nt_row Q R bytes of window mask; forward+backward keeps every strip's saved tensors
    ~ E B nt (Q d + R d + Q R + R Cv) + B nt Q R mask bytes, i.e. O(w^2 n), plus, while the
    backward walks the strips in reverse, two score-sized gradients and the patch gradients.
    FLOPs: 2 B nt Q R (d + Cv) forward, 3x with backward (about (1 + block/w)^2 times the
    2 n w^2 (d + Cv) of an exact per-query window).
    """

    summary = "Local attention (Parmar et al. 2018): each query attends to the keys in a w x w window"
    complexity = "O(w^2 n)"
    supports_mask = True

    def __init__(self, *, window: int = 50, block: Optional[int] = None, **base: Any):
        super().__init__(**base)
        for name, value in (("window", window), ("block", block)):
            if value is None and name == "block":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UnsupportedRequest(f"local: {name} must be a positive integer, got {value!r}")
        self.window = window
        self.block = block

    @classmethod
    def exact_params(cls, shape: ProblemShape, usable_keys: int) -> Optional[dict[str, Any]]:
        """A window wider than twice the key image covers every key from every query."""
        return {"window": 2 * max(shape.key_hw) + 1}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "window": self.window, "block": self.block}

    def plan(self, query_hw: tuple[int, int], key_hw: tuple[int, int]) -> "TilingPlan":
        """How the queries are tiled and which key region each strip of tiles reads."""
        tile = min(self.block or max(4, math.ceil(self.window / 2)), max(query_hw))
        return TilingPlan.build(query_hw, key_hw, self.window, self.patch_size, tile)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        p, r = self.patch_size, self.patch_size // 2
        b, _, hq, wq = q.shape
        wk = k.shape[3]
        plan = self.plan((hq, wq), (k.shape[2], wk))
        tile, n_tx, reg_w = plan.tile, plan.n_tx, plan.reg_w
        track_grad = needs_grad(q, k, v)
        q_pad = F.pad(q, (r, r, r, r), mode="replicate")
        usable = usable_keys(key_mask, p)
        usable = None if usable is None else usable.view(b, *plan.grid)
        # the plan is built on the CPU (small index tensors); its indices go where the data is
        q_cols, k_cols = plan.q_cols.flatten().to(q.device), plan.k_cols.flatten().to(q.device)

        strips = []
        for y0, y1, k_row0, k_row1 in plan.strips:
            th, reg_h = y1 - y0, k_row1 - k_row0
            if reg_h <= 0:  # no valid key row in any window of this strip
                strips.append(q.new_zeros(b, v.shape[1], th, wq))
                continue
            # Layout (b, n_tx, ...): queries ordered (column, row) inside a tile, keys (column, row)
            # inside a region; index_select on column-major strips gives that order without copies.
            outside = plan.outside(y0, y1, k_row0, k_row1).to(q.device)  # (n_tx, tile*th, reg_w*reg_h)
            if usable is not None:
                cols = usable[:, k_row0:k_row1].transpose(1, 2).index_select(1, k_cols)
                outside = outside | ~cols.reshape(b, n_tx, 1, reg_w * reg_h)
            elif b > 1:
                outside = outside.expand(b, *outside.shape)
            outside = outside.reshape(b * n_tx, tile * th, reg_w * reg_h)
            q_strip = F.unfold(q_pad[:, :, y0 : y1 + 2 * r], p).view(b, -1, th, wq).permute(0, 3, 2, 1)
            qt = q_strip.index_select(1, q_cols).view(b * n_tx, tile * th, -1)
            del q_strip
            k_strip = F.unfold(k[:, :, k_row0 : k_row1 + 2 * r], p).view(b, -1, reg_h, plan.grid[1]).permute(0, 3, 2, 1)
            kt = k_strip.index_select(1, k_cols).view(b * n_tx, reg_w * reg_h, -1)
            del k_strip
            v_strip = v[:, :, k_row0 + r : k_row1 + r, r : wk - r].permute(0, 3, 2, 1)
            vt = v_strip.index_select(1, k_cols).view(b * n_tx, reg_w * reg_h, -1)
            if self.similarity == "l2":
                qt, kt = centre_on_keys(qt, kt)
            out = masked_softmax_attend(patch_scores(qt, kt, self.similarity, self.temperature), vt, outside, track_grad)
            del qt, kt, vt, outside
            # (b, n_tx, tile, th, Cv) -> (b, Cv, th, n_tx * tile) -> crop the padding columns
            out = out.view(b, n_tx, tile, th, -1).permute(0, 4, 3, 1, 2).reshape(b, -1, th, n_tx * tile)
            strips.append(out[..., :wq])
        return torch.cat(strips, dim=2)

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        plan = self.plan(shape.query_hw, shape.key_hw)
        b, d, cv, e = shape.batch, shape.patch_dim, shape.value_channels, shape.dtype_bytes
        wk = shape.key_hw[1]
        output = 2 * b * shape.n_queries * cv * e
        pairs = fwd_peak = 0
        saved: list[int] = []
        transient: list[int] = []
        for y0, y1, k_row0, k_row1 in plan.strips:
            rows_q, reg_h = plan.tile * (y1 - y0), max(k_row1 - k_row0, 0)
            region = reg_h * plan.reg_w
            pairs += plan.n_tx * rows_q * region
            tiles = b * plan.n_tx * (rows_q + region) * d * e  # query and key patch tiles
            scores = b * plan.n_tx * rows_q * region * e
            mask = b * plan.n_tx * rows_q * region  # bool window (+ key) mask
            centred = tiles if self.similarity == "l2" else 0  # centred copies beside the tiles
            fwd_peak = max(fwd_peak, mask + tiles + max(2 * b * d * reg_h * wk * e, scores, centred))
            saved.append(tiles + scores + mask + b * plan.n_tx * region * cv * e)
            transient.append(2 * scores + tiles)
        # backward walks the strips in reverse, freeing each strip's saved tensors after it
        bwd_peak = max(sum(saved[: i + 1]) + transient[i] for i in range(len(saved)))
        if shape.backward:
            memory = max(sum(saved) + fwd_peak, bwd_peak) + output
            flops = 3 * 2 * b * pairs * (d + cv)
        else:
            memory = fwd_peak + output
            flops = 2 * b * pairs * (d + cv)
        return CostEstimate(
            memory_bytes=int(memory),
            flops=int(flops),
            matmul_share=MATMUL_SHARE["fwd+bwd" if shape.backward else "fwd"],
            formula="O(w^2 n)",
            notes=f"{plan.n_tx * len(plan.strips)} tiles of {plan.tile}x{plan.tile} queries, key regions up to "
            f"{max(k1 - k0 for _, _, k0, k1 in plan.strips)}x{plan.reg_w} (w={self.window})",
        )


@dataclass(frozen=True)
class TilingPlan:
    """Query tiles and key regions of a blocked local attention (shared by attend and estimate)."""

    tile: int
    n_tx: int
    reg_w: int
    grid: tuple[int, int]
    #: (n_tx, tile) query column of each tile slot (the last tile repeats the last column)
    q_cols: torch.Tensor
    #: (n_tx, reg_w) key-grid column of each region slot
    k_cols: torch.Tensor
    #: (n_tx, tile, reg_w) whether the key column is inside the query column's window
    in_cols: torch.Tensor
    row_lo: torch.Tensor
    row_hi: torch.Tensor
    #: (y0, y1, first key row, end key row) of each strip of query rows
    strips: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def build(cls, query_hw: tuple[int, int], key_hw: tuple[int, int], window: int, patch_size: int, tile: int) -> "TilingPlan":
        (hq, wq), (hk, wk) = query_hw, key_hw
        gh, gw = valid_key_grid(key_hw, patch_size)
        n_tx = -(-wq // tile)
        q_cols = torch.arange(n_tx * tile).clamp(max=wq - 1).view(n_tx, tile)
        col_lo, col_hi = (t[q_cols] for t in window_bounds(wq, wk, window, patch_size))
        reg_w = int(min(gw, (col_hi.amax(1) - col_lo.amin(1)).max()))
        k_cols = col_lo.amin(1).clamp(min=0, max=gw - reg_w)[:, None] + torch.arange(reg_w)
        in_cols = (k_cols[:, None, :] >= col_lo[..., None]) & (k_cols[:, None, :] < col_hi[..., None])
        row_lo, row_hi = window_bounds(hq, hk, window, patch_size)
        strips = []
        for y0 in range(0, hq, tile):
            y1 = min(y0 + tile, hq)
            strips.append((y0, y1, max(int(row_lo[y0:y1].min()), 0), min(int(row_hi[y0:y1].max()), gh)))
        return cls(tile, n_tx, reg_w, (gh, gw), q_cols, k_cols, in_cols, row_lo, row_hi, tuple(strips))

    def outside(self, y0: int, y1: int, k_row0: int, k_row1: int) -> torch.Tensor:
        """(n_tx, tile*th, reg_w*reg_h) True where the key is outside the query's window."""
        k_rows = torch.arange(k_row0, k_row1)
        in_rows = (k_rows[None, :] >= self.row_lo[y0:y1, None]) & (k_rows[None, :] < self.row_hi[y0:y1, None])
        out_of_window = (~self.in_cols)[:, :, None, :, None] | (~in_rows)[None, None, :, None, :]
        return out_of_window.reshape(self.n_tx, self.tile * (y1 - y0), -1)
