"""Result records: one JSON object per cell, appended to a JSON Lines file as each cell ends.

Schema (version ``SCHEMA_VERSION``; bump it on any incompatible change)::

    schema        int       record format version
    suite, preset str       suite name and preset
    key           str       hash of the cell's identity (resume, compare and gate join on it)
    mechanism     str       name as requested (e.g. "psal-3"); params: dict of its parameters
    size, channels, patch_size, batch   int   (size is H = W of the query and key maps)
    mode          str       "fwd" | "fwd+bwd"
    device, dtype str
    seed          int
    options       dict      suite-specific settings of the cell
    status        str       ok | oom | timeout | killed | error | unavailable | infeasible | unsupported
    reason        str       why, when status is not ok
    metrics       dict      peak_memory_bytes, estimated_memory_bytes, flops, estimated_flops,
                            uncounted_ops, time_median_s, time_iqr_s, time_repeats, and quality
                            metrics of task suites (l2, psnr, ssim, ...); absent = not measured;
                            beside the memory: peak_memory_source (allocator | rss | device),
                            peak_memory_allocator_bytes, peak_memory_rss_bytes / _device_bytes (+
                            _instrument), memory_outside_torch_bytes; beside the FLOPs:
                            flops_counted, flops_declared, flops_declared_by (see attnbench.metrics)
    env           dict      attnbench/plugin/torch/python versions, device, CPU, threads, commit
    started_at    str       ISO 8601 UTC; duration_s: float, wall time of the worker
    calibration   dict      values the run measured once for every cell (flops_per_s: the matmul
                            yardstick); not part of the key
Every record has env, started_at and duration_s, whoever wrote it (the worker, or the executor
for a timeout, a kill or a crash).
"""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .cells import CellSpec, STATUSES
from .errors import UserError

SCHEMA_VERSION = 1
REQUIRED = ("schema", "suite", "key", "mechanism", "params", "size", "channels", "patch_size", "batch",
            "mode", "device", "dtype", "status", "reason", "metrics", "env")


def make_record(spec: CellSpec, status: str, reason: str = "", metrics: dict[str, Any] | None = None,
                env: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    assert status in STATUSES, status
    rec: dict[str, Any] = {"schema": SCHEMA_VERSION, "key": spec.key}
    rec.update(spec.to_dict())
    rec.pop("runner")
    rec.pop("timeout_s")
    rec.update(status=status, reason=reason, metrics=dict(metrics or {}), env=dict(env or {}))
    rec.update(extra)
    return rec


def now_iso() -> str:
    """The ``started_at`` format of records: ISO 8601, UTC, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def outside_record(spec: CellSpec, status: str, reason: str, *, started_at: str, duration_s: float,
                   metrics: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A record made outside the worker (timeout, kill, crash) with the same fields as the worker's:
    the environment is captured here, in the process that ran the worker."""
    from .env import capture

    return make_record(spec, status, reason, metrics, capture(spec.device, spec.seed), started_at=started_at,
                       duration_s=round(duration_s, 3), **extra)


def driver_record(spec: CellSpec, status: str, reason: str, since: tuple[str, float], **env: Any) -> dict[str, Any]:
    """A record a cluster run's driver makes for a cell whose worker never reported (the engine
    killed or lost it). ``since`` is the driver's (ISO time, ``time.monotonic()``) at submission:
    started_at and duration_s are the driver's view; env holds what the driver knows (engine, job
    id), marked ``recorded_by: driver`` -- never the driver's own machine passed off as the node's."""
    import time

    return make_record(spec, status, reason, {}, {"recorded_by": "driver", **env}, started_at=since[0],
                       duration_s=round(time.monotonic() - since[1], 3))


def submitted_now() -> tuple[str, float]:
    """The ``since`` of :func:`driver_record`: now, as the driver sees it."""
    import time

    return now_iso(), time.monotonic()


def append(path: Path, record: dict[str, Any]) -> None:
    """Append one record and flush it to disk, so a killed run keeps every finished cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def drop_torn_tail(path: Path) -> None:
    """Remove an unfinished last line (a run killed mid-write) so appends start on a clean line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


#: the JSON type each field must have (bool is never accepted as int); checked on every read
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (int,), "suite": (str,), "key": (str,), "mechanism": (str,), "params": (dict,),
    "size": (int,), "channels": (int,), "patch_size": (int,), "batch": (int,), "mode": (str,),
    "device": (str,), "dtype": (str,), "status": (str,), "reason": (str,), "metrics": (dict,), "env": (dict,),
    "preset": (str,), "seed": (int,), "options": (dict,),
}
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def check_record(rec: Any) -> str:
    """What is wrong with a parsed record (field types included), or "" when it is a valid record."""
    if not isinstance(rec, dict):
        return f"not an attnbench record (a JSON {_json_name(rec).split()[-1]}, not an object)"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"not an attnbench record (missing {', '.join(missing[:4])})"
    for name, types in FIELD_TYPES.items():
        if name not in rec:
            continue
        value = rec[name]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"field {name!r} must be {_JSON_NAMES[types[0]]}, got {_json_name(value)} {json.dumps(value, default=str)[:40]}"
    if rec["schema"] != SCHEMA_VERSION:
        return f"schema version {rec['schema']}, this attnbench reads {SCHEMA_VERSION}; re-run the suite"
    for name in ("size", "channels", "patch_size", "batch"):
        if rec[name] < 1:
            return f"field {name!r} must be a positive integer, got {rec[name]}"
    if rec["status"] not in STATUSES:
        return f"unknown status {rec['status']!r}; valid: {', '.join(STATUSES)}"
    if rec["mode"] not in ("fwd", "fwd+bwd"):
        return f"unknown mode {rec['mode']!r}; valid: fwd, fwd+bwd"
    return ""


def read(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines results file, refusing corrupt lines, wrong field types or unknown schemas
    with one clear line naming the file and line.

    A truncated *last* line (no newline: a run killed mid-write) is skipped, since it never
    completed, and said so on stderr; a complete line that is not a record is an error.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read results file {path}: {exc.__class__.__name__}: {exc}") from None
    lines = text.splitlines()
    torn_tail = bool(text) and not text.endswith("\n")
    records = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if no == len(lines) and torn_tail:
                print(f"attnbench: note: {path}:{no}: unfinished last record skipped (a run killed mid-write)",
                      file=sys.stderr)
                continue
            raise UserError(f"{path}:{no}: not a JSON record; the results file is corrupt (remove the line or re-run)") from None
        problem = check_record(rec)
        if problem:
            raise UserError(f"{path}:{no}: {problem}")
        records.append(rec)
    return records


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders (searched recursively for ``*.jsonl``) -> result files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.jsonl")))
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"no such results file or folder: {p}")
    if not out:
        raise UserError(f"no *.jsonl result files under {', '.join(map(str, paths))}")
    return out


def read_all(paths: Iterable[str | Path], *, require: bool = False) -> list[dict[str, Any]]:
    """Every record of every file; with ``require``, no record at all is a UserError that says so."""
    files = expand_paths(paths)
    records = [rec for p in files for rec in read(p)]
    if require and not records:
        raise UserError(f"no records in {', '.join(map(str, files))} (empty result file{'s' if len(files) > 1 else ''})")
    return records


def iter_done_keys(path: Path) -> Iterator[str]:
    """Keys of cells already finished in ``path`` (for ``--resume``)."""
    if Path(path).exists():
        for rec in read(path):
            yield rec["key"]
