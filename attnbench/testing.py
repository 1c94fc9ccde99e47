"""The mechanism contract as importable checks, for attnbench's own tests and for third-party plugins.

A plugin's test suite runs the same checks attnbench runs on its built-in mechanisms::

    import pytest
    from attnbench.testing import contract_cases
    from my_plugin import MyAttention

    @pytest.mark.parametrize("case", contract_cases(MyAttention), ids=str)
    def test_contract(case):
        case()

or, outside pytest, ``check_mechanism(MyAttention)`` (raises :class:`ContractError` listing every
failed check). A target is a class (built as ``cls(patch_size=3, **params)``) or a registered
name such as ``"psal-3"`` (built through the registry, variants included).

What the contract checks (:data:`CHECKS`): the class declares ``summary``, ``complexity``,
``similarities``, ``differentiable_wrt``, ``supports_mask``, ``devices``, ``dtypes`` sensibly and
records its parameters; the output has shape (B, Cv, Hq, Wq) and is finite, for self- and
cross-attention; a batch equals separate calls (deterministic mechanisms); unsupported
similarities, even patch sizes, malformed inputs and unknown parameters raise
``UnsupportedRequest``; ``estimate()`` returns positive integer bytes and FLOPs that grow with the
size and with the backward pass; gradients reach exactly the declared inputs; masked keys never
reach the output (or ``key_mask`` is refused when ``supports_mask`` is False); the output is a new
tensor (not an input nor a view of one) and the inputs are left unchanged (the measuring path
records either as ``error``, see :mod:`attnbench.measure.guard`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

from .errors import InvalidOutput, Unsupported, UnsupportedRequest
from .interface import MODES, SIMILARITIES, AttentionMechanism, ProblemShape
from .measure.guard import InputGuard

#: the patch size the checks use (small, so every check runs in well under a second)
P = 3

Target = Union[str, type]
Factory = Callable[..., AttentionMechanism]


class ContractError(AssertionError):
    """A mechanism breaks the plugin contract; the message says which rule and how to fix it."""


class ContractSkip(Exception):
    """A check that does not apply here (plugin unavailable, a parameter it refuses)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def _factory(target: Target) -> tuple[str, Factory]:
    """(display name, build(**params)) for a class or a registered name."""
    if isinstance(target, str):
        from .registry import mechanism, resolve

        info, _ = resolve(target)
        if not info.availability.ok or info.cls is None:
            raise ContractSkip(f"{target}: {info.availability}")
        return target, lambda **kw: mechanism(target, **{"patch_size": P, **kw})
    _require(isinstance(target, type) and issubclass(target, AttentionMechanism),
             f"{target!r} is not an AttentionMechanism subclass: subclass attnbench.AttentionMechanism")
    availability = target.availability()
    if not availability.ok:
        raise ContractSkip(f"{target.__name__}: {availability}")
    return target.__name__, lambda **kw: target(**{"patch_size": P, **kw})


def _build(make: Factory, **params: Any) -> AttentionMechanism:
    try:
        return make(**params)
    except UnsupportedRequest as exc:
        raise ContractSkip(f"rejects {params or 'its defaults'}: {exc}") from None


def inputs(b: int = 1, c: int = 3, cv: int = 2, hq: int = 12, wq: int = 12, hk: int = 12, wk: int = 12,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random q (b, c, hq, wq), k (b, c, hk, wk), v (b, cv, hk, wk)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, hq, wq, generator=g), torch.randn(b, c, hk, wk, generator=g),
            torch.randn(b, cv, hk, wk, generator=g))


