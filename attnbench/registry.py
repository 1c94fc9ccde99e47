"""Mechanism discovery through ``importlib.metadata`` entry points (group ``attnbench.mechanisms``).

Built-in plugins are registered exactly like a third-party package's: core code never imports a
plugin by name. A name resolves to an entry point either exactly (``full``) or as an entry point
plus a variant suffix that the plugin parses (``psal-3`` -> entry ``psal``, suffix ``3``).
Parameters can be attached in brackets: ``full[stride=2,similarity=dot]``.
"""
from __future__ import annotations

import ast
import functools
import inspect
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Optional

from .errors import Unavailable, UserError
from .interface import Availability, AttentionMechanism

GROUP = "attnbench.mechanisms"


@dataclass
class PluginInfo:
    """One entry point: where it comes from and whether it can run here."""

    name: str
    target: str
    distribution: str
    version: str
    cls: Optional[type[AttentionMechanism]] = None
    availability: Availability = field(default_factory=lambda: Availability(True))

    @property
    def variants(self) -> tuple[str, ...]:
        """Names this plugin is usually run under (``psal`` -> ``psal-1``, ``psal-3``, ...)."""
        return tuple(getattr(self.cls, "variants", ()) or (self.name,))

    @property
    def summary(self) -> str:
        return getattr(self.cls, "summary", "") if self.cls else ""


def _load(ep: EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    info = PluginInfo(
        name=ep.name,
        target=ep.value,
        distribution=dist.name if dist else "?",
        version=dist.version if dist else "?",
    )
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must never break the others
        info.availability = Availability(False, f"import failed: {type(exc).__name__}: {exc}".splitlines()[0])
        return info
    if not (isinstance(cls, type) and issubclass(cls, AttentionMechanism)):
        info.availability = Availability(False, f"{ep.value} is not an AttentionMechanism subclass")
        return info
    if not cls.name:
        cls.name = ep.name
    info.cls = cls
    try:
        info.availability = cls.availability()
    except Exception as exc:
        info.availability = Availability(False, f"availability check failed: {type(exc).__name__}: {exc}".splitlines()[0])
    return info


@functools.lru_cache(maxsize=1)
def plugins() -> dict[str, PluginInfo]:
    """All registered plugins by entry point name (loaded once per process)."""
    found: dict[str, PluginInfo] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        found.setdefault(ep.name, _load(ep))
    return found


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"full[stride=2]"`` -> ``("full", {"stride": 2})``."""
    spec = spec.strip()
    params: dict[str, Any] = {}
    if "[" in spec:
        if not spec.endswith("]"):
            raise UserError(f"bad mechanism spec {spec!r}; write name[key=value,...], e.g. full[stride=2]")
        spec, inner = spec[:-1].split("[", 1)
        for item in filter(None, (s.strip() for s in inner.split(","))):
            if "=" not in item:
                raise UserError(f"bad parameter {item!r} in mechanism spec; write key=value")
            key, raw = (s.strip() for s in item.split("=", 1))
            try:
                params[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                params[key] = raw
    return spec.strip(), params


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


def resolve(name: str) -> tuple[PluginInfo, dict[str, Any]]:
    """Find the plugin behind a (possibly variant) name and the parameters the name implies."""
    table = plugins()
    if name in table:
        return table[name], {}
    parts = name.split("-")
    for cut in range(len(parts) - 1, 0, -1):
        base, suffix = "-".join(parts[:cut]), "-".join(parts[cut:])
        info = table.get(base)
        if info is None or info.cls is None:
            continue
        try:
            return info, info.cls.parse_variant(suffix)
        except ValueError:
            continue
    valid = ", ".join(sorted(v for p in table.values() for v in p.variants))
    raise UserError(f"unknown mechanism {name!r}; valid: {valid} (see `attnbench list`)")


def mechanism(spec: str, *, default_seed: Optional[int] = None, **params: Any) -> AttentionMechanism:
    """Build a mechanism by name: ``mechanism("local", window=50)`` or ``mechanism("psal-3")``.

    ``default_seed`` (a cell's seed) reaches mechanisms that take a ``seed`` (stochastic ones,
    e.g. PSAL) unless the spec or ``params`` set one, so ``attnbench run --seed`` re-draws them.
    """
    name, spec_params = split_spec(spec)
    info, implied = resolve(name)
    if not info.availability.ok or info.cls is None:
        raise Unavailable(f"{name}: {info.availability}")
    chosen = {**implied, **spec_params, **params}
    if default_seed is not None and "seed" not in chosen and "seed" in inspect.signature(info.cls).parameters:
        chosen["seed"] = default_seed
    module = info.cls(**chosen)
    module.registry_name = name  # the name it was asked for, recorded in results
    return module


def plugin_versions() -> dict[str, str]:
    """``{entry point: "distribution version"}`` for the environment record."""
    return {name: f"{p.distribution} {p.version}" for name, p in plugins().items()}
