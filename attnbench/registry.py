"""Mechanism discovery through ``importlib.metadata`` entry points (group ``attnbench.mechanisms``).

Built-in plugins are registered exactly like a third-party package's: core code never imports a
plugin by name. A name resolves to an entry point either exactly (``full``) or as an entry point
plus a variant suffix that the plugin parses (``psal-3`` -> entry ``psal``, suffix ``3``).
Parameters can be attached in brackets: ``full[stride=2,similarity=dot]`` (their syntax:
:mod:`attnbench.specs`; their types, from the constructors' signatures: :mod:`attnbench.parameters`).

Two distributions registering one name is an error naming both, never a silent pick; a plugin
that fails to import (whatever it raises, ``sys.exit`` included) is listed as unavailable.
:func:`validate_specs` checks every requested spec in the parent process, before any worker
starts: strict syntax, known parameters of the declared types (the constructor's signature),
then the constructor itself (its range checks), so bad input is one line and exit 2.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable, Optional

from .cells import MAX_SEED
from .errors import Unavailable, UnsupportedRequest, UserError
from .interface import Availability, AttentionMechanism
from .parameters import parameters
from .specs import split_spec

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
    #: every "distribution version (target)" registering this name, when more than one does
    claimants: tuple[str, ...] = ()

    @property
    def conflict(self) -> str:
        """Why this name cannot be used (several distributions claim it), or "" when it can."""
        if len(self.claimants) < 2:
            return ""
        return (f"mechanism name {self.name!r} is registered by {len(self.claimants)} distributions: "
                f"{'; '.join(self.claimants)}; uninstall one of them")

    @property
    def variants(self) -> tuple[str, ...]:
        """Names this plugin is usually run under (``psal`` -> ``psal-1``, ``psal-3``, ...)."""
        variants = getattr(self.cls, "variants", ()) or (self.name,)
        if not isinstance(variants, (tuple, list)) or not all(isinstance(v, str) for v in variants):
            return (self.name,)  # a malformed declaration must not break listing the others
        return tuple(variants)

    @property
    def summary(self) -> str:
        return str(getattr(self.cls, "summary", "") or "") if self.cls else ""


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
    except BaseException as exc:  # noqa: BLE001 -- a broken plugin (even one calling sys.exit) never breaks the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.availability = Availability(False, f"import failed: {_describe(exc)}")
        return info
    if not (isinstance(cls, type) and issubclass(cls, AttentionMechanism)):
        info.availability = Availability(False, f"{ep.value} is not an AttentionMechanism subclass")
        return info
    if not cls.name:
        cls.name = ep.name
    info.cls = cls
    try:
        availability = cls.availability()
        if not isinstance(availability, Availability):
            raise TypeError(f"availability() returned {type(availability).__name__}, not Availability")
        info.availability = availability
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.availability = Availability(False, f"availability check failed: {_describe(exc)}")
    return info


def _describe(exc: BaseException) -> str:
    """``SystemExit: 3`` -- the exception on one line, whatever it is."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"[:300]


def _claimant(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name if dist else '?'} {dist.version if dist else '?'} ({ep.value})"


@functools.lru_cache(maxsize=1)
def plugins() -> dict[str, PluginInfo]:
    """All registered plugins by entry point name (loaded once per process).

    A name registered by several distributions loads none of them: its ``conflict`` names them all.
    """
    by_name: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        claims = by_name.setdefault(ep.name, [])
        if all(_claimant(ep) != _claimant(other) for other in claims):
            claims.append(ep)
    found: dict[str, PluginInfo] = {}
    for name in sorted(by_name):
        claims = by_name[name]
        if len(claims) == 1:
            found[name] = _load(claims[0])
            continue
        info = PluginInfo(name=name, target=" | ".join(ep.value for ep in claims),
                          distribution=" | ".join(_claimant(ep).split(" (")[0] for ep in claims), version="",
                          claimants=tuple(sorted(_claimant(ep) for ep in claims)))
        info.availability = Availability(False, info.conflict)
        found[name] = info
    return found


def conflicts() -> list[str]:
    """One message per mechanism name that several distributions register, or that one registers
    while it is also a variant name of another plugin (``psal-3``)."""
    table = plugins()
    found = [info.conflict for info in table.values() if info.conflict]
    found += [msg for name in table if (msg := _shadowing(table, name))]
    return found


def _shadowing(table: dict[str, PluginInfo], name: str) -> str:
    """Why entry point ``name`` is ambiguous because another plugin parses it as its variant, or ""."""
    parts = name.split("-")
    for cut in range(len(parts) - 1, 0, -1):
        base = table.get("-".join(parts[:cut]))
        if base is None or base.cls is None or base.name == name:
            continue
        try:
            base.cls.parse_variant("-".join(parts[cut:]))
        except Exception:  # noqa: BLE001 -- not a variant of this plugin
            continue
        own = table[name]
        return (f"mechanism name {name!r} is an entry point of {own.distribution} {own.version} ({own.target}) "
                f"and a variant of {base.name!r} from {base.distribution} {base.version}; uninstall one of them")
    return ""


