"""Build and load the PSAL native extension (JIT, cached), or say why it cannot be.

The sources ship as package data of ``attnbench_native`` and are compiled on first use with
``torch.utils.cpp_extension.load`` into a per-user cache (``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/attnbench/torch_extensions``). The module name hashes the sources' content *and
location*, so two checkouts never rebuild each other's cache entry. ``ATTNBENCH_PSAL_BACKEND=
reference|native`` forces a backend. ``ATTNBENCH_PSAL_CUDA_VARIANT`` picks the CUDA search's
costing variant (:data:`CUDA_VARIANTS`, native/psal_cuda.cu's ``PSAL_CUDA_VARIANT`` switch; each
its own cache entry), so one GPU session can build and time every variant.

Builds are made safe against killed builders: every build holds an ``fcntl.flock`` on
``attnbench-build.lock`` in its build directory (the kernel releases it when its owner dies), so a
torch ``lock`` baton found while holding it was left by a dead builder and is removed instead of
waited on forever. ``attnbench run`` builds once in the parent before any cell (:func:`prepare`,
with its own timeout, see ``attnbench/prepare.py``); a failed build is written to
``attnbench-build-failed.txt`` so that the run's workers fall back to the reference at once
instead of each trying again. A kernel cache that cannot be written (``TORCH_EXTENSIONS_DIR`` on a
read-only or missing path) is such a failure too, found before any build (:func:`cache_problem`).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from attnbench.context import current as current_run

BACKEND_ENV = "ATTNBENCH_PSAL_BACKEND"
FAILED_MARKER = "attnbench-build-failed.txt"
BACKENDS = ("native", "reference")
CUDA_VARIANT_ENV = "ATTNBENCH_PSAL_CUDA_VARIANT"
#: the CUDA search's costing variants -> the compile-time switches of native/psal_cuda.cu:
#: one thread per query (today's), or a group of G lanes per query (query patch in shared memory,
#: candidate rows loaded coalesced); every variant makes the same decisions (tests/test_psal_cuda.py)
CUDA_VARIANTS: dict[str, tuple[str, ...]] = {
    "thread": ("-DPSAL_CUDA_VARIANT=0",),
    **{f"group{g}": ("-DPSAL_CUDA_VARIANT=1", f"-DPSAL_CUDA_GROUP={g}") for g in (4, 8, 16, 32)},
}
DEFAULT_CUDA_VARIANT = "thread"


class _BuildState:
    module: Optional[ModuleType] = None
    error: Optional[str] = None
    tried: bool = False


_state = _BuildState()


def source_dir() -> Path:
    """Directory holding psal.h / psal_cpu.cpp / psal_cuda.cu (works from an installed wheel)."""
    return Path(str(importlib.resources.files("attnbench_native")))


def build_dir() -> Path:
    """Where compiled objects are cached; TORCH_EXTENSIONS_DIR wins, as in cpp_extension."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "attnbench" / "torch_extensions"
    return base


def cache_problem(directory: Path) -> Optional[str]:
    """Why the kernel cache cannot be written, or None: checked before a build, so that a cache
    that is not writable is a reason to use the reference backend, not an error of every cell."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".attnbench-write-test-"):
            pass
    except OSError as exc:
        where = "TORCH_EXTENSIONS_DIR" if os.environ.get("TORCH_EXTENSIONS_DIR") else "the default cache; set TORCH_EXTENSIONS_DIR"
        return f"kernel cache {build_dir()} ({where}) is not writable: {exc.strerror or exc}"
    return None


def fallback_reason() -> Optional[str]:
    """Why the native backend could not be had in this process (None when it was, or was not tried)."""
    return _state.error if _state.module is None else None


def _with_cuda(src: Path) -> bool:
    """Build the CUDA kernels too only when a GPU, nvcc and the CUDA source are all present."""
    return (
        torch.cuda.is_available()
        and (src / "psal_cuda.cu").exists()
        and (shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME")))
    )


def cuda_variant() -> str:
    """The CUDA costing variant this process builds (``ATTNBENCH_PSAL_CUDA_VARIANT``, default thread)."""
    name = os.environ.get(CUDA_VARIANT_ENV, "").strip().lower() or DEFAULT_CUDA_VARIANT
    if name not in CUDA_VARIANTS:
        raise RuntimeError(f"{CUDA_VARIANT_ENV}={name!r}: one of {', '.join(CUDA_VARIANTS)}")
    return name


def _module_name(sources: list[Path], with_cuda: bool) -> str:
    """Name keyed by the sources' content (and the CUDA variant) so an edited kernel never loads a stale build."""
    digest = hashlib.sha1()
    if with_cuda and cuda_variant() != DEFAULT_CUDA_VARIANT:
        digest.update(cuda_variant().encode())
    headers = sorted(p for pattern in ("*.h", "*.cuh") for p in sources[0].parent.glob(pattern))
    for path in sources + headers:
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(str(sources[0].parent.resolve()).encode())  # two checkouts: two cache entries
    return f"attnbench_psal_{'cuda' if with_cuda else 'cpu'}_{digest.hexdigest()[:10]}"


