"""SDPA's backends as named mechanisms (plugins/flash.py): each forced, none standing in for another.

``sdpa-flash``, ``sdpa-efficient``, ``sdpa-cudnn`` and ``sdpa-math`` run exactly the SDPA backend
they name; a backend that cannot take a cell (one that does not exist on the device, inputs it
refuses) makes the cell ``unsupported`` with the reason instead of running another kernel.
"""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attnbench.errors import Unsupported, UserError
from attnbench.registry import mechanism
from attnbench.suites import load
from attnbench.testing import ContractCase, ContractSkip, inputs
from attnbench.worker import execute
from attnbench_plugins.flash import SDPA_BACKENDS, forced_sdpa

torch.set_num_threads(1)

#: the ATen op each CPU backend runs (what a profiler trace of the call must show)
CPU_OPS = {"flash": "aten::_scaled_dot_product_flash_attention_for_cpu", "math": "aten::_scaled_dot_product_attention_math"}


def test_each_backend_is_a_named_variant() -> None:
    for backend in SDPA_BACKENDS:
        m = mechanism(f"sdpa-{backend}", patch_size=3)
        assert m.params()["backend"] == backend == m.backend
    assert mechanism("sdpa", patch_size=3).backend == "math"
    with pytest.raises(UserError, match="backend must be one of"):
        mechanism("sdpa[backend=nope]", patch_size=3)


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_cuda_only_backends_are_unsupported_on_cpu(backend: str) -> None:
    m = mechanism(f"sdpa-{backend}", patch_size=3)
    with pytest.raises(Unsupported, match=f"sdpa-{backend}: SDPA's {backend} backend exists on cuda only, not cpu"):
        m(*inputs())


@pytest.mark.parametrize("backend", ["flash", "math"])
def test_forced_cpu_backends_are_exact_and_run_the_kernel_named(backend: str) -> None:
    q, k, v = inputs(b=2, c=3, cv=2, hq=9, wq=10, hk=11, wk=8)
    m = mechanism(f"sdpa-{backend}", patch_size=3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = m(q, k, v)
    ops = {e.key for e in prof.key_averages()}
    assert CPU_OPS[backend] in ops, sorted(o for o in ops if "scaled_dot" in o)
    others = {op for name, op in CPU_OPS.items() if name != backend}
    assert not ops & others, ops & others
    torch.testing.assert_close(out, mechanism("full", patch_size=3)(q, k, v), rtol=1e-4, atol=1e-5)


def test_a_refused_input_is_unsupported_never_a_fallback() -> None:
    """The CPU flash kernel needs equal q/v head widths: forced, SDPA's reason, not the math kernel."""
    q = torch.randn(1, 1, 10, 16)
    v = torch.randn(1, 1, 10, 8)
    with pytest.raises(Unsupported, match="same last dimension"):
        forced_sdpa(q, q, v, None, 0.25, "flash", "sdpa-flash")
    assert forced_sdpa(q, q, v, None, 0.25, "math", "sdpa-math").shape == (1, 1, 10, 8)


def test_an_unsupported_backend_cell_is_a_final_unsupported_record() -> None:
    spec = load("speed").cells("ci", mechanisms=["sdpa-efficient"], sizes=[16])[0]
    record = execute(spec)
    assert record["status"] == "unsupported", record
    assert "efficient backend exists on cuda only" in record["reason"]
    assert record["metrics"]["estimated_flops"] > 0  # the estimates are kept


def test_contract_checks_skip_where_the_backend_does_not_exist() -> None:
    with pytest.raises(ContractSkip, match="unsupported here"):
        ContractCase("sdpa-cudnn", "output_shape_and_finite").run()
    ContractCase("sdpa-math", "output_shape_and_finite").run()  # runs, and passes