def resolve(name: str) -> tuple[PluginInfo, dict[str, Any]]:
    """Find the plugin behind a (possibly variant) name and the parameters the name implies."""
    table = plugins()
    if name in table:
        info, implied = table[name], {}
        shadowing = _shadowing(table, name)
        if shadowing:
            raise UserError(shadowing)
    else:
        info, implied = _variant(table, name)
    if info.conflict:
        raise UserError(info.conflict)
    return info, implied


def _variant(table: dict[str, PluginInfo], name: str) -> tuple[PluginInfo, dict[str, Any]]:
    parts = name.split("-")
    for cut in range(len(parts) - 1, 0, -1):
        base, suffix = "-".join(parts[:cut]), "-".join(parts[cut:])
        info = table.get(base)
        if info is None:
            continue
        if info.conflict:
            return info, {}
        if info.cls is None:
            continue
        try:
            implied = info.cls.parse_variant(suffix)
        except Exception:  # noqa: BLE001 -- ValueError says "not my variant"; a buggy parser says the same
            continue
        if isinstance(implied, dict):
            return info, implied
    valid = ", ".join(sorted(v for p in table.values() for v in p.variants))
    raise UserError(f"unknown mechanism {name!r}; valid: {valid} (see `attnbench list`)")




def _check_seed(seed: Any, what: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{what} must be an integer from 0 to 2^63-1, got {seed!r}"[:300])


def _chosen(info: PluginInfo, implied: dict[str, Any], params: dict[str, Any],
            default_seed: Optional[int]) -> dict[str, Any]:
    chosen = {**implied, **params}
    if default_seed is not None and "seed" not in chosen and "seed" in inspect.signature(info.cls).parameters:
        chosen["seed"] = default_seed
    return chosen


def check_spec(name: str, params: dict[str, Any], seed: Optional[int] = None) -> None:
    """Raise UserError unless ``name`` with ``params`` builds: known name, known parameters of the
    declared types, accepted by the constructor. Unavailable plugins are not built (their cells
    are recorded ``unavailable``)."""
    label = f"{name}[{','.join(f'{k}={v}' for k, v in params.items())}]" if params else name
    info, implied = resolve(name)
    if seed is not None:
        _check_seed(seed, "--seed")
    if not info.availability.ok or info.cls is None:
        return
    declared = parameters(info.cls)
    for key, value in {**implied, **params}.items():
        if key not in declared:
            raise UserError(f"{label}: unknown parameter {key!r}; {info.name} takes: {', '.join(sorted(declared))}")
        if not declared[key].accepts(value):
            raise UserError(f"{label}: {key} must be {declared[key].describe()}, got {value!r}"[:300])
    if "seed" in params:
        _check_seed(params["seed"], f"{label}: seed")
    try:
        info.cls(**_chosen(info, implied, params, seed))
    except (UnsupportedRequest, ValueError, TypeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{label}: {text}"[:300]) from None
    except BaseException as exc:  # noqa: BLE001 -- a broken plugin is not bad input: its cells record why
        if isinstance(exc, KeyboardInterrupt):
            raise


def validate_specs(specs: Iterable[Any]) -> None:
    """Check every mechanism spec (strings, or cells with ``mechanism``, ``params``, ``seed``) in this
    process, so that bad input is one line and exit 2 before any worker starts."""
    seen: set[str] = set()
    for spec in specs:
        if isinstance(spec, str):
            name, params, seed = *split_spec(spec), None
        else:
            name, params, seed = spec.mechanism, dict(spec.params), spec.seed
        ident = repr((name, sorted(params.items(), key=lambda kv: kv[0]), seed))
        if ident not in seen:
            seen.add(ident)
            check_spec(name, params, seed)


def mechanism(spec: str, *, default_seed: Optional[int] = None, **params: Any) -> AttentionMechanism:
    """Build a mechanism by name: ``mechanism("local", window=50)`` or ``mechanism("psal-3")``.

    ``default_seed`` (a cell's seed) reaches mechanisms that take a ``seed`` (stochastic ones,
    e.g. PSAL) unless the spec or ``params`` set one, so ``attnbench run --seed`` re-draws them.
    """
    name, spec_params = split_spec(spec)
    info, implied = resolve(name)
    if not info.availability.ok or info.cls is None:
        raise Unavailable(f"{name}: {info.availability}")
    module = info.cls(**_chosen(info, implied, {**spec_params, **params}, default_seed))
    module.registry_name = name  # the name it was asked for, recorded in results
    return module


def plugin_versions() -> dict[str, str]:
    """``{entry point: "distribution version"}`` for the environment record."""
    return {name: f"{p.distribution} {p.version}" for name, p in plugins().items()}
