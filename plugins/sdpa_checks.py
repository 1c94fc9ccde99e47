"""The forced SDPA backends' part of ``attnbench check`` (entry point group ``attnbench.checks``).

``attnbench check`` compares each mechanism's exact setting with Full under its default
parameters only (``sdpa`` alone is the math backend); a forced backend is a different kernel, so
each one is compared with Full on its own, in the dtypes the device's kernels take. Where a
backend does not exist or refuses the dtype, the check is skipped with SDPA's reason.
"""
from __future__ import annotations

from typing import Iterator

import torch

from attnbench.selfcheck import REFERENCE, Check, exact_check
from attnbench_plugins.flash import SDPA_BACKENDS


def checks(device: str, quick: bool) -> Iterator[Check]:
    """One exactness check per forced backend and dtype (the default backend is checked as ``sdpa``)."""
    if device.startswith("cuda"):
        dtypes = (torch.float32, torch.float16, torch.bfloat16)
    else:
        dtypes = (torch.float64,)
    for backend in SDPA_BACKENDS:
        if backend == "math":
            continue  # the `sdpa` entry's default, already checked by the mechanism checks
        name = f"sdpa-{backend}"
        for dtype in dtypes:
            label = f"forced {backend} backend = {REFERENCE} ({str(dtype).replace('torch.', '')})"
            yield Check(f"mechanism {name}", label, lambda n=name, d=dtype: exact_check(n, device, d))
