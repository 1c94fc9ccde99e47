"""The text of a mechanism spec: ``name[key=value,...]`` with plain values, parsed strictly.

Specs come from the command line and suite files, so anything but that exact shape is a one-line
UserError naming what to write instead; what the parameters mean is the plugin's business
(:mod:`attnbench.parameters`).
"""
from __future__ import annotations

import math
import re
from typing import Any

from .errors import UserError

#: a spec longer than this is refused (no mechanism needs more; it stops pathological inputs early)
MAX_SPEC_CHARS = 200
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z0-9_.+-]+")
_SPEC_HELP = "write name[key=value,...] with plain values, e.g. full[stride=2,similarity=dot]"


def _value(raw: str, key: str, spec: str) -> Any:
    """A parameter value: integer, finite float, true/false, none, a word or a quoted word."""
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        number = float(raw)
        if math.isfinite(number):
            return number
        raise UserError(f"bad value {raw!r} for {key} in mechanism spec {spec!r}: not a finite number")
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" and _WORD.fullmatch(raw[1:-1]):
        return raw[1:-1]
    if _WORD.fullmatch(raw):
        return raw
    raise UserError(f"bad value {raw!r} for {key} in mechanism spec {spec!r}; values are numbers, "
                    f"true/false, none or plain words ({_SPEC_HELP})")


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"full[stride=2]"`` -> ``("full", {"stride": 2})``; anything else than that shape is a UserError."""
    text = str(spec).strip()
    if len(text) > MAX_SPEC_CHARS:
        raise UserError(f"mechanism spec of {len(text)} characters (at most {MAX_SPEC_CHARS}): {text[:40]!r}...")
    name, bracket, rest = text.partition("[")
    inner = ""
    if bracket:
        if not rest.endswith("]") or "[" in rest[:-1] or "]" in rest[:-1]:
            raise UserError(f"bad mechanism spec {text!r}: one [...] at the end; {_SPEC_HELP}")
        inner = rest[:-1]
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise UserError(f"bad mechanism name {name!r} in spec {text!r}; {_SPEC_HELP}")
    params: dict[str, Any] = {}
    for item in (s.strip() for s in inner.split(",")):
        if not item:
            continue
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not eq or not _KEY.fullmatch(key):
            raise UserError(f"bad parameter {item!r} in mechanism spec {text!r}; {_SPEC_HELP}")
        if key in params:
            raise UserError(f"parameter {key!r} given twice in mechanism spec {text!r}")
        params[key] = _value(raw, key, text)
    return name, params


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs, keeping commas inside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]
