"""Inputs a measured call must leave alone, and outputs that must not be its inputs.

Why: a mechanism whose output *is* its query (or a view of it) costs nothing and reconstructs
perfectly; one that scales its query in place each call is timed on inputs it drives to Inf,
while only its first output is looked at. Neither is an attention layer's cost, so the harness,
not each plugin's honesty, rules both out: the cell is ``error`` saying which input.

How the inputs are watched, and why so:

* every call, for free: torch bumps a tensor's version counter on each in-place op on it or on
  any view of it (``q.mul_``, ``q[...] = x``, ``out=q``), so comparing the counters before and
  after a whole timing loop tells whether *any* of its calls wrote, even a write undone later;
* at each stage's end (the memory/FLOPs call, the first timed call, each timing loop): the
  contents, compared bit for bit with a copy taken before the first call, which catches writes
  that bypass the counter (``q.data``, numpy views, a native kernel writing through a pointer).
  The copy is taken on the CPU before any measurement, so it never counts in the call's peak
  memory nor takes device memory from it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ..errors import InvalidOutput


def _byte_range(t: torch.Tensor) -> Optional[tuple[int, int]]:
    """The bytes of memory a tensor's storage spans (None where it has none: meta, empty)."""
    try:
        storage = t.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, some subclasses)
        return None
    if not start or not size:
        return None
    return start, start + size


def check_not_aliased(out: Any, inputs: Mapping[str, torch.Tensor]) -> None:
    """An output sharing memory with an input (the input itself, a view, a reshape) is refused."""
    if not isinstance(out, torch.Tensor):
        return  # check_output says what is wrong with a non-tensor
    span = _byte_range(out)
    if span is None:
        return
    for name, t in inputs.items():
        other = _byte_range(t)
        if other is not None and span[0] < other[1] and other[0] < span[1] and out.device == t.device:
            raise InvalidOutput(f"the output shares memory with input {name} (returned {name}, or a view of it): "
                                "return a new tensor")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``t`` as raw bytes, so NaNs and -0.0 compare exactly."""
    return t.detach().to("cpu", copy=True).contiguous().reshape(-1).view(torch.uint8)


def _version(t: torch.Tensor) -> Optional[int]:
    """The tensor's in-place version counter (None for inference tensors, which keep none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class InputGuard:
    """Watches a call's inputs: built before the first call, :meth:`check` after each stage."""

    def __init__(self, inputs: Mapping[str, torch.Tensor]):
        self.inputs = dict(inputs)
        self._versions = {name: _version(t) for name, t in self.inputs.items()}
        self._contents = {name: _bits(t) for name, t in self.inputs.items()}

    def check(self, when: str) -> None:
        """Raise InvalidOutput naming the first input written to since the guard was built."""
        for name, t in self.inputs.items():
            if _version(t) != self._versions[name]:
                raise InvalidOutput(f"input {name} was modified in place during {when} (an in-place op on it or "
                                    "a view of it): the mechanism must leave q, k, v unchanged")
        for name, t in self.inputs.items():
            if not torch.equal(_bits(t), self._contents[name]):
                raise InvalidOutput(f"input {name} changed during {when} (written outside torch's in-place "
                                    "ops, e.g. through .data or a native kernel): the mechanism must leave "
                                    "q, k, v unchanged")

    def check_output(self, out: Any) -> None:
        """The output must not be one of the inputs or share memory with one."""
        check_not_aliased(out, self.inputs)
