"""Records as a flat pandas DataFrame: one row per cell, identity fields, status and metrics as columns.

Tables, plots, compare and gate all start here, so that a cell means the same thing everywhere:
the last record of a key wins (a re-run or ``--resume`` replaces an earlier attempt), and a row
is labelled by its mechanism plus whatever else varies among the rows being shown.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

import pandas as pd

from .style import order_key

#: fields that make two records the same measurement (the cell's identity, without the key hash)
IDENTITY: tuple[str, ...] = ("suite", "preset", "mechanism", "params", "size", "channels", "patch_size",
                             "batch", "mode", "device", "dtype", "seed", "options")
#: identity fields that may label a row when they vary (suite/preset label tables, not rows)
ROW_FIELDS: tuple[str, ...] = ("channels", "patch_size", "batch", "device", "dtype", "seed", "options")
#: options that say which mechanism a network was trained with (substitution suite)
TRAINED_WITH_KEYS: tuple[str, ...] = ("trained_with", "train_mechanism", "train")


def mechanism_label(mechanism: str, params: dict[str, Any] | None) -> str:
    """``full`` + ``{"stride": 2}`` -> ``full[stride=2]`` (the registry's spelling)."""
    if not params:
        return mechanism
    inner = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{mechanism}[{inner}]"


def canonical(value: Any) -> str:
    """A dict or list as a stable string, so it can be compared and grouped on."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)


def latest(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per cell: the last one seen for each key, in order of first appearance."""
    by_key: dict[str, dict[str, Any]] = {}
    for rec in records:
        by_key[rec["key"]] = rec
    return list(by_key.values())


def trained_with(rec: dict[str, Any]) -> str | None:
    options = rec.get("options") or {}
    for k in TRAINED_WITH_KEYS:
        if options.get(k):
            return str(options[k])
    return None


SUBSTITUTED_PREFIX = "substituted_"


def expand_substitution(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A substitution record (network trained with X, tested with X and with ``metrics.substitute``
    swapped in, the latter's metrics prefixed ``substituted_``) -> two cells, as the paper's Table 8 rows."""
    out: list[dict[str, Any]] = []
    for rec in records:
        metrics = rec.get("metrics") or {}
        substitute = metrics.get("substitute")
        if not substitute or not any(k.startswith(SUBSTITUTED_PREFIX) for k in metrics):
            out.append(rec)
            continue
        options = dict(rec.get("options") or {}, trained_with=rec["mechanism"])
        own = {k: v for k, v in metrics.items() if not k.startswith(SUBSTITUTED_PREFIX)}
        swapped = {k[len(SUBSTITUTED_PREFIX):]: v for k, v in metrics.items() if k.startswith(SUBSTITUTED_PREFIX)}
        out.append(dict(rec, metrics=own, options=options))
        swapped_params = metrics.get("substituted_params_requested", {})
        if str(substitute) == rec["mechanism"] and swapped_params == (rec.get("params") or {}):
            continue  # X swapped into a network trained with X is the network itself: one row
        out.append(dict(rec, key=f"{rec['key']}:{substitute}", mechanism=str(substitute),
                        params=swapped_params, metrics=swapped, options=options))
    return out


def to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Flatten records into a DataFrame (metrics as columns; dicts kept plus a canonical string form)."""
    rows = []
    for rec in latest(expand_substitution(latest(records))):
        row: dict[str, Any] = {f: rec.get(f) for f in IDENTITY}
        row.update(key=rec["key"], status=rec["status"], reason=rec.get("reason", ""),
                   label=mechanism_label(rec["mechanism"], rec.get("params")),
                   params_str=canonical(rec.get("params") or {}), options_str=canonical(rec.get("options") or {}),
                   machine=machine_name(rec.get("env") or {}), schema=rec.get("schema"),
                   trained_with=trained_with(rec) or "")
        for name, value in (rec.get("metrics") or {}).items():
            row[name if name not in row else f"metric:{name}"] = value
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_order"] = df["label"].map(order_key)
    mode_rank = df["mode"].map({"fwd": 0, "fwd+bwd": 1}).fillna(2)
    df = df.assign(_mode=mode_rank).sort_values(["_order", "_mode", "size"], kind="stable")
    return df.drop(columns=["_order", "_mode"]).reset_index(drop=True)


def machine_name(env: dict[str, Any]) -> str:
    """The machine a record was measured on, as well as the environment says it."""
    for k in ("machine", "hostname", "node", "device_name", "cpu"):
        if env.get(k):
            return str(env[k])
    return "?"


def varying(df: pd.DataFrame, fields: Iterable[str]) -> list[str]:
    """The fields among ``fields`` that take more than one value in ``df``."""
    out = []
    for f in fields:
        col = f"{f}_str" if f"{f}_str" in df.columns else f
        if col in df.columns and df[col].astype(str).nunique(dropna=False) > 1:
            out.append(f)
    return out


def row_label(row: pd.Series, extra_fields: Sequence[str]) -> str:
    """Mechanism label plus the varying identity fields, e.g. ``psal-3 fwd+bwd C32``."""
    parts = [str(row["label"])]
    for f in extra_fields:
        v = row.get(f)
        if f == "options":  # runner options differ between presets: the preset names them briefly
            v = row.get("preset") or ",".join(f"{k}={x}" for k, x in sorted((row.get("options") or {}).items())) or "-"
        parts.append({"channels": f"C{v}", "batch": f"B{v}", "patch_size": f"p{v}", "seed": f"seed {v}",
                      "size": f"{v}px"}.get(f, str(v)))
    return " ".join(parts)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Columns of ``df`` that came from records' metrics."""
    fixed = set(IDENTITY) | {"key", "status", "reason", "label", "params_str", "options_str", "machine",
                             "schema", "trained_with"}
    return [c for c in df.columns if c not in fixed]


#: fields two cells must share to have been measured side by side (one run, one machine, one shape)
RUN_FIELDS: tuple[str, ...] = ("suite", "preset", "size", "channels", "patch_size", "batch", "mode", "device",
                               "dtype", "seed", "machine")


def is_reference(df: pd.DataFrame, reference: str) -> pd.Series:
    """Rows measuring the reference mechanism (``flash``: the name alone, or a full label)."""
    return (df["label"] == reference) | ((df["mechanism"] == reference) & (df["params_str"] == "{}"))


def reference_values(df: pd.DataFrame, reference: str, metric: str) -> pd.Series:
    """For each row, ``metric`` of the reference mechanism's ok cell measured alongside it (NaN if none)."""
    if df.empty or metric not in df.columns:
        return pd.Series(float("nan"), index=df.index)
    fields = [f for f in RUN_FIELDS if f in df.columns]
    keys = df[fields].astype(str).agg("|".join, axis=1)
    ref = df[is_reference(df, reference) & (df["status"] == "ok")]
    lookup = dict(zip(keys[ref.index], pd.to_numeric(ref[metric], errors="coerce")))
    return keys.map(lookup).astype(float)


_ENV_FIELDS: tuple[str, ...] = ("device_name", "cpu", "threads", "memory_total_bytes", "torch", "python",
                                "attnbench", "commit", "platform")


def environments(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Where the records were measured: one row per machine and software combination, with counts."""
    rows: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        env = rec.get("env") or {}
        values = {f: env.get(f) for f in _ENV_FIELDS}
        if values["memory_total_bytes"]:
            values["memory_total_bytes"] = f"{float(values['memory_total_bytes']) / 2**30:.1f} GiB"
        values["commit"] = str(values["commit"] or "")[:10] or None
        ident = (machine_name(env),) + tuple(str(v) for v in values.values())
        row = rows.setdefault(ident, {"machine": machine_name(env), **values, "records": 0, "suites": set()})
        row["records"] += 1
        row["suites"].add(rec.get("suite"))
    out = pd.DataFrame(list(rows.values()))
    if not out.empty:
        out["suites"] = out["suites"].map(lambda s: ", ".join(sorted(map(str, s))))
        out = out.rename(columns={"memory_total_bytes": "memory"}).dropna(axis=1, how="all")
    return out


def number(value: Any) -> float | None:
    """A metric as a float, or None when it is missing, not numeric or NaN."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x
