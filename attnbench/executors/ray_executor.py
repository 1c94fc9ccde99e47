"""The Ray executor: each cell a Ray task, on any node of an existing (or a local) Ray cluster.

Inside its task a cell runs exactly as locally: the local executor's single-cell ``run`` in a
fresh worker process with the cell's timeout, so a segfault or an OOM loses that cell and never
the Ray worker. Each task asks for what its cell needs (``resources.py``: CPUs, a GPU for cuda
cells, memory from the mechanism's estimate); timing cells ask for a whole node (or
``--timing-cpus``). A small ledger actor notes which cells ran on which node at the same time, so
each record says what share of the machine its cell had and what ran beside it
(``env.executor``). Records come back as tasks finish (``ray.wait``); ``close()`` cancels the rest.

Every node needs attnbench (and the plugins the cells use) installed, as for ``pip install
attnbench[ray]``. Ray tasks belong to the driver: if the driver dies, its unfinished cells die
with it and ``--resume`` runs them again (finished ones are already in the results file).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Iterable, Iterator, Optional

from ..cells import CellSpec
from ..errors import UserError
from ..schema import driver_record, submitted_now
from . import resources


def _ray():  # type: ignore[no-untyped-def]
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'attnbench[ray]'") from None
    return ray


class _Ledger:
    """When each cell ran on which node (a Ray actor), to tell each record what ran beside it.

    Tasks only send to it (never wait on it: a task blocked in ``ray.get`` lends its CPUs to
    another task, which would put a second cell on the node); the driver asks it per record.
    """

    def __init__(self) -> None:
        self.spans: dict[str, tuple[str, float, float | None]] = {}  # key -> node, start, end

    def start(self, node: str, key: str, at: float) -> None:
        self.spans[key] = (node, at, None)

    def end(self, node: str, key: str, at: float) -> None:
        self.spans[key] = (node, self.spans.get(key, (node, at, None))[1], at)

    def beside(self, node: str, key: str, start: float, end: float) -> list[str]:
        """Cells on ``node`` whose run overlapped [start, end] (still running ones included)."""
        return sorted(k for k, (n, s, e) in self.spans.items()
                      if k != key and n == node and s < end and (e is None or e > start))


def _run_cell(spec_dict: dict[str, Any], ledger: Any, share: dict[str, Any]) -> dict[str, Any]:
    """The body of one Ray task: the cell in a fresh worker process, plus where it ran and with what."""
    import os

    import ray

    from .launch import SubprocessLauncher
    from .local import LocalProcessExecutor

    spec = CellSpec.from_dict(spec_dict)
    ctx = ray.get_runtime_context()
    node = ctx.get_node_id()
    executor = LocalProcessExecutor(start_method="subprocess")
    executor.launcher = SubprocessLauncher(executor.python, executor.env, die_with_parent=True)
    started = time.time()
    ledger.start.remote(node, spec.key, started)
    try:
        record = executor.run(spec)
    finally:
        executor.close()
        ended = time.time()
        ledger.end.remote(node, spec.key, ended)
    node_cpus = share.get("node_cpus", {}).get(node)
    record.setdefault("env", {})["executor"] = {
        "name": "ray",
        "node_id": node,
        "node_ip": ray.util.get_node_ip_address(),
        "task_id": ctx.get_task_id(),
        "cpus": share["cpus"], "gpus": share["gpus"], "memory_bytes": share["memory_bytes"],
        "node_cpus": node_cpus,
        "cpu_share": round(share["cpus"] / node_cpus, 4) if node_cpus else None,
        "exclusive": share["exclusive"],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "span": [started, ended],
    }
    return record


class RayExecutor:
    """Cells as Ray tasks; records stream back in completion order."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_cell: int = 1, gpus_per_cell: int = 1,
                 timing_cpus: Optional[int] = None, init_kwargs: Optional[dict[str, Any]] = None):
        self.address = address
        self.cpus_per_cell, self.gpus_per_cell, self.timing_cpus = cpus_per_cell, gpus_per_cell, timing_cpus
        self.init_kwargs = dict(init_kwargs or {})
        self._outstanding: dict[Any, CellSpec] = {}
        #: cell key -> when the driver submitted it (for the records the driver itself has to make)
        self._since: dict[str, tuple[str, float]] = {}
        self._ledger: Any = None
        self._connected = False

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:  # noqa: SLF001 -- argparse's own type
        group.add_argument("--ray-address", default=None,
                           help="Ray cluster to join: 'auto' (the one this machine belongs to), HOST:PORT or "
                                "ray://HOST:PORT; default: start a Ray instance on this machine")
        resources.add_arguments(group)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RayExecutor":
        return cls(address=getattr(args, "ray_address", None), cpus_per_cell=getattr(args, "cpus_per_cell", 1) or 1,
                   gpus_per_cell=getattr(args, "gpus_per_cell", 1), timing_cpus=getattr(args, "timing_cpus", None))

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address is None:
                kwargs.setdefault("_node_ip_address", "127.0.0.1")
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--executor ray: cannot reach the Ray cluster {self.address or '(local)'}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self._connected = True
        return ray

    def run_cells(self, specs: Iterable[CellSpec]) -> Iterator[dict[str, Any]]:
        specs = list(specs)
        if not specs:
            return
        ray = self._connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_cpus = {n["NodeID"]: int(n["Resources"].get("CPU", 0)) for n in nodes}
        biggest_cpus = max(node_cpus.values(), default=1) or 1
        biggest_memory = max((int(n["Resources"].get("memory", 0)) for n in nodes), default=0)
        if self.timing_cpus and self.timing_cpus > biggest_cpus:
            raise UserError(f"--timing-cpus {self.timing_cpus}: the largest node has {biggest_cpus} CPUs")
        self._ledger = ray.remote(num_cpus=0)(_Ledger).remote()
        task = ray.remote(_run_cell)
        for spec in specs:
            need = resources.cell_resources(spec, min(self.cpus_per_cell, biggest_cpus), self.gpus_per_cell,
                                            self.timing_cpus, biggest_cpus)
            memory = need.memory_bytes
            if memory is not None and biggest_memory:
                memory = min(memory, biggest_memory)  # too big for any node: the cell says so itself
            share = {"cpus": need.cpus, "gpus": need.gpus, "memory_bytes": memory, "exclusive": need.exclusive,
                     "node_cpus": node_cpus}
            options: dict[str, Any] = {"num_cpus": need.cpus, "num_gpus": need.gpus, "max_retries": 1,
                                       "name": f"attnbench:{spec.key}"}
            if memory:
                options["memory"] = memory
            ref = task.options(**options).remote(spec.to_dict(), self._ledger, share)
            self._outstanding[ref] = spec
            self._since[spec.key] = submitted_now()
        while self._outstanding:
            done, _ = ray.wait(list(self._outstanding), num_returns=1, timeout=5.0)
            for ref in done:
                spec = self._outstanding.pop(ref)
                record = self._collect(ray, ref, spec, self._since.pop(spec.key))
                ex = record.get("env", {}).get("executor")
                if ex and "span" in ex:
                    ex["beside"] = ray.get(self._ledger.beside.remote(ex["node_id"], spec.key, *ex["span"]))
                yield record

    @staticmethod
    def _collect(ray: Any, ref: Any, spec: CellSpec, since: tuple[str, float]) -> dict[str, Any]:
        try:
            return ray.get(ref)
        except ray.exceptions.OutOfMemoryError as exc:
            status, reason = "oom", f"Ray's memory monitor killed the task: {str(exc).splitlines()[0]}"
        except ray.exceptions.TaskCancelledError:
            status, reason = "error", "the Ray task was cancelled"
        except ray.exceptions.RayError as exc:
            status, reason = "error", f"Ray task failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:400]}"
        return driver_record(spec, status, reason, since, executor={"name": "ray"})

    def close(self) -> None:
        """Cancel outstanding tasks (their cells' process groups are killed), then leave the cluster."""
        if not self._connected:
            return
        ray = _ray()
        refs, self._outstanding = list(self._outstanding), {}
        for ref in refs:
            try:
                ray.cancel(ref)  # KeyboardInterrupt in the task: its finally kills the cell's process group
            except Exception:  # noqa: BLE001 -- already finished
                pass
        if refs:
            deadline = time.monotonic() + 10
            pending = refs
            while pending and time.monotonic() < deadline:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)  # the cell itself dies with its worker (die_with_parent)
                except Exception:  # noqa: BLE001
                    pass
        if self._ledger is not None:
            try:
                ray.kill(self._ledger)
            except Exception:  # noqa: BLE001
                pass
            self._ledger = None
        ray.shutdown()
        self._connected = False
