"""A fork server: one process with torch and the plugins imported forks a fresh child per cell.

Why: a cell in a brand-new interpreter pays ~3-4 s for Python start, ``import torch`` and plugin
discovery before it measures anything. Forking a process that already holds those imports keeps
the isolation of a fresh process per cell (its own memory, its own crash) at a fraction of the cost.

Fork safety: the server never runs a torch op, so no OpenMP/ATen thread pool exists when it forks.
It checks that it has no thread beyond those of a bare ``import torch`` (see ``_warm``) after
warming up and before every fork, and refuses to fork otherwise (the client then falls back to a plain subprocess). Each child starts its own session
(so a timeout kills its whole process group, as for a subprocess), sets its thread count itself,
and runs exactly what ``python -m attnbench.worker SPEC RECORD`` runs. The server is the subreaper
of its workers' descendants: those orphaned by a worker that died first are killed.

Protocol, one JSON object per line: the client writes ``{"id", "spec", "out", "log", "threads"}``
to the server's stdin; the server answers ``{"id", "pid"}`` once forked and ``{"pid", "code"}``
when that child exits (``code`` as ``subprocess.Popen.returncode``: ``-N`` for signal N).
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Optional

#: imported (and warmed) by the server before its first fork
PRELOAD: tuple[str, ...] = ("torch", "torch.profiler", "torch._dynamo", "torch._inductor",  # the profiler imports
                            # the last two lazily on first use: ~3-5 s per cell otherwise
                            "attnbench.worker", "attnbench.env", "attnbench.registry", "attnbench.schema",
                            "attnbench.measure.memory", "attnbench.measure.flops", "attnbench.measure.timing",
                            "attnbench.runners.microbench")


def available() -> bool:
    """Whether this platform can fork (Linux: yes; Windows: no; macOS: unsafe with many libraries)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def thread_count() -> int:
    """Threads of this process as the kernel sees them (also counts OpenMP threads Python does not know)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


# --------------------------------------------------------------------------------------------
# server side: `python -m attnbench.executors.forkserver [MODULE ...]`

def _warm(modules: list[str]) -> int:
    """Import what every cell needs; returns the thread count of a bare ``import torch``.

    Importing torch imports numpy, whose OpenBLAS starts its thread pool at load time; OpenBLAS
    shuts that pool down around ``fork`` (pthread_atfork), so those threads are allowed. Any thread
    beyond them (an OpenMP/ATen pool from running a torch op, a Python thread) makes forking
    unsafe. That is why plugin *availability* checks, which may run ops, are left to the children.
    """
    import torch  # noqa: F401

    allowed = thread_count()
    for name in modules:
        importlib.import_module(name)
    from importlib.metadata import entry_points

    from attnbench import env, registry

    for ep in entry_points(group=registry.GROUP):
        try:
            ep.load()  # the plugin's module, not its availability check
        except Exception:  # noqa: BLE001 -- the child records the plugin as unavailable
            pass
    _seed_registry(_probe_availability())
    env.git_commit()  # two `git` calls per cell otherwise
    env.cpu_model()
    gc.collect()
    gc.freeze()  # children's gc.collect() (memory measurement) skips the server's objects, pages stay shared
    return allowed


def _probe_availability() -> dict[str, tuple[bool, str]]:
    """Every plugin's availability, checked in a throw-away forked child.

    Some checks run torch ops or import libraries that start threads (xformers: ~5 s and a
    thread), which must not happen in the server; the answers themselves are plain data.
    """
    from attnbench import registry

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            found = {name: (info.availability.ok, info.availability.reason) for name, info in registry.plugins().items()}
            os.write(write_fd, json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return {name: (ok, reason) for name, (ok, reason) in json.loads(data or b"{}").items()}


def _seed_registry(probed: dict[str, tuple[bool, str]]) -> None:
    """Fill the registry's per-process cache with the probed answers, so children skip the checks."""
    from contextlib import ExitStack
    from importlib.metadata import entry_points
    from unittest import mock

    from attnbench import registry
    from attnbench.interface import Availability

    with ExitStack() as stack:
        for ep in entry_points(group=registry.GROUP):
            if ep.name not in probed:
                continue
            try:
                cls = ep.load()
            except Exception:  # noqa: BLE001 -- plugins() records the import failure itself
                continue
            if isinstance(cls, type):
                answer = Availability(*probed[ep.name])
                stack.enter_context(mock.patch.object(cls, "availability", classmethod(lambda _cls, a=answer: a)))
        registry.plugins()


def _send(obj: dict[str, Any]) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


def _child(req: dict[str, Any], close_fds: list[int]) -> None:
    """In the forked child: become a worker process for one cell; never returns."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close_fds:
            os.close(fd)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        if req.get("threads"):
            import torch

            torch.set_num_threads(int(req["threads"]))
        from attnbench import worker

        sys.argv = [worker.__file__, req["spec"], req["out"]]
        code = worker.main([req["spec"], req["out"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 -- report, then exit with an error code
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(modules: list[str]) -> int:
    """The server loop: fork on each request, report each child's exit; ends when stdin closes."""
    try:
        allowed = _warm(modules)
    except Exception as exc:  # noqa: BLE001 -- told to the client, which falls back
        _send({"error": f"warm-up failed: {type(exc).__name__}: {exc}"})
        return 1
    if thread_count() > allowed:
        _send({"error": f"{thread_count()} threads after warm-up (import torch alone: {allowed}); forking now is unsafe"})
        return 1
    from attnbench import proctree

    proctree.become_subreaper()  # a dead worker's orphans come here, and are killed below
    wake_r, wake_w = _wake_pipe()
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    _send({"ready": True, "pid": os.getpid()})
    children: set[int] = set()
    pending = b""
    while True:
        for key, _ in sel.select():
            if key.fd == wake_r:
                _drain(wake_r)
                continue
            data = os.read(0, 65536)
            if not data:  # the client is gone: leave nothing running
                _kill_groups(children)
                return 0
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in filter(None, lines):
                _fork_request(json.loads(line), allowed, children, [wake_r, wake_w])
        _reap(children)
        _kill_strays(children)


