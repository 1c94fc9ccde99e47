"""Synthetic result records for the report, compare and gate tests (built with the real schema helpers).

Figures follow each mechanism's complexity (Full: n², PSAL: n, ...) so plots and fits have
something real to show; statuses cover every kind of failure the tables must not drop.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from attnbench.cells import CellSpec
from attnbench.schema import make_record

ENV = {"machine": "testbox", "torch": "2.13.0", "cpu": "Test CPU", "memory_total_bytes": 24 * 2**30,
       "commit": "abc123"}
#: bytes per pixel of n (linear part) and per n² (quadratic part), per mechanism
_MEM = {"full": (2e3, 8.0), "flash": (3e3, 0.0), "local": (4e4, 0.0), "linear": (3e4, 0.0),
        "performer": (9e4, 0.0), "psal-3": (6e2, 0.0), "psal-aggreg": (1.1e4, 0.0)}
_FLOPS = {"full": (2e3, 1600.0), "flash": (2e3, 1600.0), "local": (2e6, 0.0), "linear": (5e4, 0.0),
          "performer": (3e5, 0.0), "psal-3": (1.4e5, 0.0), "psal-aggreg": (1.5e5, 0.0)}
_TIME = {"full": 4e-9, "flash": 3e-9, "local": 1e-6, "linear": 2e-7, "performer": 8e-7, "psal-3": 5e-7,
         "psal-aggreg": 7e-7}


def spec(suite: str, mechanism: str, size: int, mode: str = "fwd", **kw: Any) -> CellSpec:
    return CellSpec(suite=suite, runner="attnbench.runners.microbench:run", mechanism=mechanism, size=size,
                    mode=mode, preset="ci", **kw)


def memory_records(sizes: tuple[int, ...] = (64, 128, 256, 512)) -> list[dict[str, Any]]:
    out = []
    for mech, (lin, quad) in _MEM.items():
        for mode in ("fwd", "fwd+bwd"):
            for size in sizes:
                n = size * size
                factor = 2.0 if mode == "fwd+bwd" else 1.0
                est = factor * (lin * n + quad * n * n)
                fl_lin, fl_quad = _FLOPS[mech]
                est_flops = factor * (fl_lin * n + fl_quad * n * n)
                metrics = {"estimated_memory_bytes": est, "estimated_flops": est_flops}
                s = spec("memory", mech, size, mode)
                if est > 20 * 2**30:
                    out.append(make_record(s, "infeasible", f"estimate {est / 2**30:.0f} GiB > available 20 GiB",
                                           metrics, ENV))
                    continue
                metrics.update(peak_memory_bytes=int(est * 1.08), flops=int(est_flops), uncounted_ops=[])
                out.append(make_record(s, "ok", "", metrics, ENV))
    out.append(make_record(spec("memory", "reformer", 64), "unavailable",
                           "reformer-pytorch not installed (pip install attnbench[baselines])", {}, ENV))
    out.append(make_record(spec("memory", "linear", 1024), "timeout", "no result within 600 s", {}, ENV))
    out.append(make_record(spec("memory", "performer", 1024), "error", "RuntimeError: boom", {}, ENV))
    return out


def speed_records(sizes: tuple[int, ...] = (32, 64), slow: dict[str, float] | None = None,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Timings with 9 noisy samples each; ``slow`` multiplies a mechanism's times."""
    rng = np.random.default_rng(seed)
    slow = slow or {}
    out = []
    for mech in ("flash", "full", "psal-3"):
        for size in sizes:
            n = size * size
            base = _TIME[mech] * n * (n if mech in ("full", "flash") else 1) ** 0.5 * slow.get(mech, 1.0)
            samples = (base * (1 + 0.02 * rng.standard_normal(9))).tolist()
            metrics = {"time_median_s": float(np.median(samples)),
                       "time_iqr_s": float(np.subtract(*np.percentile(samples, [75, 25]))),
                       "time_repeats": len(samples), "time_samples_s": samples,
                       "flops": int(_FLOPS[mech][0] * n), "peak_memory_bytes": int(_MEM[mech][0] * n)}
            out.append(make_record(spec("speed", mech, size), "ok", "", metrics, ENV))
    return out


def colorization_records() -> list[dict[str, Any]]:
    rows = [("full", {}, 0.0026, 1.1e12, 9.0e9), ("full", {"similarity": "dot"}, 0.0061, 1.1e12, 9.0e9),
            ("local", {}, 0.0035, 3.8e11, 3.0e9), ("performer", {}, 0.0090, 1.7e12, 1.1e10),
            ("psal-3", {}, 0.0024, 3.5e10, 8.0e7), ("psal-aggreg", {}, 0.0020, 3.8e10, 7.5e8)]
    out = []
    for mech, params, l2, flops, mem in rows:
        s = spec("colorization", mech, 256, params=params, options={"steps": 300})
        out.append(make_record(s, "ok", "", {"l2": l2, "psnr": -10 * np.log10(l2), "flops": flops,
                                             "peak_memory_bytes": mem}, ENV))
    out.append(make_record(spec("colorization", "reformer", 256, options={"steps": 300}), "oom",
                           "out of memory", {"estimated_memory_bytes": 3e10}, ENV))
    return out


def substitution_records() -> list[dict[str, Any]]:
    """As the substitution runner writes them: mechanism = the training one, PSAL-1's figures prefixed."""
    out = []
    for trained, own_l2, swapped_l2, own_flops in (("full", 0.0025, 0.0026, 1.1e12), ("psal-3", 0.0023, 0.0024, 3.6e10),
                                                   ("psal-1", 0.0030, 0.0030, 3e10)):
        metrics = {"l2": own_l2, "flops": own_flops, "peak_memory_bytes": 5e8, "substitute": "psal-1",
                   "substituted_l2": swapped_l2, "substituted_flops": 3e10, "substituted_peak_memory_bytes": 5e7,
                   "train_steps": 300, "weights_cached": True}
        out.append(make_record(spec("substitution", trained, 256, options={"steps": 300}), "ok", "", metrics, ENV))
    out.append(make_record(spec("substitution", "local", 256, options={"steps": 300}), "timeout", "no result in 600 s",
                           {}, ENV))
    return out


def custom_suite_records() -> list[dict[str, Any]]:
    """A suite nobody told the report about: every metric becomes a column."""
    return [make_record(spec("denoise", m, 32), "ok", "", {"mse": v, "widgets": 3}, ENV)
            for m, v in (("psal-3", 0.1), ("thirdparty-attn", 0.2))]


def with_metric(records: list[dict[str, Any]], mechanism: str, metric: str, factor: float) -> list[dict[str, Any]]:
    """A copy of ``records`` with one metric of one mechanism scaled (an injected regression)."""
    out = copy.deepcopy(records)
    for rec in out:
        if rec["mechanism"] == mechanism and metric in rec["metrics"]:
            value = rec["metrics"][metric]
            rec["metrics"][metric] = [x * factor for x in value] if isinstance(value, list) else value * factor
    return out
