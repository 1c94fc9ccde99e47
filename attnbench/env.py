"""The environment recorded with every result: enough to know whether two numbers are comparable."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the attnbench checkout (empty when not installed from a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    if out.returncode != 0:
        return ""
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def capture(device: str = "cpu", seed: int | None = None) -> dict[str, Any]:
    """Environment of this process for a cell on ``device``."""
    from . import __version__
    from .measure.memory import total_memory_bytes
    from .registry import plugin_versions

    env: dict[str, Any] = {
        "attnbench": __version__,
        "plugins": plugin_versions(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_total_bytes": total_memory_bytes(device) if (device == "cpu" or torch.cuda.is_available()) else None,
        "commit": git_commit(),
        "seed": seed,
        "cuda": torch.version.cuda,
        "argv": sys.argv[:1],
    }
    return env