def _wake_pipe() -> tuple[int, int]:
    """A non-blocking pipe that signals write to (``signal.set_wakeup_fd``), so that a child's exit
    (SIGCHLD) wakes the select loop as a request does."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return wake_r, wake_w


def _drain(fd: int) -> None:
    """Empty the wake-up pipe: its bytes only say that a signal came."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _kill_groups(children: set[int]) -> None:
    """SIGKILL each worker's process group (a worker leads its own)."""
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _fork_request(req: dict[str, Any], allowed: int, children: set[int], close_fds: list[int]) -> None:
    """Fork one worker for ``req`` and tell the client its pid; refused once the server runs more
    threads than after warm-up, since a fork copies no thread and may copy a held lock."""
    if thread_count() > allowed:
        _send({"id": req["id"], "error": "the fork server started a thread; forking now is unsafe"})
        return
    pid = os.fork()
    if pid == 0:
        _child(req, close_fds)
    children.add(pid)
    _send({"id": req["id"], "pid": pid})


def _reap(children: set[int]) -> None:
    """Reap every child that has exited (workers, and strays killed by _kill_strays) and report each
    worker's exit code; an orphan re-parented here is reaped without a report."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in children:
            children.discard(pid)
            _send({"pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _kill_strays(workers: set[int]) -> None:
    """Kill every child of the server that is not a worker: descendants of a worker that died first
    (a crash, a kill from outside), re-parented to the server as their subreaper."""
    from attnbench import proctree

    for pid in proctree.children(os.getpid()):
        if pid not in workers:
            proctree.kill_tree(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------------------------
# client side

class ForkedProcess:
    """A forked worker as the local executor sees a ``subprocess.Popen``: pid, poll(), wait(timeout)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: Optional[int] = None
        self._done = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode


class ForkServerError(RuntimeError):
    """The server could not start or fork; the caller falls back to plain subprocesses."""


class ForkServer:
    """Client of one fork server process; thread-safe (``--jobs N`` starts cells from N threads)."""

    def __init__(self, python: str = sys.executable, env: Optional[dict[str, str]] = None,
                 preload: tuple[str, ...] = (), start_timeout_s: float = 120.0):
        self.python, self.env = python, env
        self.preload = list(dict.fromkeys((*PRELOAD, *preload)))
        self.start_timeout_s = start_timeout_s
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting: dict[int, tuple[threading.Event, dict[str, Any]]] = {}  # request id -> answer
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._ready = threading.Event()
        self._error = ""

    def start(self) -> None:
        if self._proc is not None:
            return
        self._proc = subprocess.Popen([self.python, "-m", "attnbench.executors.forkserver", *self.preload],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      env=self.env, start_new_session=True)
        threading.Thread(target=self._read, name="attnbench-forkserver-reader", daemon=True).start()
        if not self._ready.wait(self.start_timeout_s) or self._error:
            self.close()
            raise ForkServerError(self._error or f"no answer within {self.start_timeout_s:g} s")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            with self._lock:
                if "ready" in msg:
                    self._ready.set()
                elif "id" in msg:
                    event, answer = self._waiting.pop(msg["id"])
                    answer.update(msg)
                    event.set()
                elif "pid" in msg and "code" in msg:
                    child = self._children.pop(msg["pid"], None)
                    if child is not None:
                        child._exited(msg["code"])
                    else:  # exited before its spawn() call registered it
                        self._early_exits[msg["pid"]] = msg["code"]
                elif "error" in msg:
                    self._error = msg["error"]
                    self._ready.set()
        # the server is gone: its children cannot be reaped by us, so kill them and say so
        with self._lock:
            self._error = self._error or "the fork server exited"
            self._ready.set()
            for event, answer in self._waiting.values():
                answer["error"] = self._error
                event.set()
            self._waiting.clear()
            for child in self._children.values():
                _killpg(child.pid)
                child._exited(255)
            self._children.clear()

    def spawn(self, spec_path: str, out_path: str, log_path: str, threads: Optional[int] = None) -> ForkedProcess:
        """Fork one worker for one cell; raises :class:`ForkServerError` when the server cannot."""
        self.start()
        assert self._proc is not None and self._proc.stdin is not None
        event, answer = threading.Event(), {}
        with self._lock:
            if self._error:
                raise ForkServerError(self._error)
            req_id = self._next_id
            self._next_id += 1
            self._waiting[req_id] = (event, answer)
            try:
                self._proc.stdin.write((json.dumps({"id": req_id, "spec": spec_path, "out": out_path, "log": log_path,
                                                    "threads": threads}) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self._waiting.pop(req_id, None)
                raise ForkServerError(f"the fork server is gone: {exc}") from None
        event.wait()
        if "pid" not in answer:
            raise ForkServerError(answer.get("error", "no pid"))
        child = ForkedProcess(answer["pid"])
        with self._lock:
            if child.pid in self._early_exits:
                child._exited(self._early_exits.pop(child.pid))
            else:
                self._children[child.pid] = child
        return child

    def close(self) -> None:
        """Kill every running child's process group, then the server. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with self._lock:
            for pid in list(self._children):
                _killpg(pid)
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()
            proc.wait()


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
