"""The frame pairs a cell uses: the user's ``--data`` folder when set, else the embedded pairs.

Why a module of its own: suites and the run's up-front check ask one question (which pairs, and
what identifies them for the weight cache) without caring where the pairs come from; the pairs
themselves are made in :mod:`.embedded` and :mod:`.user_data`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from .embedded import DEFAULT_MOTION, EMBEDDED_VERSION, embedded_motion, embedded_pairs, embedded_split
from .pairs import FramePair
from .user_data import load_pair, user_pair_paths, user_pairs


def check_user_images(folder: str | Path, count: int, size: Optional[int] = None) -> int:
    """Read (fully decode) the first ``count`` pairs of a user folder before any cell runs, as the
    cells will (``size``: the largest square side they need); return how many pairs it holds. An
    empty folder, one without pairs, an unreadable, empty, truncated, too large or too small
    image, or one whose mode has no RGB mapping is a UserError naming the file."""
    entries = user_pair_paths(folder, "all")
    for entry in entries[:max(count, 1)]:
        load_pair(*entry, size=size)
    return len(entries)


def task_pairs(options: dict, count: int, seed: int, split: str = "all", size: Optional[int] = None) -> list[FramePair]:
    """The pairs a cell uses: ``options['data']`` (from ``--data``) when set, else the embedded ones;
    with ``size``, user pairs come square at that size (resized once per run, see read_square)."""
    folder = options.get("data")
    if folder:
        return user_pairs(folder, count, split, size)
    shift = embedded_motion(options)
    if split == "all":
        return embedded_pairs(count, seed, shift=shift)
    return embedded_split(split, count, seed, shift)


def data_identity(options: dict) -> str:
    """A string that changes when the data a cached network was trained on changes."""
    folder = options.get("data")
    if not folder:
        shift = embedded_motion(options)
        return f"embedded-v{EMBEDDED_VERSION}" + ("" if shift == DEFAULT_MOTION else f"-motion{shift[0]:g}-{shift[1]:g}")
    entries = user_pair_paths(folder, "train")
    stamp = repr([(name, str(a), a.stat().st_size, b.stat().st_size) for name, a, b in entries])
    return f"user:{Path(folder).resolve()}:{hashlib.sha1(stamp.encode()).hexdigest()[:12]}"
