"""The frame pair every image task works on.

Why pairs: every task here (reconstruction, colorization, substitution) copies content from a
reference frame B into a frame A, as between two video frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .images import square_resize


@dataclass(frozen=True)
class FramePair:
    """Two frames of one scene: ``a`` is reconstructed / colourised from reference ``b``."""

    name: str
    a: np.ndarray
    b: np.ndarray


def square_pair(pair: FramePair, size: int) -> FramePair:
    """The same centre crop and resize applied to both frames."""
    return FramePair(pair.name, square_resize(pair.a, size), square_resize(pair.b, size))

