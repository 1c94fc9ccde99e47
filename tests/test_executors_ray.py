"""The Ray executor on a real two-node Ray cluster on this machine (every address 127.0.0.1).

The memory ci preset (at 32 px, forward: one cell per mechanism) plus one speed cell run as Ray tasks; the
records must match a local run's cells (identity, status, deterministic metrics) and say where
each cell ran, with what share of its node and beside which other cells.
"""
from __future__ import annotations

import os

import pytest

# Ray replaces a loopback address by the machine's outward IP, which sandboxes and CI runners may
# not route; this switch (read when ray is imported) keeps every address on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'attnbench[ray]')")

from attnbench.executors.local import LocalProcessExecutor  # noqa: E402
from attnbench.executors.ray_executor import RayExecutor  # noqa: E402
from attnbench.suites import load  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20, "memory": 6 * 2**30}
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
    except Exception as exc:  # noqa: BLE001 -- the engine cannot start here: say why
        pytest.skip(f"a local two-node Ray cluster cannot start on this machine: {type(exc).__name__}: {exc}")
    yield cluster
    cluster.shutdown()


def _records(executor, cells) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    try:
        return {r["key"]: r for r in executor.run_cells(cells)}
    finally:
        executor.close()


def test_memory_ci_cells_on_two_ray_nodes_match_a_local_run(cluster) -> None:  # type: ignore[no-untyped-def]
    cells = load("memory").cells("ci", sizes=[32], modes=["fwd"])
    timing = load("speed").cells("ci", mechanisms=["psal-3"], sizes=[48])
    remote = _records(RayExecutor(address=cluster.address), cells + timing)
    # Ray gives each task's torch the task's CPUs (1 here); peak memory depends on the thread count
    local = _records(LocalProcessExecutor(env={"OMP_NUM_THREADS": "1"}), cells)

    assert sorted(remote) == sorted(c.key for c in cells + timing)
    for cell in cells:
        r, l = remote[cell.key], local[cell.key]
        assert (r["mechanism"], r["size"], r["status"]) == (l["mechanism"], l["size"], l["status"]), r["reason"]
        for metric in ("estimated_memory_bytes", "estimated_flops", "flops"):
            assert r["metrics"].get(metric) == l["metrics"].get(metric), (cell.label, metric)
        assert r["env"]["threads"] == l["env"]["threads"] == r["env"]["executor"]["cpus"] == 1
        if "peak_memory_bytes" in l["metrics"]:
            assert r["metrics"]["peak_memory_bytes"] == pytest.approx(l["metrics"]["peak_memory_bytes"], rel=0.05)

    placed = {r["env"]["executor"]["node_id"] for r in remote.values()}
    assert len(placed) == 2, "cells should have run on both nodes"
    for r in remote.values():
        ex = r["env"]["executor"]
        assert ex["name"] == "ray" and ex["node_ip"] == "127.0.0.1"
        assert ex["cpus"] == 1 and ex["node_cpus"] == 1 and ex["cpu_share"] == 1.0
        assert ex["beside"] == []  # one CPU per node: nothing ran beside any cell
    assert remote[timing[0].key]["env"]["executor"]["exclusive"] is True
    assert remote[timing[0].key]["status"] == "ok" and remote[timing[0].key]["metrics"]["time_median_s"] > 0
