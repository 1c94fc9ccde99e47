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
  forward only, as the paper's "test GFLOPs / test memory".

Used by the ``colorization`` suite and, with a swapped attention, by ``substitution``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..cells import CellSpec
from ..interface import AttentionMechanism, dtype_from_name
from ..measure.call import AttentionCall, CallBudget
from ..options import ImageOptions, MeasureOptions
from .costs import build, measure_attention
from .data import FramePair, data_identity, square_pair, task_pairs
from .metrics import l2
from .networks import ColorizationNet, grey3
from .training import TrainResult, train_cached


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

    def images_needed(self) -> int:
        return self.train_pairs + self.test_pairs


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

    @classmethod
    def from_spec(cls, spec: CellSpec) -> "ColorizationSetup":
        o = spec.options
        return cls(size=spec.size, crop=min(int(o.get("crop", spec.size)), spec.size), steps=int(o.get("steps", 300)),
                   lr=float(o.get("lr", 1e-3)), train_pairs=int(o.get("train_pairs", 8)),
                   test_pairs=int(o.get("test_pairs", 3)), features=int(o.get("features", 16)),
                   batch=spec.batch, seed=spec.seed)


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


def training_config(spec: CellSpec, setup: ColorizationSetup) -> dict[str, Any]:
    """Everything that changes the trained weights (the cache key); no suite or preset name."""
    # the resolved parameters, defaults included, so a changed default retrains (backend excluded:
    # native and reference kernels compute the same layer)
    resolved = build(spec.mechanism, spec.patch_size, dict(spec.params), "cpu").params()
    resolved.pop("backend", None)
    return {"task": "colorization", "mechanism": spec.mechanism, "params": dict(sorted(spec.params.items())),
            "resolved": dict(sorted(resolved.items())),
            "patch_size": spec.patch_size, "size": setup.size, "crop": setup.crop, "features": setup.features,
            "train_pairs": setup.train_pairs, "batch": setup.batch, "device": spec.device, "dtype": spec.dtype,
            "data": data_identity(spec.options)}


def train_network(spec: CellSpec) -> TrainResult:
    """The colorization network of ``spec.mechanism``, from the cache or trained now."""
    setup = ColorizationSetup.from_spec(spec)
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    pairs = [square_pair(p, setup.size) for p in task_pairs(spec.options, setup.train_pairs, spec.seed, "train")]
    sampler = CropSampler(pairs, setup.crop, setup.batch, spec.seed, device, dtype)

    def make() -> ColorizationNet:
        attention = build(spec.mechanism, spec.patch_size, dict(spec.params), spec.device)
        return ColorizationNet(attention, setup.features).to(device, dtype)

    def loss_at(net: torch.nn.Module, step: int) -> torch.Tensor:
        a, b = sampler(step)
        return torch.mean((net(grey3(a), b) - a) ** 2)

    return train_cached(training_config(spec, setup), make, loss_at, setup.steps, setup.lr, spec.seed,
                        description=f"colorization {spec.mechanism}")


def test_pairs(spec: CellSpec) -> list[FramePair]:
    setup = ColorizationSetup.from_spec(spec)
    return [square_pair(p, setup.size) for p in task_pairs(spec.options, setup.test_pairs, spec.seed, "test")]


def evaluate(net: ColorizationNet, pairs: list[FramePair], spec: CellSpec, prefix: str = "") -> dict[str, Any]:
    """Test l2 over ``pairs`` and the attention layer's cost on the first one (forward only)."""
    device, dtype = torch.device(spec.device), dtype_from_name(spec.dtype)
    attention: AttentionMechanism = net.attention
    a0 = frames_tensor(pairs[:1], "a").to(device, dtype)
    b0 = frames_tensor(pairs[:1], "b").to(device, dtype)
    with torch.no_grad():
        q, kv = net.attention_inputs(grey3(a0), b0)
    budget = CallBudget.for_cell(spec, MeasureOptions.subset_of(spec), {"memory", "flops"})
    _, metrics = measure_attention(AttentionCall(attention, q, kv, kv), budget, prefix)
    errors = []
    net.eval()
    for pair in pairs:
        a = frames_tensor([pair], "a").to(device, dtype)
        b = frames_tensor([pair], "b").to(device, dtype)
        torch.manual_seed(spec.seed)  # stochastic layers (PSAL, LSH) give the same test figure every run
        with torch.no_grad():
            out = net(grey3(a), b).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        errors.append(l2(out, pair.a))
    metrics[f"{prefix}l2"] = float(np.mean(errors))
    metrics[f"{prefix}l2_per_pair"] = [round(e, 6) for e in errors]
    return metrics


def grey_baseline_l2(pairs: list[FramePair]) -> float:
    """The l2 of answering with the grey frame itself: the error a useless attention leaves."""
    errors = []
    for pair in pairs:
        a = torch.from_numpy(pair.a.transpose(2, 0, 1).copy())[None]
        errors.append(l2(grey3(a)[0].permute(1, 2, 0).numpy(), pair.a))
    return float(np.mean(errors))
