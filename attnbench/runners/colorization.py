"""Cell runner of the ``colorization`` suite (paper Tables 4-5, Fig. 5).

One cell = one mechanism: train (or load from the weight cache) the paper's colorization network
with that attention layer, then report the test l2 and the attention layer's test cost (GFLOPs,
peak memory, with the plugin's estimates). The protocol is in :mod:`attnbench.tasks.colorization`.
The k sweep (psal-1 ... psal-31, psal-aggreg) and Full with l2 vs dot similarity
(``full[similarity=dot]``) are cells of the same suite.
"""
from __future__ import annotations

from typing import Any

from ..cells import CellSpec
from ..tasks.colorization import ColorizationOptions, evaluate, grey_baseline_l2, test_pairs, train_network
from .reconstruction import check_task_spec

OPTIONS = ColorizationOptions


def run(spec: CellSpec) -> dict[str, Any]:
    check_task_spec(spec, "colorization")
    trained = train_network(spec)
    pairs = test_pairs(spec)
    metrics: dict[str, Any] = evaluate(trained.model, pairs, spec)
    metrics.update(trained.loss_summary())
    metrics.update({"grey_l2": grey_baseline_l2(pairs), "train_steps": len(trained.losses),
                    "train_time_s": round(trained.train_time_s, 2), "weights_cached": trained.cached,
                    "resumed_from_step": trained.resumed_from, "weights_key": trained.key,
                    "resolved_params": trained.model.attention.params(), "test_pairs": [p.name for p in pairs]})
    return metrics
