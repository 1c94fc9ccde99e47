"""The mechanism contract, checked for every registered mechanism variant (built-in or third-party).

Parametrised from the entry points, so a new plugin (PSAL, an installed example) is covered the
moment it is registered; unavailable plugins are skipped with their reason.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from attnbench.errors import UnsupportedRequest
from attnbench.interface import SIMILARITIES, AttentionMechanism, ProblemShape
from attnbench.registry import mechanism, plugins

torch.set_num_threads(1)

VARIANTS = sorted({v for info in plugins().values() for v in info.variants})
P = 3


def build(name: str, **params: Any) -> AttentionMechanism:
    info = next(i for i in plugins().values() if name in i.variants)
    if not info.availability.ok:
        pytest.skip(f"{name}: {info.availability}")
    try:
        return mechanism(name, patch_size=P, **params)
    except UnsupportedRequest as exc:
        pytest.skip(f"{name} rejects {params}: {exc}")


def inputs(b: int = 1, c: int = 3, cv: int = 2, hq: int = 12, wq: int = 12, hk: int = 12, wk: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, hq, wq, generator=g),
        torch.randn(b, c, hk, wk, generator=g),
        torch.randn(b, cv, hk, wk, generator=g),
    )


def deterministic(m: AttentionMechanism, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Same input, same output (seeded mechanisms qualify)."""
    return torch.equal(m(q, k, v), m(q, k, v))


def stochastic(m: AttentionMechanism) -> bool:
    """A mechanism with a ``seed`` draws random numbers, possibly per batch element."""
    return "seed" in m.params()


@pytest.mark.parametrize("name", VARIANTS)
def test_declares_what_it_supports(name: str) -> None:
    m = build(name)
    cls = type(m)
    assert cls.summary and cls.complexity
    assert set(cls.similarities) <= set(SIMILARITIES) and cls.similarities
    assert set(cls.differentiable_wrt) <= {"q", "k", "v"}
    assert m.similarity in cls.similarities
    assert isinstance(m.params(), dict) and m.params()["patch_size"] == P


@pytest.mark.parametrize("name", VARIANTS)
def test_output_shape_and_finite(name: str) -> None:
    m = build(name)
    q, k, v = inputs(c=4, cv=3)
    out = m(q, k, v)
    assert out.shape == (1, 3, 12, 12)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_cross_attention(name: str) -> None:
    m = build(name)
    q, k, v = inputs(hq=13, wq=16, hk=11, wk=9)
    out = m(q, k, v)
    assert out.shape == (1, 2, 13, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_batch_equals_separate_calls(name: str) -> None:
    m = build(name)
    q, k, v = inputs(b=2, hq=12, wq=14)
    both = m(q, k, v)
    assert both.shape == (2, 2, 12, 14)
    if stochastic(m) or not deterministic(m, q, k, v):  # random draws may depend on the batch
        assert torch.isfinite(both).all()
        return
    single = torch.cat([m(q[i : i + 1], k[i : i + 1], v[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(both, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_similarity_supported_or_refused(name: str, similarity: str) -> None:
    info = next(i for i in plugins().values() if name in i.variants)
    if not info.availability.ok:
        pytest.skip(f"{name}: {info.availability}")
    if similarity in info.cls.similarities:
        out = mechanism(name, patch_size=P, similarity=similarity)(*inputs())
        assert torch.isfinite(out).all()
    else:
        with pytest.raises(UnsupportedRequest, match=similarity):
            mechanism(name, patch_size=P, similarity=similarity)


@pytest.mark.parametrize("name", VARIANTS)
def test_clear_errors(name: str) -> None:
    info = next(i for i in plugins().values() if name in i.variants)
    if not info.availability.ok:
        pytest.skip(f"{name}: {info.availability}")
    with pytest.raises(UnsupportedRequest, match="odd"):
        mechanism(name, patch_size=4)
    m = build(name)
    q, k, v = inputs(b=2)
    with pytest.raises(UnsupportedRequest, match="4-D"):
        m(q[0], k[0], v[0])
    with pytest.raises(UnsupportedRequest, match="batch"):
        m(q, k[:1], v[:1])
    with pytest.raises(UnsupportedRequest, match="channels"):
        m(q[:, :2], k, v)
    with pytest.raises(UnsupportedRequest, match="smaller than the patch"):
        m(q, k[:, :, :2, :2], v[:, :, :2, :2])
    with pytest.raises(UnsupportedRequest):
        mechanism(name, patch_size=P, no_such_parameter=1)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_estimate_positive_and_growing(name: str, mode: str) -> None:
    m = build(name)
    shapes = [ProblemShape.square(s, channels=4, patch_size=P, mode=mode) for s in (16, 32, 64)]
    estimates = [m.estimate(s) for s in shapes]
    for e in estimates:
        assert isinstance(e.memory_bytes, int) and isinstance(e.flops, int)
        assert e.memory_bytes > 0 and e.flops > 0
    assert estimates[0].memory_bytes < estimates[1].memory_bytes < estimates[2].memory_bytes
    assert estimates[0].flops < estimates[1].flops < estimates[2].flops
    if mode == "fwd+bwd":
        fwd = m.estimate(ProblemShape.square(32, channels=4, patch_size=P, mode="fwd"))
        assert estimates[1].flops > fwd.flops


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_flow_to_declared_inputs(name: str) -> None:
    m = build(name)
    declared = m.differentiable_wrt  # may depend on the instance's parameters
    q, k, v = inputs()
    named = {"q": q, "k": k, "v": v}
    for key, t in named.items():
        t.requires_grad_(key in declared)
    if not declared:
        assert not m(q, k, v).requires_grad
        return
    m(q, k, v).square().sum().backward()
    for key, t in named.items():
        if key in declared:
            assert t.grad is not None and torch.isfinite(t.grad).all(), key
            assert t.grad.abs().sum() > 0, f"no gradient reaches {key}"
    undeclared = [key for key in named if key not in declared]
    for key in undeclared:  # asking for a gradient the mechanism does not give is an error
        q2, k2, v2 = inputs()
        dict(q=q2, k=k2, v=v2)[key].requires_grad_(True)
        with pytest.raises(UnsupportedRequest, match="differentiable"):
            m(q2, k2, v2)


def hole_mask(b: int = 1, h: int = 12, w: int = 12) -> torch.Tensor:
    mask = torch.zeros(b, 1, h, w, dtype=torch.bool)
    mask[:, :, 3:7, 4:9] = True
    return mask


@pytest.mark.parametrize("name", VARIANTS)
def test_key_mask(name: str) -> None:
    m = build(name)
    q, k, v = inputs()
    if not type(m).supports_mask:
        with pytest.raises(UnsupportedRequest, match="key_mask"):
            m(q, k, v, hole_mask())
        return
    if deterministic(m, q, k, v):
        torch.testing.assert_close(m(q, k, v, torch.zeros(1, 1, 12, 12, dtype=torch.bool)), m(q, k, v))
    # huge values inside the hole must never reach the output
    mask = hole_mask()
    poisoned = v.clone()
    poisoned[mask.expand_as(v)] = 1e6
    out = m(q, k, poisoned, mask)
    assert torch.isfinite(out).all()
    assert out.abs().max() < 1e3, "values of masked keys leaked into the output"
