"""Training with a weight cache keyed by configuration, checkpoints and resume.

Why: a quality suite trains one network per mechanism, and the substitution suite needs the same
networks again. Weights are stored under ``cache_dir()/<key>.pt`` where ``key`` hashes every
setting that changes the result (task, mechanism and parameters, sizes, steps, lr, seed, data),
so a second run loads instead of training and a changed setting never reuses stale weights.
Deleting the cache only costs retraining.

While training, a checkpoint (model, optimizer, losses, step) is written atomically to
``<key>.partial.pt`` at most every ``checkpoint_every_s`` seconds; a run killed mid-training
resumes from it. Each step draws its data and its random numbers from ``(seed, step)``, so a
resumed run follows the same trajectory as an uninterrupted one. A checkpoint that cannot be read
is deleted and training restarts from step 0.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

#: bump when the training code changes in a way that makes old cached weights wrong
TRAINING_VERSION = 1
CACHE_ENV = "ATTNBENCH_CACHE"


def cache_dir() -> Path:
    """``$ATTNBENCH_CACHE`` or ``results/cache`` under the current directory (git-ignored)."""
    return Path(os.environ.get(CACHE_ENV) or Path("results") / "cache")


def config_key(config: dict[str, Any]) -> str:
    """Stable hash of a JSON-able configuration (key order does not matter)."""
    blob = json.dumps({**config, "training_version": TRAINING_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def step_seed(seed: int, step: int) -> int:
    """The torch seed of one training step: resumed and uninterrupted runs draw the same numbers."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


@dataclass
class TrainResult:
    model: nn.Module
    key: str
    path: Path
    losses: list[float] = field(default_factory=list)
    #: True when the weights were loaded from the cache and no step ran
    cached: bool = False
    #: step a checkpoint resumed from (0 = trained from scratch)
    resumed_from: int = 0
    train_time_s: float = 0.0

    def loss_summary(self) -> dict[str, float]:
        """First and last losses, averaged over a tenth of the run, to show that training worked."""
        if not self.losses:
            return {}
        span = max(1, len(self.losses) // 10)
        return {"train_loss_first": float(sum(self.losses[:span]) / span),
                "train_loss_last": float(sum(self.losses[-span:]) / span)}


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _progress(total: int, description: str):
    """A rich progress bar on stderr; silent when stderr is not a terminal (worker logs)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                    TimeRemainingColumn(), console=console, disable=not console.is_terminal, transient=True)


def train_cached(
    config: dict[str, Any],
    build: Callable[[], nn.Module],
    loss_at: Callable[[nn.Module, int], torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    directory: Optional[Path] = None,
    checkpoint_every_s: float = 20.0,
    description: str = "training",
) -> TrainResult:
    """Train ``build()`` for ``steps`` Adam steps of ``loss_at(model, step)``, or load cached weights.

    ``config`` must name everything that changes the result; its hash is the cache key.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    key = config_key({**config, "steps": steps, "lr": lr, "seed": seed})
    final, partial = directory / f"{key}.pt", directory / f"{key}.partial.pt"
    torch.manual_seed(seed)
    model = build()

    if final.exists():
        try:
            saved = torch.load(final, map_location="cpu", weights_only=False)
            model.load_state_dict(saved["model"])
            return TrainResult(model, key, final, list(saved.get("losses", [])), cached=True,
                               train_time_s=float(saved.get("train_time_s", 0.0)))
        except Exception:  # a damaged cache entry is only a missed cache hit
            final.unlink(missing_ok=True)

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    start_step, elapsed_before = 0, 0.0
    if partial.exists():
        try:
            ckpt = torch.load(partial, map_location="cpu", weights_only=False)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            losses, start_step = list(ckpt["losses"]), int(ckpt["step"])
            elapsed_before = float(ckpt.get("train_time_s", 0.0))
        except Exception:
            partial.unlink(missing_ok=True)
            torch.manual_seed(seed)
            model = build()
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            losses, start_step = [], 0
    (directory / f"{key}.json").write_text(json.dumps({**config, "steps": steps, "lr": lr, "seed": seed},
                                                      sort_keys=True, indent=1, default=str))

    t0 = last_save = time.perf_counter()
    model.train()
    with _progress(steps, description) as bar:
        task = bar.add_task(description, total=steps, completed=start_step, loss="-")
        for step in range(start_step, steps):
            torch.manual_seed(step_seed(seed, step))
            optimizer.zero_grad(set_to_none=True)
            loss = loss_at(model, step)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, loss=f"{losses[-1]:.5f}")
            if time.perf_counter() - last_save > checkpoint_every_s and step + 1 < steps:
                _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "losses": losses,
                              "step": step + 1, "train_time_s": elapsed_before + time.perf_counter() - t0}, partial)
                last_save = time.perf_counter()
    model.eval()
    train_time = elapsed_before + time.perf_counter() - t0
    _atomic_save({"model": model.state_dict(), "losses": losses, "config": config, "train_time_s": train_time}, final)
    partial.unlink(missing_ok=True)
    return TrainResult(model, key, final, losses, cached=False, resumed_from=start_step, train_time_s=train_time)
