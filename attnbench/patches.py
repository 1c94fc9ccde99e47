"""Patches, the unit every mechanism compares, and the border rule they all share.

Border rule (one rule for every mechanism, so their outputs are comparable):

* **Keys** are valid only where the whole p x p patch lies inside the key image: key centres
  range over ``[r, Hk - r) x [r, Wk - r)`` with ``r = p // 2``. Border keys are never matched
  (the original PSAL code gave them random matches with cost 0, which polluted aggregation).
* **Queries** exist at every position. A query patch that leaves the image reads the nearest
  pixel inside it (replicate padding, i.e. clamped coordinates), so border queries get a real,
  full-size patch and a real match.
* With a ``key_mask`` (B, 1, Hk, Wk), True = hole, a key is also invalid when any pixel of its
  patch is inside the hole, so matches only ever copy known content.
* The value returned for a match is the value at the key patch's centre.

Patch vectors are unrolled channel-major (``F.unfold`` order), d = p^2 C.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def query_patches(q: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, Hq, Wq) -> (B, Hq*Wq, C*p*p): one replicate-padded patch per query position."""
    r = patch_size // 2
    padded = F.pad(q, (r, r, r, r), mode="replicate") if r else q
    return F.unfold(padded, patch_size).transpose(1, 2)


def key_patches(k: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, Hk, Wk) -> (B, nk, C*p*p) over valid key centres only (row-major)."""
    return F.unfold(k, patch_size).transpose(1, 2)


def key_centre_values(v: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, Cv, Hk, Wk) -> (B, nk, Cv): the value at each valid key centre."""
    r = patch_size // 2
    h, w = v.shape[2], v.shape[3]
    return v[:, :, r : h - r, r : w - r].flatten(2).transpose(1, 2)


def valid_key_grid(key_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Height and width of the grid of valid key centres."""
    return key_hw[0] - patch_size + 1, key_hw[1] - patch_size + 1


def usable_keys(key_mask: Optional[torch.Tensor], patch_size: int) -> Optional[torch.Tensor]:
    """(B, 1, Hk, Wk) bool hole mask -> (B, nk) bool, True where a valid key avoids the hole."""
    if key_mask is None:
        return None
    touched = F.max_pool2d(key_mask.to(torch.float32), patch_size, stride=1) > 0
    return ~touched.flatten(1)


def similarity_matrix(qp: torch.Tensor, kp: torch.Tensor, similarity: str) -> torch.Tensor:
    """(B, nq, d), (B, nk, d) -> (B, nq, nk) scores: -||q-k||^2 for ``l2``, q.k for ``dot``."""
    dot = torch.bmm(qp, kp.transpose(1, 2))
    if similarity == "dot":
        return dot
    if similarity == "l2":
        qn = (qp * qp).sum(-1, keepdim=True)
        kn = (kp * kp).sum(-1).unsqueeze(1)
        return 2 * dot - qn - kn
    raise ValueError(f"unknown similarity {similarity!r}")


def fold_queries(out: torch.Tensor, query_hw: tuple[int, int]) -> torch.Tensor:
    """(B, nq, Cv) -> (B, Cv, Hq, Wq)."""
    b, _, cv = out.shape
    return out.transpose(1, 2).reshape(b, cv, query_hw[0], query_hw[1])


def key_index_to_centre(index: torch.Tensor, key_hw: tuple[int, int], patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index into the valid-key grid -> (y, x) centre coordinates in the key image."""
    _, gw = valid_key_grid(key_hw, patch_size)
    r = patch_size // 2
    return index // gw + r, index % gw + r
