"""Records as a flat pandas DataFrame: one row per cell, identity fields, status and metrics as columns.

Tables, plots, compare and gate all start here, so that a cell means the same thing everywhere:
the last record of a key wins (a re-run or ``--resume`` replaces an earlier attempt), and a row
is labelled by its mechanism plus whatever else varies among the rows being shown.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import pandas as pd

from ..cells import MODES, identity_fields
from ..definition import FIRST_DEFINITION
from ..metrics import as_number
from .machine import timing_identity
from .style import order_key

#: fields that make two records the same measurement (the cell's identity, without the key hash)
IDENTITY: tuple[str, ...] = identity_fields()
#: identity fields that may label a row when they vary (suite/preset label tables, not rows); ``data``
#: (where the images came from) is derived from the options, so runs on different data never share a row
ROW_FIELDS: tuple[str, ...] = ("data", "channels", "patch_size", "batch", "device", "dtype", "seed", "options")
#: option keys that name the images a task ran on (a --data folder, one photograph, an image pair)
DATA_OPTIONS: tuple[str, ...] = ("data", "photo", "query_image", "key_image")
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


def data_source(rec: dict[str, Any]) -> str:
    """Where a cell's images came from: ``embedded`` (the package's pairs), or the folder, photo or image
    named in its options (``folder davis``, ``photo rocket``). Cells without images say ``synthetic``."""
    options = rec.get("options") or {}
    for key in DATA_OPTIONS:
        if options.get(key):
            name = str(options[key]).rstrip("/").rsplit("/", 1)[-1]
            return {"data": "folder", "photo": "photo"}.get(key, "image") + f" {name}"
    if rec.get("suite") in ("memory", "speed") or rec.get("runner", "").endswith("microbench:run"):
        return "synthetic"
    return "embedded"


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


#: options that records written before the calibration field existed carry (the matmul yardstick): they differ run to run and are
#: no part of what a cell measured, so rows never differ by them
CALIBRATION_OPTIONS: frozenset[str] = frozenset({"flops_per_s"})


def to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Flatten records into a DataFrame (metrics as columns; dicts kept plus a canonical string form)."""
    rows = []
    for rec in latest(expand_substitution(latest(records))):
        rec = dict(rec, options={k: v for k, v in (rec.get("options") or {}).items() if k not in CALIBRATION_OPTIONS})
        row: dict[str, Any] = {f: rec.get(f) for f in IDENTITY}
        row.update(key=rec["key"], status=rec["status"], reason=rec.get("reason", ""),
                   label=mechanism_label(rec["mechanism"], rec.get("params")),
                   params_str=canonical(rec.get("params") or {}), options_str=canonical(rec.get("options") or {}),
                   machine=machine_name(rec.get("env") or {}), schema=rec.get("schema"),
                   definition=canonical(rec.get("definition") or FIRST_DEFINITION),
                   timing_env=json.dumps(timing_identity(rec.get("env") or {}), sort_keys=True),
                   trained_with=trained_with(rec) or "", data=data_source(rec), **load_columns(rec))
        for name, value in (rec.get("metrics") or {}).items():
            row[name if name not in row else f"metric:{name}"] = value
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_order"] = df["label"].map(order_key)
    mode_rank = df["mode"].map({mode: rank for rank, mode in enumerate(MODES)}).fillna(len(MODES))
    df = df.assign(_mode=mode_rank).sort_values(["_order", "_mode", "size"], kind="stable")
    return df.drop(columns=["_order", "_mode"]).reset_index(drop=True)


#: columns every row gets from its record's ``load`` (attnbench.load): loaded is True, False or None (not recorded)
LOAD_COLUMNS: tuple[str, ...] = ("loaded", "load_peak", "load_cpus")


def load_columns(rec: dict[str, Any]) -> dict[str, Any]:
    """``loaded`` (more runnable threads than CPUs; None: the record has no load), the peak 1-minute
    load average and the CPUs it is compared with."""
    from ..load import is_loaded, peak_load

    load = rec.get("load")
    return {"loaded": is_loaded(load), "load_peak": peak_load(load),
            "load_cpus": load.get("cpus") if isinstance(load, dict) else None}


def loaded_rows(df: pd.DataFrame) -> pd.Series:
    """Rows measured with more runnable threads than CPUs (False where the load is not recorded)."""
    if "loaded" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["loaded"].map(lambda v: v is True)


def load_unknown(df: pd.DataFrame) -> pd.Series:
    """Rows whose record does not say how loaded the machine was (written before records carried it)."""
    if "loaded" not in df.columns:
        return pd.Series(True, index=df.index)
    return df["loaded"].map(lambda v: v is None or (isinstance(v, float) and v != v))


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
        if f == "options" and "options" in df.columns:  # options that only name the data: told by ``data``
            values = df["options"].map(lambda o: canonical({k: v for k, v in (o or {}).items() if k not in DATA_OPTIONS}))
            if values.nunique(dropna=False) > 1:
                out.append(f)
            continue
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
                      "size": f"{v}px", "data": f"on {v}"}.get(f, str(v)))
    return " ".join(parts)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Columns of ``df`` that came from records' metrics."""
    fixed = set(IDENTITY) | {"key", "status", "reason", "label", "params_str", "options_str", "machine",
                             "timing_env", "schema", "definition", "trained_with", "data"} | set(LOAD_COLUMNS)
    return [c for c in df.columns if c not in fixed]


