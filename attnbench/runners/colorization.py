"""Cell runner of the ``colorization`` suite (paper Tables 4-5, Fig. 5).

One cell = one mechanism: train (or load from the weight cache) the paper's colorization network
with that attention layer, once per seed (``options.seeds``), then report the test l2 (mean over
seeds, with the per-seed values and their spread), the evidence that training converged (loss
curve, fit and test probes, the ``converged`` verdict) and the attention layer's test cost
(GFLOPs, peak memory, with the plugin's estimates) on the first seed's network. Every record also
carries the l2 of the two baselines trained with the same setup and seeds (``no_attention_l2``:
attention output replaced by zeros; ``zero_motion_l2``: the value at the same position in the
reference), and ``beats_baselines``. The protocol is in :mod:`attnbench.tasks.colorization`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..cells import CellSpec
from ..tasks.colorization import (ColorizationOptions, ColorizationSetup, attention_cost, baseline_metrics, grey_baseline_l2, spread,
                                  test_l2, test_pairs, train_network, training_evidence)
from .reconstruction import check_task_spec

OPTIONS = ColorizationOptions


def run(spec: CellSpec) -> dict[str, Any]:
    check_task_spec(spec, "colorization")
    setup = ColorizationSetup.from_spec(spec)
    seeds = setup.seed_list()
    trained = [train_network(spec, seed) for seed in seeds]
    pairs = test_pairs(spec)
    metrics: dict[str, Any] = attention_cost(trained[0].model, pairs, spec)
    scores = [test_l2(t.model, pairs, spec, save_example=i == 0) for i, t in enumerate(trained)]
    metrics.update(spread([s[0] for s in scores], "l2"))
    metrics["l2_per_pair"] = [round(float(v), 6) for v in np.mean([s[1] for s in scores], axis=0)]
    metrics.update(training_evidence(trained, seeds))
    metrics.update({k: float(np.mean([t.loss_summary()[k] for t in trained])) for k in trained[0].loss_summary()})
    if setup.baselines:
        metrics.update(baseline_metrics(spec, pairs))
        worst = max(metrics["l2_seeds"])
        metrics["beats_baselines"] = bool(worst < metrics["no_attention_l2"] and worst < metrics["zero_motion_l2"])
    metrics.update({"grey_l2": grey_baseline_l2(pairs), "train_steps": setup.steps, "seeds": seeds,
                    "train_time_s": round(sum(t.train_time_s for t in trained), 2),
                    "weights_cached": all(t.cached for t in trained),
                    "resumed_from_step": trained[0].resumed_from, "weights_key": trained[0].key,
                    "resolved_params": trained[0].model.attention.params(), "test_pairs": [p.name for p in pairs]})
    return metrics
