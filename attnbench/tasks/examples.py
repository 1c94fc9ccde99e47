"""Example outputs of the task suites, saved as PNG next to the results file for people to look at.

``attnbench run`` sets ``ATTNBENCH_EXAMPLES_DIR`` to ``<results>.examples`` (e.g.
``results/runs/reconstruction-quick.examples``) before the cells start; a task runner calls
:func:`save_examples` with its first output and the images it is judged against. Files are named
``<mechanism>-<size>.png`` (parameters included, ``full[stride=2]-128.png``) and ``target-<size>.png``,
``reference-<size>.png``, ``input-<size>.png`` for the context, which ``attnbench report`` shows
side by side. Without the variable (tests, a runner called directly) nothing is written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from ..cells import CellSpec

#: the context images a report puts first, in this order
CONTEXT = ("input", "reference", "target")


def examples_dir() -> Path | None:
    """Where this run keeps its example images, or None when the run asked for none."""
    from ..context import current

    value = current().examples_dir
    return Path(value) if value else None


def _file_name(name: str, size: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.,=\[\]+-]", "_", name) + f"-{size}.png"


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """H x W x 3 (or H x W) floats in [0, 1] -> 8-bit RGB."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # C x H x W
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_examples(spec: CellSpec, output: np.ndarray, context: Mapping[str, np.ndarray] | None = None,
                  folder: Path | None = None) -> list[Path]:
    """Save one cell's output (and, once per size, its context images) as PNG; the paths written.

    ``context`` maps ``target`` / ``reference`` / ``input`` to images; ``folder`` defaults to
    :func:`examples_dir`. Never raises for a file that cannot be written: examples are a courtesy,
    a cell's measurement must not fail because of them.
    """
    folder = folder or examples_dir()
    if folder is None:
        return []
    from PIL import Image

    label = spec.mechanism + ("[" + ",".join(f"{k}={v}" for k, v in sorted(spec.params.items())) + "]"
                              if spec.params else "")
    written = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in [(label, output), *((context or {}).items())]:
            path = folder / _file_name(name, spec.size)
            if name in CONTEXT and path.exists():
                continue
            Image.fromarray(_to_uint8(image)).save(path)
            written.append(path)
    except OSError:
        pass
    return written
