"""The parameters a mechanism's constructor takes, typed from its signature.

Why from the signature: a plugin declares its parameters once, as keyword arguments with
annotations and defaults, and ``name[key=value]`` specs, ``attnbench list --json`` and the
parent's up-front checks all read them from there; values are judged by the same rules as suite
options (:func:`attnbench.options.coerce`).
"""
from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Union

from .errors import UserError
from .interface import AttentionMechanism
from .options import coerce


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
        """Whether a spec's value fits: the runner options' own type rules (options.coerce) for plain
        types, isinstance for any other class."""
        if value is None:
            return self.optional or self.default is None or not self.types
        if not self.types:
            return isinstance(value, (bool, int, float, str))
        return any(_fits(value, tp) for tp in self.types)


def _fits(value: Any, tp: type) -> bool:
    if tp not in (bool, int, float, str):
        return isinstance(value, tp)
    try:
        coerce(value, tp, "value")
    except UserError:
        return False
    return True


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