def _output(m: AttentionMechanism, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = m(q, k, v, key_mask) if key_mask is not None else m(q, k, v)
    expected = (q.shape[0], v.shape[1], q.shape[2], q.shape[3])
    _require(isinstance(out, torch.Tensor), f"forward returned {type(out).__name__}, not a tensor")
    _require(tuple(out.shape) == expected,
             f"output shape {tuple(out.shape)} for q {tuple(q.shape)}, v {tuple(v.shape)}; expected (B, Cv, Hq, Wq) = {expected}")
    _require(out.dtype == q.dtype, f"output dtype {out.dtype}, inputs {q.dtype}: return the inputs' dtype")
    _require(bool(torch.isfinite(out).all()), "output has NaN or Inf values")
    return out


def _deterministic(m: AttentionMechanism, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return torch.equal(m(q, k, v), m(q, k, v))


# ----------------------------------------------------------------------------- the checks
def check_declarations(make: Factory) -> None:
    """Class attributes say what the mechanism supports; params() records the instance."""
    m = _build(make)
    cls = type(m)
    _require(bool(cls.summary), f"{cls.__name__}.summary is empty: set a one-line description (shown by `attnbench list`)")
    _require(bool(cls.complexity), f"{cls.__name__}.complexity is empty: set e.g. \"O(n^2)\" (shown in tables)")
    _require(bool(cls.similarities) and set(cls.similarities) <= set(SIMILARITIES),
             f"{cls.__name__}.similarities = {cls.similarities!r}: a non-empty subset of {SIMILARITIES}")
    _require(set(cls.differentiable_wrt) <= {"q", "k", "v"},
             f"{cls.__name__}.differentiable_wrt = {cls.differentiable_wrt!r}: a subset of ('q', 'k', 'v')")
    _require(isinstance(cls.supports_mask, bool), f"{cls.__name__}.supports_mask must be True or False")
    _require(bool(cls.devices) and all(isinstance(d, str) for d in cls.devices),
             f"{cls.__name__}.devices = {cls.devices!r}: device types such as ('cpu', 'cuda')")
    _require(bool(cls.dtypes) and all(isinstance(d, torch.dtype) for d in cls.dtypes),
             f"{cls.__name__}.dtypes = {cls.dtypes!r}: torch dtypes such as (torch.float32,)")
    _require(m.similarity in cls.similarities, f"default similarity {m.similarity!r} not in {cls.similarities!r}")
    params = m.params()
    _require(isinstance(params, dict) and params.get("patch_size") == P,
             f"params() = {params!r}: a dict including patch_size (extend super().params())")


def check_output_shape_and_finite(make: Factory) -> None:
    """Self-attention: (B, Cv, Hq, Wq), finite, the inputs' dtype."""
    _output(_build(make), *inputs(c=4, cv=3))


def check_cross_attention(make: Factory) -> None:
    """Queries and keys of different sizes (neither square)."""
    _output(_build(make), *inputs(hq=13, wq=16, hk=11, wk=9))


def check_batch_equals_separate_calls(make: Factory) -> None:
    """A batch of two gives each element's own result (when the mechanism is deterministic)."""
    m = _build(make)
    q, k, v = inputs(b=2, hq=12, wq=14)
    both = _output(m, q, k, v)
    if "seed" in m.params() or not _deterministic(m, q, k, v):
        return  # random draws may depend on the batch
    single = torch.cat([m(q[i:i + 1], k[i:i + 1], v[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(both, single, rtol=1e-4, atol=1e-5,
                               msg=lambda text: f"batch of 2 differs from two separate calls: {text}")


def check_similarities(make: Factory) -> None:
    """Each declared similarity works; every other one raises UnsupportedRequest naming it."""
    cls = type(_build(make))
    for similarity in SIMILARITIES:
        if similarity in cls.similarities:
            _output(make(similarity=similarity), *inputs())
            continue
        try:
            make(similarity=similarity)
        except UnsupportedRequest as exc:
            _require(similarity in str(exc), f"refusing similarity {similarity!r}: the message should name it, got {exc}")
        else:
            raise ContractError(f"similarity {similarity!r} is not declared in similarities but was accepted: "
                                "raise UnsupportedRequest (super().__init__ does)")


def _raises(what: str, match: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except UnsupportedRequest as exc:
        _require(match.lower() in str(exc).lower(), f"{what}: UnsupportedRequest should mention {match!r}, got {exc}")
        return
    except Exception as exc:  # noqa: BLE001
        raise ContractError(f"{what}: raised {type(exc).__name__}: {exc}; expected UnsupportedRequest "
                            "(forward() calls check_inputs, which raises it)") from None
    raise ContractError(f"{what}: accepted; expected UnsupportedRequest")


def check_clear_errors(make: Factory) -> None:
    """Bad requests raise UnsupportedRequest with a message saying what is wrong."""
    _raises("patch_size=4", "odd", lambda: make(patch_size=4))
    _raises("an unknown parameter", "", lambda: make(no_such_parameter=1))
    m = _build(make)
    q, k, v = inputs(b=2)
    _raises("3-D inputs", "4-D", lambda: m(q[0], k[0], v[0]))
    _raises("different batch sizes", "batch", lambda: m(q, k[:1], v[:1]))
    _raises("q and k with different channels", "channels", lambda: m(q[:, :2], k, v))
    _raises("keys smaller than a patch", "smaller than the patch", lambda: m(q, k[:, :, :2, :2], v[:, :, :2, :2]))


def check_estimate(make: Factory) -> None:
    """estimate(): positive integer bytes and FLOPs, growing with the size, more FLOPs with backward."""
    m = _build(make)
    name = type(m).__name__
    for mode in MODES:
        sizes = (16, 32, 64)
        estimates = [m.estimate(ProblemShape.square(s, channels=4, patch_size=P, mode=mode)) for s in sizes]
        for size, e in zip(sizes, estimates):
            where = f"{name}.estimate() at {size}x{size} px, C=4, p={P}, {mode}"
            _require(isinstance(e.memory_bytes, int) and isinstance(e.flops, int),
                     f"{where}: memory_bytes and flops must be int, got {type(e.memory_bytes).__name__}, "
                     f"{type(e.flops).__name__} (wrap them in int())")
            _require(e.memory_bytes > 0, f"{where}: memory_bytes = {e.memory_bytes}; return the peak bytes the call "
                                         "allocates beyond its inputs (> 0: at least the output)")
            _require(e.flops > 0, f"{where}: flops = {e.flops}; return the floating-point operations of one call "
                                  "(> 0: the harness predicts times and skips cells from it)")
        for what in ("memory_bytes", "flops"):
            values = [getattr(e, what) for e in estimates]
            _require(values[0] < values[1] < values[2],
                     f"{name}.estimate().{what} at 16, 32, 64 px ({mode}) = {values}: should grow with the size")
    fwd = m.estimate(ProblemShape.square(32, channels=4, patch_size=P, mode="fwd"))
    both = m.estimate(ProblemShape.square(32, channels=4, patch_size=P, mode="fwd+bwd"))
    _require(both.flops > fwd.flops, f"{name}.estimate(): fwd+bwd FLOPs {both.flops} <= fwd {fwd.flops}; "
                                     "count the backward pass when shape.backward")


def check_gradients(make: Factory) -> None:
    """Gradients reach every input in differentiable_wrt, and asking for another one is refused."""
    m = _build(make)
    declared = m.differentiable_wrt  # may depend on the instance's parameters
    q, k, v = inputs()
    named = {"q": q, "k": k, "v": v}
    for key, t in named.items():
        t.requires_grad_(key in declared)
    if not declared:
        _require(not m(q, k, v).requires_grad, "differentiable_wrt is empty but the output requires grad")
        return
    m(q, k, v).square().sum().backward()
    for key in declared:
        grad = named[key].grad
        _require(grad is not None and bool(torch.isfinite(grad).all()), f"no finite gradient reaches {key}, "
                 f"which differentiable_wrt = {declared!r} declares")
        _require(float(grad.abs().sum()) > 0, f"the gradient reaching {key} is all zeros")
    for key in (k_ for k_ in named if k_ not in declared):
        fresh = dict(zip("qkv", inputs()))
        fresh[key].requires_grad_(True)
        _raises(f"a gradient w.r.t. undeclared {key}", "differentiable", lambda f=fresh: m(f["q"], f["k"], f["v"]))


def check_key_mask(make: Factory) -> None:
    """Masked keys never reach the output; or key_mask is refused when supports_mask is False."""
    m = _build(make)
    q, k, v = inputs()
    mask = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    mask[:, :, 3:7, 4:9] = True
    if not type(m).supports_mask:
        _raises("key_mask with supports_mask = False", "key_mask", lambda: m(q, k, v, mask))
        return
    if _deterministic(m, q, k, v):
        torch.testing.assert_close(m(q, k, v, torch.zeros_like(mask)), m(q, k, v),
                                   msg=lambda text: f"an all-False key_mask changes the output: {text}")
    poisoned = v.clone()
    poisoned[mask.expand_as(v)] = 1e6
    out = _output(m, q, k, poisoned, mask)
    _require(float(out.abs().max()) < 1e3, "values of masked keys leaked into the output (keys whose patch "
                                           "touches the mask must get no weight; see attnbench.patches)")


def _guarded(what: Callable[[], Any]) -> Any:
    try:
        return what()
    except InvalidOutput as exc:
        raise ContractError(str(exc)) from None


def check_output_is_new(make: Factory) -> None:
    """The output is a new tensor, never an input or a view of one (that would cost nothing and score
    perfectly), for self- and cross-attention."""
    m = _build(make)
    q, k, v = inputs(c=3, cv=3)  # Cv = C: returning q (or k, v at the same size) has the right shape
    for args in ((q, k, v), (q, q, q)):
        guard = InputGuard(dict(zip("qkv", args)))
        _guarded(lambda a=args, g=guard: g.check_output(_output(m, *a)))


def check_inputs_unchanged(make: Factory) -> None:
    """q, k, v (and key_mask) are left as they were: every repeat of a timed call sees the same inputs."""
    m = _build(make)
    q, k, v = inputs()
    named = {"q": q, "k": k, "v": v}
    guard = InputGuard(named)
    with torch.no_grad():
        _output(m, q, k, v)
        _output(m, q, k, v)
    _guarded(lambda: guard.check("two calls without a graph"))
    _output(m, q, k, v)
    _guarded(lambda: guard.check("a call building a graph"))
    if type(m).supports_mask:
        mask = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
        mask[:, :, 2:6, 3:8] = True
        guard = InputGuard({**named, "key_mask": mask})
        with torch.no_grad():
            _output(m, q, k, v, mask)
        _guarded(lambda: guard.check("a call with a key_mask"))


#: every check, by the name it is reported under
CHECKS: dict[str, Callable[[Factory], None]] = {
    "declarations": check_declarations,
    "output_shape_and_finite": check_output_shape_and_finite,
    "cross_attention": check_cross_attention,
    "batch_equals_separate_calls": check_batch_equals_separate_calls,
    "similarities": check_similarities,
    "clear_errors": check_clear_errors,
    "estimate": check_estimate,
    "gradients": check_gradients,
    "key_mask": check_key_mask,
    "output_is_new": check_output_is_new,
    "inputs_unchanged": check_inputs_unchanged,
}


@dataclass(frozen=True)
class ContractCase:
    """One check on one mechanism; call it (under pytest, a skip becomes ``pytest.skip``)."""

    target: Target
    check: str

    def __str__(self) -> str:
        name = self.target if isinstance(self.target, str) else self.target.__name__
        return f"{name}-{self.check}"

    def run(self) -> None:
        """Run the check; raises ContractError on a violation, ContractSkip when it does not apply."""
        torch.manual_seed(0)
        _, make = _factory(self.target)
        try:
            CHECKS[self.check](make)
        except Unsupported as exc:  # a backend that does not exist here: the check does not apply
            raise ContractSkip(f"unsupported here: {exc}") from None

    def __call__(self) -> None:
        try:
            self.run()
        except ContractSkip as exc:
            import pytest

            pytest.skip(str(exc))


def contract_cases(target: Target, checks: Optional[list[str]] = None) -> list[ContractCase]:
    """The contract as a list of cases (for ``pytest.mark.parametrize(..., ids=str)``)."""
    unknown = set(checks or ()) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; valid: {', '.join(CHECKS)}")
    return [ContractCase(target, name) for name in (checks or list(CHECKS))]


def check_mechanism(target: Target, checks: Optional[list[str]] = None) -> dict[str, str]:
    """Run every check; return ``{check: "ok" | "skipped: why"}`` or raise ContractError listing the failures."""
    results: dict[str, str] = {}
    failures: list[str] = []
    for case in contract_cases(target, checks):
        try:
            case.run()
        except ContractSkip as exc:
            results[case.check] = f"skipped: {exc}"
        except AssertionError as exc:
            results[case.check] = f"failed: {exc}"
            failures.append(f"{case.check}: {exc}")
        else:
            results[case.check] = "ok"
    if failures:
        raise ContractError(f"{case.target!r} breaks the mechanism contract:\n  " + "\n  ".join(failures))
    return results


__all__ = ["CHECKS", "ContractCase", "ContractError", "ContractSkip", "check_mechanism", "contract_cases", "inputs"]
