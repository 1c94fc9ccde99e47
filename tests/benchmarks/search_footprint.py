"""What one evaluation of PSAL's search costs as the key image grows, the queries fixed.

Not a test (no assertion, not collected by pytest): a benchmark whose figures go in the README.
    .venv/bin/python tests/benchmarks/search_footprint.py [--queries 256] [--keys 32,64,128,256,512]
                                                          [--threads 1] [--rounds 3]

On random-normal inputs every candidate key patch lands at a random place, so the time per
evaluation (search time / the kernel's own evaluation count) says how fast this machine serves
random reads from a key copy of that size (C * Hk * Wk * 4 bytes): from L1/L2, L3 or memory. Since
the query image is the same in every row, only the key's footprint changes. A search at size N
costs (evaluations at N) x (ns per evaluation with an N px key), so this table bounds the ratio of
the 512 px and 256 px times that any kernel reading the same float32 keys at random can reach here.
Rows are timed in interleaved rounds (round 1 of every size, then round 2, ...) with
torch.utils.benchmark, so a machine that slows down for a while slows every row alike.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.benchmark import Timer

from attnbench.measure.timing import median_iqr
from attnbench_plugins import psal_ops

CHANNELS, PATCH, K_NN, ITERATIONS = 16, 7, 3, 5  # PSAL-3 as the speed suite runs it


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < PATCH:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes >= {PATCH} px, e.g. 64,256,512")
    return sizes


def inputs(queries: int, keys: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, CHANNELS, queries, queries, generator=g)
    k = torch.randn(1, CHANNELS, keys, keys, generator=g)
    return q, k, torch.ones(1, keys, keys, dtype=torch.bool)  # the kernel applies the border rule itself


def search(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor) -> int:
    """One PSAL-3 search; returns the evaluations the kernel counted."""
    _, evals = psal_ops.psal_search(q, k, valid, PATCH, K_NN, ITERATIONS, False, 0)
    return int(evals.sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=256, help="query image side, px (default 256)")
    parser.add_argument("--keys", type=_sizes, default=_sizes("32,64,128,256,512"),
                        help="key image sides, px, comma-separated (default 32,64,128,256,512)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default 3)")
    args = parser.parse_args()
    if args.queries < PATCH or args.threads < 1 or args.rounds < 1:
        parser.error(f"--queries must be >= {PATCH}, --threads and --rounds >= 1")
    if psal_ops.prepare() != "native":
        print("search_footprint: the PSAL native kernel is not available here (this measures it)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cases = {n: inputs(args.queries, n) for n in args.keys}
    evals = {n: search(*case) for n, case in cases.items()}  # also the warm-up
    times: dict[int, list[float]] = {n: [] for n in cases}
    for _ in range(args.rounds):
        for n, (q, k, valid) in cases.items():
            timer = Timer("search(q, k, valid)", globals={"search": search, "q": q, "k": k, "valid": valid},
                          num_threads=args.threads)
            times[n].append(timer.timeit(1).median)
    first = args.keys[0]
    print(f"PSAL-3 search, {args.queries} px queries, C = {CHANNELS}, p = {PATCH}, {ITERATIONS} iterations, "
          f"{args.threads} thread(s), median of {args.rounds} interleaved rounds")
    print(f"{'key px':>6} {'key copy MB':>11} {'evals/query':>11} {'search s':>9} {'IQR s':>7} "
          f"{'ns/eval':>8} {'vs ' + str(first) + ' px':>10}")
    per_eval = {}
    for n in args.keys:
        median, iqr = median_iqr(times[n])
        per_eval[n] = median / evals[n] * 1e9
        print(f"{n:>6} {CHANNELS * n * n * 4 / 1e6:>11.2f} {evals[n] / args.queries ** 2:>11.1f} {median:>9.3f} "
              f"{iqr:>7.3f} {per_eval[n]:>8.1f} {per_eval[n] / per_eval[first]:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
