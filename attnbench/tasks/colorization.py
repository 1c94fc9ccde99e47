"""Guided colorization (paper Sec. 4.3): train, cache and evaluate one network per mechanism.

Protocol (paper: DAVIS at 256 x 256, Adam lr 1e-3, batch 1, 200k steps; our ``quick`` preset
shrinks the image and the step count, see suites/colorization.toml):

* training pairs (embedded: camera-motion pairs of TRAIN_PHOTOS; ``--data``: the training split)
  are resized to ``size`` x ``size``; each step takes ``batch`` random ``crop`` x ``crop``
  windows (the same window in A and B) with a random horizontal flip, drawn from ``(seed, step)``;
* the loss is the mean squared error between the network's output and colour frame A, given
  grey A and colour B;
* the test l2 is the same error on whole ``size`` x ``size`` test pairs (embedded: the stereo pair
  and a held-out photo), output clipped to [0, 1];
* the attention layer's cost (peak memory, FLOPs, estimates) is measured on the first test pair,
  forward only, as the paper's "test GFLOPs / test memory";
* ``seeds`` networks are trained per cell (seeds ``seed, seed + 1 ...``), with a learning-rate
  ``schedule`` (``constant`` or ``cosine``, after ``warmup`` linear steps); each carries its
  convergence evidence (:mod:`.training`): the sampled loss curve, the ``fit`` probe (loss on
  ``probe_crops`` fixed training crops) and the ``test`` probe (test l2) at 0, 20, ... 100 % of
  the steps, and the ``converged`` verdict;
* two baselines share the setup and seeds (:data:`.networks.BASELINES`): ``no-attention`` (the
  attention output replaced by zeros) and ``zero-motion`` (each query takes the value at its own
  position in the reference); an attention layer that does not beat both has learned nothing a
  copy without motion would not give.

Used by the ``colorization`` suite and, with a swapped attention, by ``substitution``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..cells import CellSpec
from ..errors import UnsupportedRequest
from ..interface import AttentionMechanism, dtype_from_name
from ..measure.call import AttentionCall, CallBudget
from ..options import ImageOptions, MeasureOptions
from .costs import build, measure_attention
from .data import data_identity, task_pairs
from .pairs import FramePair, square_pair
from .examples import save_examples
from .metrics import l2
from .networks import BASELINES, ColorizationNet, grey3
from .training import (CONVERGENCE_SHARE, CONVERGENCE_SPAN, CONVERGENCE_TOLERANCE, CONVERGENCE_WINDOW, SCHEDULES, TrainResult,
                       train_cached)

#: the sampler step of the fixed crops of the ``fit`` probe (never a training step)
PROBE_STEP = 10**9
CONVERGENCE_RULE = (f"a Theil-Sen line (median pairwise slope) through the probes of the last {CONVERGENCE_WINDOW:.0%} of the steps: over the "
                    f"last {CONVERGENCE_SPAN:.0%} it lowers the fit loss (fixed training crops) by < {CONVERGENCE_SHARE:.0%} of "
                    f"its fall over the whole run and moves the test l2 by < {CONVERGENCE_TOLERANCE:.0%}")


@dataclass(frozen=True)
class ColorizationOptions(MeasureOptions, ImageOptions):
    """Options of the colorization (and substitution) suites; :class:`ColorizationSetup` reads them."""

    steps: int = 300
    #: training crop side (None: the whole frame)
    crop: Optional[int] = None
    lr: float = 1e-3
    train_pairs: int = 8
    test_pairs: int = 3
    #: channels the attention layer sees
    features: int = 16
    #: learning-rate schedule (``constant`` or ``cosine``) and linear warm-up steps
    schedule: str = "constant"
    warmup: int = 0
    #: networks trained per cell (seeds ``seed, seed + 1, ...``): the spread of the figures
    seeds: int = 1
    #: fixed training crops the ``fit`` probe (the smoothed training loss) is measured on
    probe_crops: int = 8
    #: also train the no-attention and zero-motion baselines (cached; same setup and seeds)
    baselines: bool = True

    def images_needed(self) -> int:
        return self.train_pairs + self.test_pairs

    def check_machine(self) -> None:
        from .training import check_cache_writable

        check_cache_writable()  # trained weights are kept there


@dataclass(frozen=True)
class ColorizationSetup:
    """The settings of one colorization network, read from a cell's options."""

    size: int
    crop: int
    steps: int
    lr: float
    train_pairs: int
    test_pairs: int
    features: int
    batch: int
    seed: int
    #: learning-rate schedule (``constant`` or ``cosine``) and linear warm-up steps
    schedule: str = "constant"
    warmup: int = 0
    #: networks trained per cell, with seeds ``seed, seed + 1, ...``: the spread of the figures
    seeds: int = 1
    #: fixed training crops the ``fit`` probe (the smoothed training loss) is measured on
    probe_crops: int = 8
    #: also train the no-attention and zero-motion baselines (cached; same setup and seeds)
    baselines: bool = True

    @classmethod
    def from_spec(cls, spec: CellSpec) -> "ColorizationSetup":
        o = spec.options
        setup = cls(size=spec.size, crop=min(int(o.get("crop", spec.size)), spec.size), steps=int(o.get("steps", 300)),
                    lr=float(o.get("lr", 1e-3)), train_pairs=int(o.get("train_pairs", 8)),
                    test_pairs=int(o.get("test_pairs", 3)), features=int(o.get("features", 16)),
                    batch=spec.batch, seed=spec.seed, schedule=str(o.get("schedule", "constant")),
                    warmup=int(o.get("warmup", 0)), seeds=int(o.get("seeds", 1)),
                    probe_crops=int(o.get("probe_crops", 8)), baselines=bool(o.get("baselines", True)))
        if setup.schedule not in SCHEDULES:
            raise UnsupportedRequest(f"schedule must be one of {', '.join(SCHEDULES)}, got {setup.schedule!r}")
        for name in ("steps", "seeds", "train_pairs", "test_pairs", "probe_crops"):
            if getattr(setup, name) < 1:
                raise UnsupportedRequest(f"{name} must be >= 1, got {getattr(setup, name)}")
        return setup

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


