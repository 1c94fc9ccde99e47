"""Cell runner of the ``substitution`` suite (paper Table 8): swap PSAL-1 into trained networks.

One cell = one training mechanism. Its colorization networks (one per seed, ``options.seeds``)
are taken from the weight cache (the ``colorization`` suite fills it; a missing entry is trained
now with the same protocol, so the cell's options must match the colorization suite's for a cache
hit), frozen, and evaluated twice on the test pairs: with their own attention layer (``l2``,
``flops``, ``peak_memory_bytes``...) and with ``options.substitute`` (default ``psal-1``) in its
place (the same metrics prefixed ``substituted_``). Only the attention layer changes; the trained
convolutions are kept. l2 figures are means over seeds with per-seed values and spread;
``substituted_ratio`` is substituted / own l2 per seed (Table 8's claim: about 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cells import CellSpec
from ..tasks.colorization import (ColorizationOptions, ColorizationSetup, attention_cost, spread, test_l2, test_pairs, train_network,
                                  training_evidence)
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
    build(substitute, spec.patch_size, {}, spec.device)  # fails fast if unavailable
    setup = ColorizationSetup.from_spec(spec)
    seeds = setup.seed_list()
    trained = [train_network(spec, seed) for seed in seeds]
    pairs = test_pairs(spec)
    own, swapped = [], []
    metrics: dict[str, Any] = {}
    for i, t in enumerate(trained):
        net = t.model.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        if i == 0:
            metrics.update(attention_cost(net, pairs, spec))
            metrics["resolved_params"] = net.attention.params()
        own.append(test_l2(net, pairs, spec))
        replacement = build(substitute, spec.patch_size, {}, spec.device).to(next(net.parameters()).dtype)
        net.swap_attention(replacement)
        if i == 0:
            metrics.update(attention_cost(net, pairs, spec, prefix="substituted_"))
            metrics["substituted_params"] = replacement.params()
        swapped.append(test_l2(net, pairs, spec))
    metrics.update(spread([s[0] for s in own], "l2"))
    metrics.update(spread([s[0] for s in swapped], "substituted_l2"))
    metrics["l2_per_pair"] = [round(float(v), 6) for v in np.mean([s[1] for s in own], axis=0)]
    metrics["substituted_l2_per_pair"] = [round(float(v), 6) for v in np.mean([s[1] for s in swapped], axis=0)]
    ratios = [s[0] / o[0] for s, o in zip(swapped, own)]
    metrics.update(spread(ratios, "substituted_ratio"))
    evidence = training_evidence(trained, seeds)
    metrics.update(evidence)
    metrics["substituted_converged"] = evidence["converged"]  # the swapped row's network is the same one
    metrics.update({"substitute": substitute, "weights_cached": all(t.cached for t in trained),
                    "weights_key": trained[0].key, "train_steps": setup.steps, "seeds": seeds,
                    "test_pairs": [p.name for p in pairs]})
    return metrics
