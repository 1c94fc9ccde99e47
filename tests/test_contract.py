"""The mechanism contract, checked for every registered mechanism variant (built-in or third-party).

The checks live in :mod:`attnbench.testing`, so a third-party plugin's own test suite runs exactly
these (see examples/attnbench-example-plugin/tests). Parametrised from the entry points, so a new
plugin is covered the moment it is registered; unavailable plugins are skipped with their reason.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from attnbench.interface import AttentionMechanism, CostEstimate, ProblemShape
from attnbench.registry import plugins
from attnbench.testing import CHECKS, ContractCase, ContractError, check_mechanism, contract_cases

torch.set_num_threads(1)

VARIANTS = sorted({v for info in plugins().values() for v in info.variants})
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "attnbench-example-plugin"


@pytest.mark.parametrize("case", [c for name in VARIANTS for c in contract_cases(name)], ids=str)
def test_contract(case: ContractCase) -> None:
    case()


# ----------------------------------------------------------------------------- the checks can fail, clearly
class _Uniform(AttentionMechanism):
    """A correct little mechanism that the broken ones below each spoil in one way."""

    summary = "uniform weights (test double)"
    complexity = "O(n)"
    differentiable_wrt = ("v",)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mean = v.mean(dim=(2, 3), keepdim=True)
        return mean.expand(-1, -1, q.shape[2], q.shape[3]).contiguous()

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        n = shape.batch * shape.value_channels * (shape.n_queries + shape.n_keys)
        return CostEstimate(memory_bytes=n * shape.dtype_bytes, flops=n * (2 if shape.backward else 1))


class _ZeroFlops(_Uniform):
    def estimate(self, shape: ProblemShape) -> CostEstimate:
        return CostEstimate(memory_bytes=super().estimate(shape).memory_bytes, flops=0)


class _WrongShape(_Uniform):
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Any = None) -> torch.Tensor:
        return super().attend(q, k, v)[:, :, :1]


class _NaN(_Uniform):
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Any = None) -> torch.Tensor:
        return super().attend(q, k, v) * float("nan")


class _NoSummary(_Uniform):
    summary = ""


class _ReturnsV(_Uniform):
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Any = None) -> torch.Tensor:
        return v.view(v.shape) if v.shape[2:] == q.shape[2:] else super().attend(q, k, v)


class _ScalesQ(_Uniform):
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Any = None) -> torch.Tensor:
        q.mul_(2.0)
        return super().attend(q, k, v)


def test_a_correct_class_passes_every_check() -> None:
    assert set(check_mechanism(_Uniform).values()) == {"ok"}


@pytest.mark.parametrize("cls, check, words", [
    (_ZeroFlops, "estimate", ["flops = 0", "floating-point operations"]),
    (_WrongShape, "output_shape_and_finite", ["output shape (1, 3, 1, 12)", "expected (B, Cv, Hq, Wq) = (1, 3, 12, 12)"]),
    (_NaN, "output_shape_and_finite", ["NaN"]),
    (_NoSummary, "declarations", ["summary is empty"]),
    (_ReturnsV, "output_is_new", ["shares memory with input v"]),
    (_ScalesQ, "inputs_unchanged", ["input q was modified in place"]),
])
def test_a_broken_class_fails_with_a_clear_message(cls: type, check: str, words: list[str]) -> None:
    with pytest.raises(ContractError) as caught:
        check_mechanism(cls)
    text = str(caught.value)
    assert f"{check}: " in text
    for word in words:
        assert word in text, text


def test_the_example_plugin_meets_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from attnbench_example import MeanAttention

    assert set(check_mechanism(MeanAttention).values()) == {"ok"}


def test_the_example_plugins_own_tests_run_the_contract(tmp_path: Path) -> None:
    """The example plugin's test suite imports attnbench.testing, as a third party's would."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(EXAMPLE),
                           str(EXAMPLE / "tests")], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PYTHONPATH": str(EXAMPLE), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(CHECKS)} passed" in done.stdout, done.stdout
