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

Convergence evidence (kept with the weights, so a cache hit reports it too): the training loss
sampled in ``CURVE_POINTS`` bins, and at ``CHECKPOINTS`` fractions of the run two fixed-input
probes: ``fit`` (the loss on a fixed set of training crops: the smoothed loss, free of the noise
of random crops) and ``test`` (the test l2). :func:`convergence` states the rule.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

#: bump when the training code changes in a way that makes old cached weights wrong
TRAINING_VERSION = 4
#: fractions of the run at which the probes are evaluated (0 = the untrained network)
CHECKPOINTS = tuple(i / 10 for i in range(11))
#: bins of the sampled training-loss curve
CURVE_POINTS = 20
#: the convergence rule (:func:`convergence`): a robust (Theil-Sen) line through the probes of the last
#: CONVERGENCE_WINDOW of the run gives the trend; over the last CONVERGENCE_SPAN of the steps that
#: trend lowers the fit loss by < CONVERGENCE_SHARE of its fall over the whole run (the learning
#: curve is flat) and moves the test figure by < CONVERGENCE_TOLERANCE (the reported number has settled)
CONVERGENCE_WINDOW = 0.4
CONVERGENCE_SPAN = 0.2
CONVERGENCE_SHARE = 0.02
CONVERGENCE_TOLERANCE = 0.05
SCHEDULES = ("constant", "cosine")
CACHE_ENV = "ATTNBENCH_CACHE"


def cache_dir() -> Path:
    """``$ATTNBENCH_CACHE`` or ``results/cache`` under the current directory (git-ignored)."""
    return Path(os.environ.get(CACHE_ENV) or Path("results") / "cache")


def check_cache_writable() -> None:
    """The weight cache can be created and written, else a UserError naming ``ATTNBENCH_CACHE``:
    checked once before any cell, instead of every training cell failing with a bare errno."""
    import tempfile

    from ..errors import UserError

    folder = cache_dir()
    what = f"{CACHE_ENV}={folder}" if os.environ.get(CACHE_ENV) else f"the weight cache {folder} (set {CACHE_ENV} to move it)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} cannot be written: {exc.strerror or exc}; set {CACHE_ENV} to a writable folder") from None


