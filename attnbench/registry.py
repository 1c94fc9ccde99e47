"""Mechanism discovery through ``importlib.metadata`` entry points (group ``attnbench.mechanisms``).

Built-in plugins are registered exactly like a third-party package's: core code never imports a
plugin by name. A name resolves to an entry point either exactly (``full``) or as an entry point
plus a variant suffix that the plugin parses (``psal-3`` -> entry ``psal``, suffix ``3``).
Parameters can be attached in brackets: ``full[stride=2,similarity=dot]``.

Two distributions registering one name is an error naming both, never a silent pick; a plugin
that fails to import (whatever it raises, ``sys.exit`` included) is listed as unavailable.
:func:`validate_specs` checks every requested spec in the parent process, before any worker
starts: strict syntax, known parameters of the declared types (the constructor's signature),
then the constructor itself (its range checks), so bad input is one line and exit 2.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable, Optional, Union

from .errors import Unavailable, UnsupportedRequest, UserError
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


@dataclass(frozen=True)
class Parameter:
    """One constructor parameter of a mechanism: its name, accepted types (from the signature) and default."""

    name: str
    types: tuple[type, ...]  # accepted Python types; () when the signature does not say
    default: Any = None
    optional: bool = False  # None accepted

    def describe(self) -> str:
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a word"}
        names = [words.get(t, t.__name__) for t in self.types] + (["none"] if self.optional else [])
        return " or ".join(names) or "any value"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional or self.default is None or not self.types
        if not self.types:
            return isinstance(value, (bool, int, float, str))
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int):
            return int in self.types or float in self.types
        if isinstance(value, float):
            return float in self.types and math.isfinite(value)
        return isinstance(value, self.types)


def _types_of(hint: Any, default: Any) -> tuple[tuple[type, ...], bool]:
    if hint is inspect.Parameter.empty or hint is Any:
        if default is None or default is inspect.Parameter.empty:
            return (), default is None
        return (type(default),), False
    if typing.get_origin(hint) is Union or type(hint).__name__ == "UnionType":
        args = typing.get_args(hint)
        types = tuple(a for a in args if isinstance(a, type) and a is not type(None))
        return types, type(None) in args
    return ((hint,) if isinstance(hint, type) else ()), False


@functools.lru_cache(maxsize=None)
def parameters(cls: type[AttentionMechanism]) -> dict[str, Parameter]:
    """The keyword parameters a mechanism accepts, from its constructors' signatures.

    Follows the MRO while each ``__init__`` forwards ``**kwargs`` to its parent, down to
    :class:`AttentionMechanism` (``patch_size``, ``similarity``, ``temperature``).
    """
    found: dict[str, Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        init = vars(klass)["__init__"]
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 -- an unresolvable annotation: fall back to the defaults' types
            hints = {}
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # not introspectable: the constructor alone will judge
            break
        for p in list(signature.parameters.values())[1:]:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in found:
                default = None if p.default is p.empty else p.default
                types, optional = _types_of(hints.get(p.name, p.empty), p.default)
                found[p.name] = Parameter(p.name, types, default, optional)
        forwards = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        if klass is AttentionMechanism or not forwards:
            break
    return found


#: seeds reach torch.manual_seed and the kernels' 64-bit counters
MAX_SEED = 2**63 - 1


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
