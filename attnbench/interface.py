"""The one interface every attention mechanism implements.

A mechanism maps ``q (B, C, Hq, Wq)``, ``k (B, C, Hk, Wk)``, ``v (B, Cv, Hk, Wk)`` to
``(B, Cv, Hq, Wq)``. Similarity is computed between p x p x C patches centred on each position
(see :mod:`attnbench.patches` for the border rule every mechanism shares); the output at a query
is the attention-weighted value at the matched keys' centres.

Plugins subclass :class:`AttentionMechanism`, declare what they support as class attributes, and
give an analytic :meth:`~AttentionMechanism.estimate` of their peak memory and FLOPs so that the
harness can show predictions beside measurements and skip cells that cannot fit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from .cells import MODES  # noqa: F401 -- plugins and the contract kit read the modes from the interface
from .errors import UnsupportedRequest

SIMILARITIES = ("l2", "dot")

DTYPE_NAMES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_from_name(name: str) -> torch.dtype:
    """Map a dtype name used in suite files and records to a torch dtype."""
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        from .errors import UserError

        raise UserError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_NAMES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class ProblemShape:
    """Everything an estimate needs to know about one call, independent of the data."""

    batch: int
    channels: int
    value_channels: int
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]
    patch_size: int
    dtype_bytes: int = 4
    mode: str = "fwd"

    @property
    def n_queries(self) -> int:
        return self.query_hw[0] * self.query_hw[1]

    @property
    def n_keys(self) -> int:
        return self.key_hw[0] * self.key_hw[1]

    @property
    def n_valid_keys(self) -> int:
        """Key centres whose whole patch lies inside the key image (see patches.py)."""
        p = self.patch_size
        return max(self.key_hw[0] - p + 1, 0) * max(self.key_hw[1] - p + 1, 0)

    @property
    def patch_dim(self) -> int:
        """d = p^2 C, the length of an unrolled patch vector."""
        return self.patch_size**2 * self.channels

    @property
    def backward(self) -> bool:
        return self.mode == "fwd+bwd"

    @property
    def input_bytes(self) -> int:
        """Bytes of a call's inputs (q, k, v, and the output gradient for fwd+bwd)."""
        (hq, wq), (hk, wk) = self.query_hw, self.key_hw
        elements = self.channels * (hq * wq + hk * wk) + self.value_channels * hk * wk
        if self.backward:
            elements += self.value_channels * hq * wq
        return self.batch * elements * self.dtype_bytes

    @classmethod
    def square(
        cls,
        size: int,
        channels: int,
        patch_size: int,
        batch: int = 1,
        dtype_bytes: int = 4,
        mode: str = "fwd",
        value_channels: Optional[int] = None,
    ) -> "ProblemShape":
        return cls(
            batch=batch,
            channels=channels,
            value_channels=channels if value_channels is None else value_channels,
            query_hw=(size, size),
            key_hw=(size, size),
            patch_size=patch_size,
            dtype_bytes=dtype_bytes,
            mode=mode,
        )

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patch_size: int, mode: str = "fwd") -> "ProblemShape":
        return cls(
            batch=q.shape[0],
            channels=q.shape[1],
            value_channels=v.shape[1],
            query_hw=(q.shape[2], q.shape[3]),
            key_hw=(k.shape[2], k.shape[3]),
            patch_size=patch_size,
            dtype_bytes=q.element_size(),
            mode=mode,
        )


