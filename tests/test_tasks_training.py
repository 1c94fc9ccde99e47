"""Colorization network shapes, training, the weight cache and resume after an interruption."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import attnbench
from attnbench.errors import Unavailable, UserError
from attnbench.tasks.networks import ColorizationNet, grey3
from attnbench.tasks.training import config_key, train_cached


def needs(name: str, **params):  # type: ignore[no-untyped-def]
    """Build a mechanism through the registry, or skip when its plugin is not there (yet)."""
    try:
        return attnbench.mechanism(name, **params)
    except (UserError, Unavailable) as exc:
        pytest.skip(f"{name}: {exc}")


def tiny_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A colour frame and the same frame shifted by 3 pixels: colour must be copied across."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=gen), size=(16, 16), mode="bilinear")
    return base, torch.roll(base, shifts=3, dims=3)


def test_network_shapes_with_batch_and_cross_attention() -> None:
    net = ColorizationNet(needs("full", patch_size=3), features=8)
    grey, ref = grey3(torch.rand(2, 3, 12, 14)), torch.rand(2, 3, 16, 16)
    assert grey.shape == (2, 3, 12, 14) and torch.equal(grey[:, 0], grey[:, 2])
    out = net(grey, ref)
    assert out.shape == (2, 3, 12, 14)
    q, kv = net.attention_inputs(grey, ref)
    assert q.shape == (2, 8, 12, 14) and kv.shape == (2, 8, 16, 16)
    assert set(net.convolution_state()) == {"embed.weight", "embed.bias", "project.weight", "project.bias"}


def test_a_layer_without_q_k_gradients_trains_only_through_values() -> None:
    layer = needs("psal-1", patch_size=3)
    if set(layer.differentiable_wrt) >= {"q", "k"}:
        pytest.skip("psal-1 is differentiable with respect to q and k here")
    net = ColorizationNet(layer, features=4)
    a, b = tiny_problem()
    torch.mean((net(grey3(a), b) - a) ** 2).backward()  # would raise if q were passed with grad
    assert net.project.weight.grad is not None


def _train(tmp_path: Path, steps: int, calls: list[int], fail_at: int | None = None):  # type: ignore[no-untyped-def]
    a, b = tiny_problem()

    def build() -> ColorizationNet:
        return ColorizationNet(needs("full", patch_size=3), features=4)

    def loss_at(net: torch.nn.Module, step: int) -> torch.Tensor:
        if fail_at is not None and step == fail_at:
            raise KeyboardInterrupt("interrupted on purpose")
        calls.append(step)
        return torch.mean((net(grey3(a), b) - a) ** 2)

    return train_cached({"task": "test"}, build, loss_at, steps, lr=1e-2, seed=0, directory=tmp_path,
                        checkpoint_every_s=0.0)


def test_training_reduces_the_loss_and_a_second_run_hits_the_cache(tmp_path: Path) -> None:
    calls: list[int] = []
    first = _train(tmp_path, 40, calls)
    summary = first.loss_summary()
    assert not first.cached and calls == list(range(40))
    assert summary["train_loss_last"] < 0.7 * summary["train_loss_first"]
    calls.clear()
    again = _train(tmp_path, 40, calls)
    assert again.cached and calls == [] and again.key == first.key
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name])


def test_the_cache_key_depends_on_every_setting() -> None:
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    reference = _train(tmp_path / "straight", 12, [])
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", 12, calls, fail_at=7)
    assert list((tmp_path / "cut").glob("*.partial.pt")), "a checkpoint is left behind"
    calls.clear()
    resumed = _train(tmp_path / "cut", 12, calls)
    assert resumed.resumed_from == 7 and calls == list(range(7, 12))
    assert not list((tmp_path / "cut").glob("*.partial.pt"))
    for name, value in reference.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-6)


def test_a_damaged_checkpoint_restarts_cleanly(tmp_path: Path) -> None:
    calls: list[int] = []
    key = _train(tmp_path, 3, calls).key
    (tmp_path / f"{key}.pt").unlink()
    (tmp_path / f"{key}.partial.pt").write_bytes(b"garbage")
    calls.clear()
    result = _train(tmp_path, 3, calls)
    assert result.resumed_from == 0 and calls == [0, 1, 2]


def test_learning_rate_schedules() -> None:
    from attnbench.tasks.training import lr_factor

    assert [lr_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert lr_factor("cosine", 0, 10) == pytest.approx(1.0) and lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert [lr_factor("cosine", s, 10, warmup=4) for s in range(3)] == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("step", 0, 10)


def test_sampled_curve_bins_the_losses() -> None:
    from attnbench.tasks.training import sampled_curve

    curve = sampled_curve([float(i) for i in range(100)], points=4)
    assert [s for s, _ in curve] == [25, 50, 75, 100]
    assert [v for _, v in curve] == pytest.approx([12.0, 37.0, 62.0, 87.0])
    assert sampled_curve([1.0, 2.0], points=20) == [[1, 1.0], [2, 2.0]]


def _probes(values: list[float]) -> list[list[float]]:
    """``[step, value]`` at 0, 10, ..., 100 % of a 100-step run."""
    return [[10 * i, v] for i, v in enumerate(values)]


def test_convergence_rule_reads_the_late_trend() -> None:
    from attnbench.tasks.training import convergence, late_trend

    descent = [1.0, 0.5, 0.3, 0.2, 0.15, 0.12]
    flat = convergence(_probes(descent + [0.100] * 5), 100)
    assert flat["converged"] and flat["late_share"] == pytest.approx(0.0, abs=1e-9)
    # still falling by 0.01 per 10 steps over the late window: 0.02 over the last fifth
    falling = convergence(_probes(descent + [0.14, 0.13, 0.12, 0.11, 0.10]), 100)
    assert late_trend(_probes(descent + [0.14, 0.13, 0.12, 0.11, 0.10]), 100) == pytest.approx((-0.02, 0.10))
    assert not falling["converged"] and falling["late_share"] == pytest.approx(0.02 / 0.9, abs=1e-5)
    # a plateau with +-5 % probe noise (a stochastic search) is flat: two probes alone would read
    # 0.105 -> 0.095 as a 10 % fall, 1.1 % of the whole fall, and a test l2 that moved 10 %
    noisy = [0.095, 0.105, 0.095, 0.105, 0.095]
    plateau = convergence(_probes(descent + noisy), 100, test=_probes([2.0] * 6 + [2 * v for v in noisy]))
    assert plateau["converged"] and abs(plateau["late_share"]) < 0.005 and plateau["test_drift"] < 0.02
    # one outlying probe at the start of the window (a test l2 that jumps once and comes back)
    # does not tilt the median slope
    jumpy = [1.2, 1.0, 1.01, 1.02, 1.0]
    spike = convergence(_probes(descent + [0.100] * 5), 100, test=_probes([2.0] * 6 + jumpy))
    least_squares = np.polyfit([60, 70, 80, 90, 100], jumpy, 1)[0] * 20 / 1.0
    assert spike["converged"] and spike["test_drift"] < 0.05 < abs(least_squares)
    # a network that over-fits: the fit loss flat, the test l2 rising 4 % per probe
    rising = [1.0, 1.04, 1.08, 1.12, 1.16]
    overfit = convergence(_probes(descent + [0.100] * 5), 100, test=_probes([2.0] * 6 + rising))
    assert not overfit["converged"] and overfit["test_drift"] == pytest.approx(0.08 / 1.16, abs=1e-4)
    settled = convergence(_probes(descent + [0.100] * 5), 100, test=_probes([2.0] * 6 + [1.0] * 5))
    assert settled["converged"] and settled["test_drift"] == pytest.approx(0.0, abs=1e-9)
    # no verdict without the untrained network's probe, or with fewer than 3 late probes
    assert not convergence(_probes(descent + [0.100] * 5)[1:], 100)["converged"]
    assert not convergence([[0, 1.0], [80, 0.1], [100, 0.1]], 100)["converged"]


def test_probes_run_at_checkpoints_and_survive_cache_and_resume(tmp_path: Path) -> None:
    from attnbench.tasks.training import checkpoint_steps

    a, b = tiny_problem()

    def build() -> ColorizationNet:
        return ColorizationNet(needs("full", patch_size=3), features=4)

    def loss_at(net: torch.nn.Module, step: int) -> torch.Tensor:
        if step == stop_at[0]:
            raise KeyboardInterrupt("interrupted on purpose")
        return torch.mean((net(grey3(a), b) - a) ** 2)

    def fit(net: torch.nn.Module) -> float:
        return float(torch.mean((net(grey3(a), b) - a) ** 2))

    def train(directory: Path):  # type: ignore[no-untyped-def]
        return train_cached({"task": "probe"}, build, loss_at, 20, lr=1e-2, directory=directory, checkpoint_every_s=0.0,
                            schedule="cosine", warmup=2, probes={"fit": fit})

    stop_at = [-1]
    straight = train(tmp_path / "straight")
    assert [s for s, _ in straight.probes["fit"]] == checkpoint_steps(20) == list(range(0, 21, 2))
    assert straight.probes["fit"][-1][1] < straight.probes["fit"][0][1]
    evidence = straight.evidence()
    assert set(evidence) >= {"train_loss_curve", "fit_curve", "converged", "late_improvement"}
    assert train(tmp_path / "straight").cached and train(tmp_path / "straight").probes == straight.probes
    stop_at[0] = 11
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut")
    stop_at[0] = -1
    resumed = train(tmp_path / "cut")
    assert resumed.resumed_from == 11
    assert [s for s, _ in resumed.probes["fit"]] == checkpoint_steps(20)
    assert [v for _, v in resumed.probes["fit"]] == pytest.approx([v for _, v in straight.probes["fit"]], rel=1e-4)


def test_training_flushes_subnormals_and_restores_the_default_after() -> None:
    from attnbench.tasks.training import denormals_flushed

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 subnormal
    assert float(tiny * 1.0) != 0.0
    with denormals_flushed() as supported:
        if not supported:
            pytest.skip("this CPU cannot flush subnormals")
        assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) != 0.0  # timing suites after a training cell see the default again


def test_an_unwritable_cache_is_named_by_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.tasks.training import check_cache_writable

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("ATTNBENCH_CACHE", str(not_a_folder / "cache"))
    with pytest.raises(UserError, match=rf"ATTNBENCH_CACHE={not_a_folder / 'cache'} cannot be written: Not a directory"):
        check_cache_writable()
    monkeypatch.setenv("ATTNBENCH_CACHE", str(tmp_path / "ok"))
    check_cache_writable()
    assert (tmp_path / "ok").is_dir() and not list((tmp_path / "ok").iterdir())  # the probe leaves nothing
