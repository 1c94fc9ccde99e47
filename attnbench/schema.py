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
                            what ran (measure/kernels.py): backend (str), kernels (list of {name,
                            self_time_us, share, calls}), kernels_device, kernels_note, backend_declared
                            and backend_note (when the profile contradicts the declared backend);
                            estimated_bytes_moved, achieved_flops_per_s, achieved_flops_pct,
                            achieved_flops_from, achieved_bytes_per_s, achieved_bandwidth_pct
                            beside the memory: peak_memory_source (allocator | rss | device),
                            peak_memory_allocator_bytes, peak_memory_rss_bytes / _device_bytes (+
                            _instrument), memory_outside_torch_bytes; beside the FLOPs:
                            flops_counted, flops_declared, flops_declared_by (see attnbench.metrics)
    env           dict      attnbench/plugin/torch/python versions, device, CPU, threads, commit
    started_at    str       ISO 8601 UTC; duration_s: float, wall time of the worker
    calibration   dict      values the run measured once for every cell (flops_per_s: the matmul
                            yardstick; bytes_per_s: the triad's memory bandwidth); not part of the key
    load          dict      how loaded the machine was (attnbench.load): loadavg_1m_start/_end,
                            steal_pct over the cell, cpus; absent in records written before it existed
    definition    dict      what the figures were measured under: {"runner": version of the runner's
                            measuring procedure, "mechanism": the mechanism's algorithm_version,
                            "measure": the shared instruments' version}
                            (attnbench/definition.py); ``--resume`` re-runs cells whose definition changed

Reading migrates every earlier version to this one (``MIGRATIONS``; tests/fixtures/ holds a file per
old version), so a results file stays readable when the schema moves on.
Every record has env, started_at and duration_s, whoever wrote it (the worker, or the executor
for a timeout, a kill or a crash).
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .cells import MODES, NOT_RECORDED, STATUSES, CellSpec, grid_keys, record_fields
from .errors import UserError

if TYPE_CHECKING:
    from .load import LoadMark

SCHEMA_VERSION = 2
#: fields of every record: the cell's own (CellSpec.record_fields, the one declaration), then the outcome
OUTCOME_TYPES: dict[str, tuple[type, ...]] = {"status": (str,), "reason": (str,), "metrics": (dict,), "env": (dict,)}
REQUIRED = ("schema", "key", "definition", *(f for f in record_fields() if f != "calibration"), *OUTCOME_TYPES)


def _from_v1(rec: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had no ``definition``: every such record was measured under the first one."""
    from .definition import FIRST_DEFINITION

    return {**rec, "schema": 2, "definition": dict(FIRST_DEFINITION)}


#: version -> the function that turns a record of that version into one of the next version
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _from_v1}


def migrate(rec: dict[str, Any]) -> dict[str, Any]:
    """A record of any earlier schema version as a record of this one (others are returned as they are)."""
    version = rec.get("schema")
    while isinstance(version, int) and not isinstance(version, bool) and version in MIGRATIONS:
        rec = MIGRATIONS[version](rec)
        version = rec.get("schema")
    return rec


def make_record(spec: CellSpec, status: str, reason: str = "", metrics: dict[str, Any] | None = None,
                env: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    from .definition import of_cell

    assert status in STATUSES, status
    rec: dict[str, Any] = {"schema": SCHEMA_VERSION, "key": spec.key, "definition": of_cell(spec)}
    rec.update({name: value for name, value in spec.to_dict().items() if name not in NOT_RECORDED})
    rec.update(status=status, reason=reason, metrics=dict(metrics or {}), env=dict(env or {}))
    rec.update(extra)
    return rec


def now_iso() -> str:
    """The ``started_at`` format of records: ISO 8601, UTC, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def outside_record(spec: CellSpec, status: str, reason: str, *, started_at: str, duration_s: float,
                   metrics: dict[str, Any] | None = None, load_start: "LoadMark | None" = None,
                   **extra: Any) -> dict[str, Any]:
    """A record made outside the worker (timeout, kill, crash) with the same fields as the worker's:
    the environment and the load are read here, in the process that ran the worker (``load_start``:
    the executor's reading when it started the cell; none: the load now, at both ends)."""
    from .env import capture
    from .load import load_record, mark

    now = mark()
    return make_record(spec, status, reason, metrics, capture(spec.device, spec.seed), started_at=started_at,
                       duration_s=round(duration_s, 3), load=load_record(load_start or now, now), **extra)


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


#: the JSON type each field must have (bool is never accepted as int); checked on every read
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (int,), "key": (str,), "definition": (dict,), "load": (dict,),
    **{name: (tp,) for name, tp in record_fields().items()}, **OUTCOME_TYPES,
}
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def check_record(rec: Any) -> str:
    """What is wrong with a parsed record (field types included), or "" when it is a valid record."""
    if not isinstance(rec, dict):
        return f"not an attnbench record (a JSON {_json_name(rec).split()[-1]}, not an object)"
    version = rec.get("schema")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return f"schema version {version} was written by a newer attnbench (this one reads 1-{SCHEMA_VERSION}); upgrade attnbench"
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
        return f"schema version {rec['schema']} is not one this attnbench reads (1-{SCHEMA_VERSION})"
    for key in grid_keys():
        if key.type is int and key.minimum == 1 and rec.get(key.field, 1) < 1:
            return f"field {key.field!r} must be a positive integer, got {rec[key.field]}"
    if rec["status"] not in STATUSES:
        return f"unknown status {rec['status']!r}; valid: {', '.join(STATUSES)}"
    if rec["mode"] not in MODES:
        return f"unknown mode {rec['mode']!r}; valid: {', '.join(MODES)}"
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
        rec = migrate(rec) if isinstance(rec, dict) else rec
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