@dataclass(frozen=True)
class CostEstimate:
    """Analytic peak memory (bytes, net of the inputs) and FLOPs of one call.

    ``formula`` is the human-readable complexity (the paper's column), e.g. ``"O(n^2)"``.
    ``bytes_moved``: bytes the call reads and writes in memory (the achieved-bandwidth figure
    divides it by the time); None: the harness uses :meth:`AttentionMechanism.estimate_bytes_moved`.
    ``matmul_share``: the share of the machine's float32 matmul rate the call reaches, for a
    mechanism measured to be far below it (a generated kernel, a graph search): the harness's
    "too slow" check divides by it, so that such a cell is skipped up front instead of timing
    out; None: the matmul rate itself (an optimistic bound).
    """

    memory_bytes: int
    flops: int
    formula: str = ""
    notes: str = ""
    bytes_moved: Optional[int] = None
    matmul_share: Optional[float] = None

    def seconds_at(self, flops_per_s: float) -> float:
        """Expected seconds of the call on a machine whose matmul yardstick reads ``flops_per_s``."""
        return self.flops / (flops_per_s * (self.matmul_share or 1.0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    def __str__(self) -> str:
        return "available" if self.ok else f"unavailable: {self.reason}"

    @classmethod
    def importable(cls, module: str, attr: str, package: str) -> "Availability":
        """Available when ``from module import attr`` works; else why not (shown by `attnbench list`)."""
        import importlib

        try:
            getattr(importlib.import_module(module), attr)
        except Exception as exc:  # a broken install raises anything, and must not break the others
            return cls(False, f"{package} not importable: {type(exc).__name__}: {exc}".splitlines()[0])
        return cls(True)


class AttentionMechanism(nn.Module):
    """Base class of every mechanism plugin.

    Subclasses set the class attributes, implement :meth:`attend` and :meth:`estimate`, and may
    override :meth:`availability` (dependency checks) and :meth:`parse_variant` (names such as
    ``psal-3``). Construction takes keyword parameters only; every parameter is recorded.
    """

    #: registry name, e.g. ``"full"``; set by the registry from the entry point if left empty
    name: ClassVar[str] = ""
    similarities: ClassVar[tuple[str, ...]] = ("l2", "dot")
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float64)
    #: inputs the output is differentiable with respect to: subset of ("q", "k", "v")
    differentiable_wrt: ClassVar[tuple[str, ...]] = ("q", "k", "v")
    #: whether ``forward`` accepts ``key_mask`` (keys whose patch touches the mask are never used)
    supports_mask: ClassVar[bool] = False
    #: a one-line description for ``attnbench list``
    summary: ClassVar[str] = ""
    #: the complexity in the paper's notation, shown in tables
    complexity: ClassVar[str] = ""
    #: the version of what this mechanism computes (its algorithm, e.g. PSAL's search rules); bump it
    #: when a change alters the figures a cell measures, so that ``--resume`` re-runs old cells and
    #: ``gate`` says "measured under another definition" instead of calling the change a regression
    algorithm_version: ClassVar[int] = 1

    def __init__(self, patch_size: int = 7, similarity: str = "l2", temperature: float = 1.0, **params: Any):
        super().__init__()
        if params:
            raise UnsupportedRequest(
                f"{self.name or type(self).__name__}: unknown parameter(s) {', '.join(sorted(params))}"
            )
        if not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
            raise UnsupportedRequest(f"patch_size must be a positive odd integer, got {patch_size!r}")
        if similarity not in self.similarities:
            raise UnsupportedRequest(
                f"{self.name}: similarity {similarity!r} not supported; supported: {', '.join(self.similarities)}"
            )
        if not temperature > 0:
            raise UnsupportedRequest(f"temperature must be > 0, got {temperature!r}")
        self.patch_size = patch_size
        self.similarity = similarity
        self.temperature = float(temperature)

    # ----------------------------------------------------------------- plugin hooks
    @classmethod
    def availability(cls) -> Availability:
        """Whether this plugin can run here; override to check optional dependencies."""
        return Availability(True)

    @classmethod
    def parse_variant(cls, suffix: str) -> dict[str, Any]:
        """Parameters implied by a name suffix: ``psal-3`` -> ``parse_variant("3")``.

        Raise ``ValueError`` when the suffix is not a variant of this mechanism.
        """
        raise ValueError(suffix)

    @classmethod
    def exact_params(cls, shape: ProblemShape, usable_keys: int) -> Optional[dict[str, Any]]:
        """Parameters under which this mechanism computes exact softmax attention over all
        ``usable_keys`` valid keys of ``shape`` (``attnbench check`` compares that setting with
        Full), or None when no setting is exact (approximations by design, e.g. Linear)."""
        return None

    def params(self) -> dict[str, Any]:
        """The parameters that define this instance (recorded with every result)."""
        return {"patch_size": self.patch_size, "similarity": self.similarity, "temperature": self.temperature}

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def estimate(self, shape: ProblemShape) -> CostEstimate:
        raise NotImplementedError

    def estimate_bytes_moved(self, shape: ProblemShape, estimate: CostEstimate) -> int:
        """Bytes one call moves: the estimate's ``bytes_moved`` where the plugin gives one, else a
        stated lower bound, :func:`streamed_bytes` (inputs read once, the peak working set written
        once and read once): a mechanism that re-reads its intermediates moves more."""
        if estimate.bytes_moved is not None:
            return int(estimate.bytes_moved)
        return streamed_bytes(shape, estimate.memory_bytes)

    def declared_backend(self, device: str) -> str:
        """Which kernel path a call on ``device`` takes, as one short line recorded with every result
        (``metrics.backend``; ``gate`` fails a cell whose backend changed). Read after the call, so a
        plugin may report what it chose then (FlexAttention compiled or eager). Default: a string
        attribute ``backend`` if the plugin sets one (PSAL: native or reference), else ``torch``
        (plain PyTorch ops; the record's ``kernels`` say which ran). Plugins whose name promises a
        kernel declare it: ``sdpa-flash`` is checked against the SDPA op the profiler saw."""
        backend = getattr(self, "backend", None)
        return backend if isinstance(backend, str) and backend else "torch"

    # ----------------------------------------------------------------- shared checks
    def check_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor]) -> None:
        """Reject requests this mechanism does not support, with a clear message."""
        who = self.name or type(self).__name__
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise UnsupportedRequest(f"{who}: q, k, v must be 4-D (B, C, H, W); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0]:
            raise UnsupportedRequest(f"{who}: batch sizes differ: {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
        if q.shape[1] != k.shape[1]:
            raise UnsupportedRequest(f"{who}: q and k channels differ: {q.shape[1]} vs {k.shape[1]}")
        if k.shape[2:] != v.shape[2:]:
            raise UnsupportedRequest(f"{who}: k and v spatial sizes differ: {tuple(k.shape[2:])} vs {tuple(v.shape[2:])}")
        if min(k.shape[2], k.shape[3]) < self.patch_size:
            raise UnsupportedRequest(f"{who}: key image {tuple(k.shape[2:])} is smaller than the patch size {self.patch_size}")
        if q.device.type not in self.devices:
            raise UnsupportedRequest(f"{who}: device {q.device.type!r} not supported; supported: {', '.join(self.devices)}")
        if q.dtype not in self.dtypes:
            raise UnsupportedRequest(
                f"{who}: dtype {dtype_name(q.dtype)} not supported; supported: {', '.join(dtype_name(d) for d in self.dtypes)}"
            )
        if not (q.dtype == k.dtype == v.dtype):
            raise UnsupportedRequest(f"{who}: q, k, v dtypes differ")
        if key_mask is not None:
            if not self.supports_mask:
                raise UnsupportedRequest(f"{who}: key_mask is not supported by this mechanism")
            if key_mask.shape != (k.shape[0], 1, k.shape[2], k.shape[3]) and key_mask.shape != (k.shape[0], k.shape[2], k.shape[3]):
                raise UnsupportedRequest(f"{who}: key_mask must be (B, 1, Hk, Wk) bool; got {tuple(key_mask.shape)}")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.requires_grad and name not in self.differentiable_wrt:
                raise UnsupportedRequest(
                    f"{who}: not differentiable with respect to {name} (only {', '.join(self.differentiable_wrt) or 'nothing'})"
                )

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        self.check_inputs(q, k, v, key_mask)
        if key_mask is not None and key_mask.dim() == 3:
            key_mask = key_mask[:, None]
        return self.attend(q, k, v, key_mask)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params().items())


def streamed_bytes(shape: ProblemShape, memory_bytes: int) -> int:
    """Inputs read once plus ``memory_bytes`` (a working set, output included) written once and read once."""
    return int(shape.input_bytes + 2 * max(int(memory_bytes), 0))


def log2ceil(n: int) -> int:
    return max(1, math.ceil(math.log2(max(n, 2))))