def _build_target() -> tuple[list[Path], bool, str, Path]:
    src = source_dir()
    with_cuda = _with_cuda(src)
    sources = [src / "psal_cpu.cpp"] + ([src / "psal_cuda.cu"] if with_cuda else [])
    name = _module_name(sources, with_cuda)
    return sources, with_cuda, name, build_dir() / name


class _BuildLock:
    """Exclusive flock on the build directory; removes torch's baton if its owner died."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.fd: Optional[int] = None

    def __enter__(self) -> "_BuildLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.directory / "attnbench-build.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # waits only for a live builder
        baton = self.directory / "lock"
        if baton.exists():  # every builder holds our flock first: this baton's owner is dead
            warnings.warn(f"removing a stale build lock left by a killed build: {baton}", RuntimeWarning, stacklevel=2)
            baton.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def load_extension(verbose: bool = False) -> ModuleType:
    """Compile (once, cached) and import the PSAL extension; raise RuntimeError if it cannot be."""
    if _state.module is not None:
        return _state.module
    if _state.tried and _state.error:
        raise RuntimeError(_state.error)
    _state.tried = True
    try:
        from torch.utils.cpp_extension import load

        sources, with_cuda, name, directory = _build_target()
        src = source_dir()
        marker = directory / FAILED_MARKER
        if current_run().prepared and marker.exists():  # the run's parent tried already
            raise RuntimeError(marker.read_text(errors="replace").strip() or "PSAL native build failed")
        problem = cache_problem(directory)
        if problem:
            _state.error = f"PSAL native kernel not built: {problem}"
            raise RuntimeError(_state.error)
        flags = ["-O3", "-fopenmp"] + (["-DWITH_CUDA"] if with_cuda else [])
        with _BuildLock(directory):
            _state.module = load(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=flags,
                extra_cuda_cflags=["-O3", "-DWITH_CUDA", *CUDA_VARIANTS[cuda_variant()]] if with_cuda else None,
                extra_ldflags=["-fopenmp"],
                extra_include_paths=[str(src)],
                build_directory=str(directory),
                with_cuda=with_cuda,
                verbose=verbose,
            )
    except Exception as exc:  # compiler missing, headers missing, link error...
        if _state.error:
            raise RuntimeError(_state.error) from None
        _state.error = f"PSAL native build failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        raise RuntimeError(_state.error) from exc
    return _state.module


def prepare() -> str:
    """Build once before a run's cells (``attnbench run`` calls it in a child with a timeout).

    A failed build is not an error of the run (PSAL falls back to the reference backend); it is
    written down so the run's workers do not try again, and returned as a one-line message.
    """
    if requested_backend() == "reference":
        return "reference backend requested; nothing to build"
    *_, directory = _build_target()
    marker = directory / FAILED_MARKER
    problem = cache_problem(directory)
    if not problem:
        marker.unlink(missing_ok=True)
    try:
        module = load_extension()
    except RuntimeError as exc:
        if not problem:  # an unwritable cache: each worker finds that out at once, without a marker
            marker.write_text(str(exc))
        if requested_backend() == "native":
            raise
        return f"{exc}; PSAL cells use the pure-PyTorch reference"
    return f"PSAL native kernel ready ({Path(module.__file__).name})"


def native_module() -> Optional[ModuleType]:
    """The extension, or None (with a one-time warning) when it cannot be built here."""
    try:
        return load_extension()
    except RuntimeError as exc:
        if not getattr(native_module, "_warned", False):
            warnings.warn(f"{exc}; using the pure-PyTorch reference implementation", RuntimeWarning, stacklevel=2)
            native_module._warned = True  # type: ignore[attr-defined]
        return None


def requested_backend() -> Optional[str]:
    """The backend forced by ATTNBENCH_PSAL_BACKEND, or None to pick automatically."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        from attnbench.errors import UserError

        raise UserError(f"{BACKEND_ENV}={value!r} is not valid; use one of {', '.join(BACKENDS)}")
    return value


def active_backend() -> str:
    """``"native"`` when the extension is (or can be) loaded and not overridden, else ``"reference"``."""
    forced = requested_backend()
    if forced == "reference":
        return "reference"
    if forced == "native":
        load_extension()  # forced: a failed build is an error, not a silent fallback
        return "native"
    return "native" if native_module() is not None else "reference"


def has_device_kernels(device_type: str) -> bool:
    """Whether the loaded extension carries kernels for ``device_type`` (``cpu`` or ``cuda``)."""
    module = _state.module
    return module is not None and hasattr(module, f"psal_search_{device_type}")


if __name__ == "__main__":  # `python -m attnbench_plugins.psal_build`: build once, up front
    module = load_extension(verbose=False)
    print(f"PSAL native kernel ready: {module.__file__}")