def frames_tensor(pairs: list[FramePair], which: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([getattr(p, which) for p in pairs]).transpose(0, 3, 1, 2).copy())


class CropSampler:
    """Random training windows, a pure function of the step (so resumed training is identical)."""

    def __init__(self, pairs: list[FramePair], crop: int, batch: int, seed: int, device: torch.device, dtype: torch.dtype):
        self.a = frames_tensor(pairs, "a").to(device, dtype)
        self.b = frames_tensor(pairs, "b").to(device, dtype)
        self.crop, self.batch, self.seed = crop, batch, seed

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, step))
        n, _, h, w = self.a.shape
        idx = rng.integers(0, n, self.batch)
        ys, xs = rng.integers(0, h - self.crop + 1, self.batch), rng.integers(0, w - self.crop + 1, self.batch)
        flips = rng.random(self.batch) < 0.5
        a, b = [], []
        for i, y, x, flip in zip(idx, ys, xs, flips):
            wa, wb = self.a[i, :, y : y + self.crop, x : x + self.crop], self.b[i, :, y : y + self.crop, x : x + self.crop]
            if flip:
                wa, wb = wa.flip(-1), wb.flip(-1)
            a.append(wa)
            b.append(wb)
        return torch.stack(a), torch.stack(b)


def training_config(spec: CellSpec, setup: ColorizationSetup, layer: Optional[str] = None) -> dict[str, Any]:
    """Everything that changes the trained weights (the cache key); no suite or preset name.

    ``layer`` names a baseline of :data:`BASELINES` trained in place of ``spec.mechanism``.
    """
    if layer is not None:
        identity: dict[str, Any] = {"baseline": layer}
    else:
        # the resolved parameters, defaults included, so a changed default retrains (backend
        # excluded: native and reference kernels compute the same layer)
        resolved = build(spec.mechanism, spec.patch_size, dict(spec.params), "cpu").params()
        resolved.pop("backend", None)
        identity = {"mechanism": spec.mechanism, "params": dict(sorted(spec.params.items())),
                    "resolved": dict(sorted(resolved.items())), "patch_size": spec.patch_size}
    return {"task": "colorization", **identity, "size": setup.size, "crop": setup.crop, "features": setup.features,
            "train_pairs": setup.train_pairs, "test_pairs": setup.test_pairs, "probe_crops": setup.probe_crops,
            "batch": setup.batch, "device": spec.device, "dtype": spec.dtype, "data": data_identity(spec.options)}


def train_network(spec: CellSpec, seed: Optional[int] = None, layer: Optional[str] = None) -> TrainResult:
    """The colorization network of ``spec.mechanism`` (or of baseline ``layer``) trained with
    ``seed`` (default ``spec.seed``), from the cache or trained now, with its convergence probes."""
    setup = ColorizationSetup.from_spec(spec)
    seed = spec.seed if seed is None else seed
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    pairs = [square_pair(p, setup.size) for p in task_pairs(spec.options, setup.train_pairs, spec.seed, "train", setup.size)]
    sampler = CropSampler(pairs, setup.crop, setup.batch, seed, device, dtype)
    probe_a, probe_b = CropSampler(pairs, setup.crop, setup.probe_crops, seed, device, dtype)(PROBE_STEP)
    tests = test_pairs(spec)

    def make() -> ColorizationNet:
        attention = BASELINES[layer]() if layer else build(spec.mechanism, spec.patch_size, dict(spec.params), spec.device)
        return ColorizationNet(attention, setup.features).to(device, dtype)

    def loss_at(net: torch.nn.Module, step: int) -> torch.Tensor:
        a, b = sampler(step)
        return torch.mean((net(grey3(a), b) - a) ** 2)

    def fit(net: torch.nn.Module) -> float:
        return float(torch.mean((net(grey3(probe_a), probe_b) - probe_a) ** 2))

    def test(net: torch.nn.Module) -> float:
        return test_l2(net, tests, spec)[0]

    return train_cached(training_config(spec, setup, layer), make, loss_at, setup.steps, setup.lr, seed,
                        description=f"colorization {layer or spec.mechanism} seed {seed}",
                        schedule=setup.schedule, warmup=setup.warmup, probes={"fit": fit, "test": test})