def config_key(config: dict[str, Any]) -> str:
    """Stable hash of a JSON-able configuration (key order does not matter)."""
    blob = json.dumps({**config, "training_version": TRAINING_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def lr_factor(schedule: str, step: int, steps: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then constant or cosine to 0."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def checkpoint_steps(steps: int) -> list[int]:
    """The steps (number of updates done) at which the probes run."""
    return sorted({int(round(f * steps)) for f in CHECKPOINTS})


def sampled_curve(losses: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """``[[last step of bin, mean loss of bin], ...]``: the loss curve in ``points`` bins."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), min(points, len(losses)) + 1).round().astype(int)
    return [[int(hi), round(float(np.mean(losses[lo:hi])), 7)] for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def late_trend(points: list[list[float]], steps: int, window: float = CONVERGENCE_WINDOW,
               span: float = CONVERGENCE_SPAN) -> Optional[tuple[float, float]]:
    """``(change over the last span, fitted value at the end)`` of a Theil-Sen line (the median of
    the pairwise slopes) through the ``[step, value]`` points of the last ``window`` of the run;
    None with fewer than 3 such points.

    Why a line and not two probes: a stochastic layer (PSAL's random search) or a 4-pair test set
    makes any one probe noisy; the difference of two probes then measures noise, the slope through
    five measures the trend. Why Theil-Sen and not least squares: one outlying probe (a test l2
    that jumps by 13 % once and comes back) tilts a least-squares line, not the median slope."""
    from scipy.stats import theilslopes

    late = sorted((float(s), float(v)) for s, v in points if s >= (1.0 - window) * steps - 1e-9)
    if len(late) < 3 or late[-1][0] != steps:
        return None
    fit = theilslopes([v for _, v in late], [s for s, _ in late])
    return float(fit.slope * span * steps), float(fit.slope * steps + fit.intercept)


def convergence(fit: list[list[float]], steps: int, test: Optional[list[list[float]]] = None,
                share: float = CONVERGENCE_SHARE, tolerance: float = CONVERGENCE_TOLERANCE) -> dict[str, Any]:
    """Converged = the late trend (:func:`late_trend`) of the fit loss falls by less than ``share``
    of its fall over the whole run (the untrained network's fit loss minus the trend's end), and
    that of the ``test`` figure (when probed) moves it by less than ``tolerance`` (relative).

    Why both: the fit loss (fixed training crops) tells whether optimisation has flattened out,
    relative to how far it came, so a slow tail of a long descent passes while a run still
    descending fails; the test figure is what a record reports, and it must have stopped moving
    (a network that over-fits, its test l2 rising while the fit loss falls, fails too).
    ``fit`` and ``test`` hold ``[step, value]`` pairs; without the step-0 probe or 3 probes in
    the late window (the last at ``steps``) there is no verdict (not converged).
    """
    none = {"converged": False, "late_improvement": None, "late_share": None, "test_drift": None}
    by_step = {int(s): float(v) for s, v in fit}
    trend = late_trend(fit, steps)
    if trend is None or 0 not in by_step:
        return none
    change, end = trend
    improvement = -change / (end - change) if end - change > 0 else 0.0
    total = by_step[0] - end
    late_share = -change / total if total > 0 else (0.0 if change >= 0 else 1.0)
    drift = None
    if test:
        test_trend = late_trend(test, steps)
        if test_trend is None:
            return dict(none, late_improvement=round(improvement, 5), late_share=round(late_share, 5))
        drift = abs(test_trend[0]) / test_trend[1] if test_trend[1] > 0 else 0.0
    converged = late_share < share and (drift is None or drift < tolerance)
    return {"converged": bool(converged), "late_improvement": round(improvement, 5), "late_share": round(late_share, 5),
            "test_drift": None if drift is None else round(drift, 5)}


@contextmanager
def denormals_flushed():
    """Flush subnormal floats to zero while training (CPU), then restore the previous setting.

    Why: a softmax over well-separated patch distances produces weights like 1e-40, and x86 cores
    run arithmetic on subnormals ~100x slower; on the colorization net a Full-attention step took
    4x longer (0.86 s vs 0.2 s at 32 px). Values that small change no weight a float32 Adam
    update could represent. Timing and memory suites never use this: it is training only (torch
    has no getter, so the process's default, off, is restored).
    """
    supported = torch.set_flush_denormal(True)  # False where the CPU cannot (nothing changes)
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(False)


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
    #: ``{probe name: [[step, value], ...]}`` at :data:`CHECKPOINTS` (empty without probes)
    probes: dict[str, list[list[float]]] = field(default_factory=dict)
    steps: int = 0

    def evidence(self) -> dict[str, Any]:
        """What a record needs to show that training converged: curves, probes and the rule's verdict."""
        out: dict[str, Any] = {"train_loss_curve": sampled_curve(self.losses)}
        out.update({f"{name}_curve": values for name, values in self.probes.items()})
        out.update(convergence(self.probes.get("fit", []), self.steps, self.probes.get("test")))
        return out

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
    schedule: str = "constant",
    warmup: int = 0,
    probes: Optional[dict[str, Callable[[nn.Module], float]]] = None,
) -> TrainResult:
    """Train ``build()`` for ``steps`` Adam steps of ``loss_at(model, step)``, or load cached weights.

    ``config`` must name everything that changes the result; its hash is the cache key.
    ``schedule``/``warmup`` shape the learning rate (:func:`lr_factor`). ``probes`` (name ->
    function of the model, called under ``no_grad`` in eval mode with a fixed torch seed) are
    evaluated at :func:`checkpoint_steps`; name one ``fit`` for :func:`convergence`.
    """
    probes = probes or {}
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    lr_factor(schedule, 0, steps, warmup)  # an unknown schedule fails before any work
    settings = {"steps": steps, "lr": lr, "seed": seed, "schedule": schedule, "warmup": warmup}
    key = config_key({**config, **settings, "probes": sorted(probes)})
    final, partial = directory / f"{key}.pt", directory / f"{key}.partial.pt"

    def fresh() -> _TrainState:
        torch.manual_seed(seed)
        return _fresh_state(build(), lr, probes)

    state = fresh()
    cached = _load_cached(final, state.model, key, steps)
    if cached is not None:
        return cached
    state = _resume(partial, state, probes, fresh)
    (directory / f"{key}.json").write_text(json.dumps({**config, **settings}, sort_keys=True, indent=1, default=str))
    train_time = _train_steps(state, loss_at, steps, lambda step: lr * lr_factor(schedule, step, steps, warmup),
                              seed, probes, partial, checkpoint_every_s, description)
    model = state.model
    _atomic_save({"model": model.state_dict(), "losses": state.losses, "probes": state.probed, "config": config,
                  "train_time_s": train_time}, final)
    partial.unlink(missing_ok=True)
    return TrainResult(model, key, final, state.losses, cached=False, resumed_from=state.start_step,
                       train_time_s=train_time, probes=state.probed, steps=steps)


@dataclass
class _TrainState:
    """What a checkpoint holds, so that a run cut short resumes where it stopped, not from step 0."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    losses: list[float]
    #: ``{probe name: [[step, value], ...]}``
    probed: dict[str, list[list[float]]]
    start_step: int = 0
    #: training seconds spent before the resume, so that train_time_s counts the whole run
    elapsed_before: float = 0.0


def _fresh_state(model: nn.Module, lr: float, probes: dict[str, Callable[[nn.Module], float]]) -> _TrainState:
    """Step 0: a new Adam optimizer, no losses, no probe values."""
    return _TrainState(model, torch.optim.Adam(model.parameters(), lr=lr), [], {name: [] for name in probes})


def _load_cached(final: Path, model: nn.Module, key: str, steps: int) -> Optional[TrainResult]:
    """The finished run's weights loaded into ``model``, or None; a damaged cache entry is removed,
    as it is only a missed cache hit."""
    if not final.exists():
        return None
    try:
        saved = torch.load(final, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        return TrainResult(model, key, final, list(saved.get("losses", [])), cached=True,
                           train_time_s=float(saved.get("train_time_s", 0.0)),
                           probes=dict(saved.get("probes", {})), steps=steps)
    except Exception:
        final.unlink(missing_ok=True)
        return None


def _resume(partial: Path, state: _TrainState, probes: dict[str, Callable[[nn.Module], float]],
            fresh: Callable[[], _TrainState]) -> _TrainState:
    """``state`` continued from the partial checkpoint, if any; a damaged one is removed and training
    starts over from ``fresh()`` (a model half-loaded from it must not be trained on)."""
    if not partial.exists():
        return state
    try:
        ckpt = torch.load(partial, map_location="cpu", weights_only=False)
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.losses, state.start_step = list(ckpt["losses"]), int(ckpt["step"])
        state.probed = {name: list(ckpt.get("probes", {}).get(name, [])) for name in probes}
        state.elapsed_before = float(ckpt.get("train_time_s", 0.0))
        return state
    except Exception:
        partial.unlink(missing_ok=True)
        return fresh()


def _run_probes(state: _TrainState, probes: dict[str, Callable[[nn.Module], float]], seed: int, done: int) -> None:
    """Each probe once at step ``done``, in eval mode under ``no_grad``, with one fixed torch seed so
    that stochastic layers make the same draw at every probe."""
    model = state.model
    model.eval()
    with torch.no_grad():
        for name, probe in probes.items():
            if not any(s == done for s, _ in state.probed[name]):
                torch.manual_seed(step_seed(seed, -1))
                state.probed[name].append([done, round(float(probe(model)), 7)])
    model.train()


def _train_steps(state: _TrainState, loss_at: Callable[[nn.Module, int], torch.Tensor], steps: int,
                 lr_at: Callable[[int], float], seed: int, probes: dict[str, Callable[[nn.Module], float]],
                 partial: Path, checkpoint_every_s: float, description: str) -> float:
    """Adam steps from ``state.start_step`` to ``steps``, probed at :func:`checkpoint_steps` and
    checkpointed to ``partial`` every ``checkpoint_every_s``; returns the whole run's training seconds."""
    model, optimizer, losses = state.model, state.optimizer, state.losses
    at_checkpoint = set(checkpoint_steps(steps))
    t0 = last_save = time.perf_counter()
    model.train()
    with denormals_flushed(), _progress(steps, description) as bar:
        task = bar.add_task(description, total=steps, completed=state.start_step, loss="-")
        if state.start_step in at_checkpoint:
            _run_probes(state, probes, seed, state.start_step)
        for step in range(state.start_step, steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            torch.manual_seed(step_seed(seed, step))
            optimizer.zero_grad(set_to_none=True)
            loss = loss_at(model, step)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, loss=f"{losses[-1]:.5f}")
            if step + 1 in at_checkpoint:
                _run_probes(state, probes, seed, step + 1)
            if time.perf_counter() - last_save > checkpoint_every_s and step + 1 < steps:
                _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "losses": losses,
                              "probes": state.probed, "step": step + 1,
                              "train_time_s": state.elapsed_before + time.perf_counter() - t0}, partial)
                last_save = time.perf_counter()
    model.eval()
    return state.elapsed_before + time.perf_counter() - t0
