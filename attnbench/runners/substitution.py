"""Cell runner of the ``substitution`` suite (paper Table 8): swap PSAL-1 into trained networks.

One cell = one training mechanism. Its colorization network is taken from the weight cache (the
``colorization`` suite fills it; a missing entry is trained now with the same protocol, so the
cell's options must match the colorization suite's for a cache hit), frozen, and evaluated twice
on the test pairs: with its own attention layer (``l2``, ``flops``, ``peak_memory_bytes``...) and
with ``options.substitute`` (default ``psal-1``) in its place (the same metrics prefixed
``substituted_``). Only the attention layer changes; the trained convolutions are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cells import CellSpec
from ..tasks.colorization import ColorizationOptions, evaluate, test_pairs, train_network
from ..tasks.costs import build
from .reconstruction import check_task_spec

DEFAULT_SUBSTITUTE = "psal-1"


@dataclass(frozen=True)
class SubstitutionOptions(ColorizationOptions):
    #: the mechanism swapped in at test time
    substitute: str = DEFAULT_SUBSTITUTE


OPTIONS = SubstitutionOptions


def run(spec: CellSpec) -> dict[str, Any]:
    check_task_spec(spec, "substitution")
    substitute = SubstitutionOptions.of(spec).substitute
    replacement = build(substitute, spec.patch_size, {}, spec.device)  # fails fast if unavailable
    trained = train_network(spec)
    net = trained.model.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    pairs = test_pairs(spec)
    metrics: dict[str, Any] = evaluate(net, pairs, spec)
    metrics["resolved_params"] = net.attention.params()
    net.swap_attention(replacement.to(next(net.parameters()).dtype))
    metrics.update(evaluate(net, pairs, spec, prefix="substituted_"))
    metrics.update({"substitute": substitute, "substituted_params": replacement.params(),
                    "weights_cached": trained.cached, "weights_key": trained.key, "train_steps": len(trained.losses),
                    "test_pairs": [p.name for p in pairs]})
    return metrics