def test_pairs(spec: CellSpec) -> list[FramePair]:
    setup = ColorizationSetup.from_spec(spec)
    return [square_pair(p, setup.size) for p in task_pairs(spec.options, setup.test_pairs, spec.seed, "test", setup.size)]


def test_l2(net: torch.nn.Module, pairs: list[FramePair], spec: CellSpec,
            save_example: bool = False) -> tuple[float, list[float]]:
    """Mean and per-pair l2 of the network's output (clipped to [0, 1]) on whole test frames;
    ``save_example`` saves the first pair's output beside the results (tasks/examples.py)."""
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    errors = []
    was_training = net.training
    net.eval()
    for pair in pairs:
        a = frames_tensor([pair], "a").to(device, dtype)
        b = frames_tensor([pair], "b").to(device, dtype)
        torch.manual_seed(spec.seed)  # stochastic layers (PSAL, LSH) give the same test figure every run
        with torch.no_grad():
            out = net(grey3(a), b).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        errors.append(l2(out, pair.a))
        if save_example and pair is pairs[0]:
            save_examples(spec, out, {"input": grey3(a)[0].permute(1, 2, 0).cpu().numpy(), "reference": pair.b,
                                      "target": pair.a})
    net.train(was_training)
    return float(np.mean(errors)), errors


def evaluate(net: ColorizationNet, pairs: list[FramePair], spec: CellSpec, prefix: str = "") -> dict[str, Any]:
    """Test l2 over ``pairs`` and the attention layer's cost on the first one (forward only)."""
    metrics = attention_cost(net, pairs, spec, prefix)
    mean, errors = test_l2(net, pairs, spec)
    metrics[f"{prefix}l2"] = mean
    metrics[f"{prefix}l2_per_pair"] = [round(e, 6) for e in errors]
    return metrics


def attention_cost(net: ColorizationNet, pairs: list[FramePair], spec: CellSpec, prefix: str = "") -> dict[str, Any]:
    """The attention layer's estimate, feasibility and measured cost on the first test pair."""
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    attention: AttentionMechanism = net.attention
    a0 = frames_tensor(pairs[:1], "a").to(device, dtype)
    b0 = frames_tensor(pairs[:1], "b").to(device, dtype)
    with torch.no_grad():
        q, kv = net.attention_inputs(grey3(a0), b0)
    budget = CallBudget.for_cell(spec, MeasureOptions.subset_of(spec), {"memory", "flops"})
    _, metrics = measure_attention(AttentionCall(attention, q, kv, kv), budget, prefix)
    return metrics


def spread(values: list[float], prefix: str) -> dict[str, Any]:
    """Mean, per-seed values, sample standard deviation and min-max range of one figure."""
    arr = np.asarray(values, dtype=float)
    return {prefix: float(arr.mean()), f"{prefix}_seeds": [round(float(v), 7) for v in arr],
            f"{prefix}_std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            f"{prefix}_range": [float(arr.min()), float(arr.max())]}


def training_evidence(results: list[TrainResult], seeds: list[int]) -> dict[str, Any]:
    """Per-seed convergence evidence and the cell's verdict (converged = every seed converged)."""
    per_seed = [{"seed": s, **r.evidence(), **r.loss_summary(), "train_time_s": round(r.train_time_s, 2),
                 "weights_cached": r.cached, "weights_key": r.key} for s, r in zip(seeds, results)]
    return {"converged": all(p["converged"] for p in per_seed), "converged_seeds": [p["converged"] for p in per_seed],
            "convergence_rule": CONVERGENCE_RULE, "training": per_seed}


def baseline_metrics(spec: CellSpec, pairs: list[FramePair]) -> dict[str, Any]:
    """Test l2 (over the cell's seeds) of the no-attention and zero-motion networks, with the same
    convergence evidence as the cell's own networks (``<baseline>_training``, ``_converged_seeds``)."""
    setup = ColorizationSetup.from_spec(spec)
    out: dict[str, Any] = {}
    seeds = setup.seed_list()
    for layer in BASELINES:
        results = [train_network(spec, seed, layer) for seed in seeds]
        prefix = layer.replace("-", "_")
        out.update(spread([test_l2(r.model, pairs, spec)[0] for r in results], prefix + "_l2"))
        evidence = training_evidence(results, seeds)
        out.update({f"{prefix}_converged": evidence["converged"], f"{prefix}_converged_seeds": evidence["converged_seeds"],
                    f"{prefix}_training": evidence["training"]})
    return out


def grey_baseline_l2(pairs: list[FramePair]) -> float:
    """The l2 of answering with the grey frame itself: the error a useless attention leaves."""
    errors = []
    for pair in pairs:
        a = torch.from_numpy(pair.a.transpose(2, 0, 1).copy())[None]
        errors.append(l2(grey3(a)[0].permute(1, 2, 0).numpy(), pair.a))
    return float(np.mean(errors))
