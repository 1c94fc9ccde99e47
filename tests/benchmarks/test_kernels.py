"""pytest-benchmark micro-benchmarks of the PSAL kernels and two baselines (skipped by default).

Run with ``pytest tests/benchmarks --benchmark-only``; see README.md here for saving and comparing.
"""
from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.errors import Unavailable, UserError

SIZE, CHANNELS, PATCH = 32, 16, 7


def _layer(name: str) -> torch.nn.Module:
    try:
        layer = attnbench.mechanism(name, patch_size=PATCH)
    except (Unavailable, UserError) as exc:
        pytest.skip(f"{name} unavailable: {exc}")
    return layer.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, CHANNELS, SIZE, SIZE, generator=g)
    k = torch.randn(1, CHANNELS, SIZE, SIZE, generator=g)
    v = torch.randn(1, 3, SIZE, SIZE, generator=g)
    return q, k, v


@pytest.mark.parametrize("name", ["psal-1", "psal-3", "psal-aggreg", "flash", "local"])
def test_forward(benchmark, name: str) -> None:
    layer = _layer(name)
    q, k, v = _inputs()
    torch.manual_seed(0)
    with torch.no_grad():
        out = benchmark(layer, q, k, v)
    assert out.shape == (1, 3, SIZE, SIZE)


@pytest.mark.parametrize("name", ["psal-3", "flash"])
def test_forward_backward(benchmark, name: str) -> None:
    layer = _layer(name)
    q, k, v = (t.requires_grad_() for t in _inputs())

    def step() -> torch.Tensor:
        out = layer(q, k, v)
        out.sum().backward()
        return out

    torch.manual_seed(0)
    out = benchmark(step)
    assert v.grad is not None and out.shape == (1, 3, SIZE, SIZE)