#: fields two cells must share to have been measured side by side (one run, one machine, one shape)
RUN_FIELDS: tuple[str, ...] = ("suite", "preset", "size", "channels", "patch_size", "batch", "mode", "device",
                               "dtype", "seed", "machine", "data")
#: fields that identify a cell when record keys differ (a suite gained an option, a preset was renamed)
LOOSE_IDENTITY: tuple[str, ...] = ("suite", "label", "size", "channels", "patch_size", "batch", "mode",
                                   "device", "dtype")


def match_cells(base: pd.DataFrame, cur: pd.DataFrame) -> list[tuple[int, int | None]]:
    """Pairs (row of ``base``, row of ``cur`` or None) measuring the same cell: by key, else by the
    loose identity when exactly one row of ``cur`` has it. Gate and compare join two runs with this."""
    by_key = {k: i for i, k in zip(cur.index, cur["key"])}
    loose = lambda df, i: tuple(str(df.at[i, f]) for f in LOOSE_IDENTITY)  # noqa: E731
    used = set()
    pairs: list[tuple[int, int | None]] = []
    unmatched = []
    for i, key in zip(base.index, base["key"]):
        if key in by_key:
            pairs.append((i, by_key[key]))
            used.add(by_key[key])
        else:
            unmatched.append(i)
    candidates: dict[tuple, list[int]] = {}
    for j in cur.index:
        if j not in used:
            candidates.setdefault(loose(cur, j), []).append(j)
    for i in unmatched:
        found = candidates.get(loose(base, i), [])
        pairs.append((i, found[0] if len(found) == 1 else None))
        if len(found) == 1:
            used.add(found[0])
    return pairs


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
    return as_number(value)


#: what a section's settings line names, in this order: (field, how it is written)
_SETTING_NAMES: tuple[tuple[str, str], ...] = (("size", "sizes"), ("channels", "C"), ("patch_size", "p"),
                                               ("batch", "batch"), ("mode", "mode"), ("dtype", "dtype"),
                                               ("device", "device"), ("data", "data"), ("preset", "preset"))


def settings(df: pd.DataFrame) -> dict[str, str]:
    """The grid that was actually run, from the records themselves (never from a preset's name):
    ``{"sizes": "64, 128 px", "C": "16", "p": "7", "mode": "fwd", ...}``."""
    out: dict[str, str] = {}
    if df.empty:
        return out
    for field, name in _SETTING_NAMES:
        if field not in df.columns:
            continue
        values = sorted({v for v in df[field].dropna()}, key=lambda v: (isinstance(v, str), v))
        text = ", ".join(str(v) for v in values)
        out[name] = f"{text} px" if field == "size" else text
    return out


def caption(df: pd.DataFrame, sizes: bool = True) -> str:
    """The settings as one short line for a table or plot title: ``64-512 px, C=16, p=7, fwd, float32, cpu``."""
    s = settings(df)
    ran = sorted({int(v) for v in df["size"]}) if sizes and "size" in df.columns and not df.empty else []
    parts = []
    if ran:
        parts.append(f"{ran[0]} px" if len(ran) == 1 else f"{ran[0]}-{ran[-1]} px")
    for name in ("C", "p"):
        if s.get(name):
            parts.append(f"{name}={s[name]}")
    for name in ("mode", "dtype", "device"):
        if s.get(name):
            parts.append(s[name])
    if s.get("data"):
        parts.append(f"data: {s['data']}")
    return ", ".join(parts)


#: resolved parameters a table leaves out (shown in the settings line, or the same for every row)
_QUIET_PARAMS: frozenset[str] = frozenset({"patch_size", "seed", "backend", "schedule"})
_DEFAULT_PARAMS: dict[str, Any] = {"temperature": 1.0, "similarity": "l2", "aggregation": False}


def params_text(row: pd.Series) -> str:
    """The parameters a row actually ran with (the mechanism's resolved ones), e.g. ``k=3, iterations=5``:
    so that ``knn-exact`` with k=1 is not mistaken for the ceiling of ``psal-3``."""
    resolved = row.get("resolved_params")
    params = dict(resolved) if isinstance(resolved, dict) else dict(row.get("params") or {})
    shown = {k: v for k, v in sorted(params.items())
             if k not in _QUIET_PARAMS and _DEFAULT_PARAMS.get(k, object()) != v and v is not None}
    return ", ".join(f"{k}={v}" for k, v in shown.items())
