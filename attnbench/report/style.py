"""One look for every table and plot: a fixed colour and row order per mechanism, and number formats.

Colours are a fixed mapping so that PSAL-3 is the same colour in every plot of every report;
mechanisms not listed (third-party plugins) get a colour derived from their name, stable across runs.
"""
from __future__ import annotations

import hashlib
import math

#: paper order first, then the modern baselines, then PSAL variants
MECHANISM_ORDER: tuple[str, ...] = (
    "full", "flash", "flash-xformers", "local", "linear", "efficient", "performer", "reformer",
    "psal-1", "psal-3", "psal-7", "psal-15", "psal-31", "psal-aggreg", "psal", "knn-exact",
)

_COLOURS: dict[str, str] = {
    "full": "#1f77b4",
    "flash": "#17becf",
    "flash-xformers": "#0e6e78",
    "local": "#ff7f0e",
    "linear": "#8c564b",
    "efficient": "#c49c94",
    "performer": "#9467bd",
    "reformer": "#e377c2",
    "psal-1": "#98df8a",
    "psal-3": "#2ca02c",
    "psal-7": "#5aa02c",
    "psal-15": "#3a7d2c",
    "psal-31": "#1d5e20",
    "psal-aggreg": "#d62728",
    "psal": "#2ca02c",
    "knn-exact": "#7f7f7f",
}
_FALLBACK = ("#bcbd22", "#aec7e8", "#ffbb78", "#ff9896", "#c5b0d5", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939")


def colour(mechanism: str) -> str:
    """The colour of a mechanism (by its name without parameters) in every plot."""
    base = mechanism.split("[", 1)[0]
    if base in _COLOURS:
        return _COLOURS[base]
    digest = int(hashlib.sha1(base.encode()).hexdigest(), 16)
    return _FALLBACK[digest % len(_FALLBACK)]


def order_key(mechanism: str) -> tuple[int, str]:
    """Sort key putting mechanisms in the paper's order, unknown ones after, alphabetically."""
    base = mechanism.split("[", 1)[0]
    try:
        return MECHANISM_ORDER.index(base), mechanism
    except ValueError:
        return len(MECHANISM_ORDER), mechanism


GIB = float(1 << 30)


def sig(x: float | None, digits: int = 3) -> str:
    """A number with a few significant digits, as a person would write it in a table."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def gib(nbytes: float | None) -> str:
    return sig(None if nbytes is None else nbytes / GIB)


def seconds(t: float | None) -> str:
    """A duration with a unit that keeps it readable (µs, ms, s)."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "—"
    if t < 1e-3:
        return f"{sig(t * 1e6)} µs"
    if t < 1:
        return f"{sig(t * 1e3)} ms"
    return f"{sig(t)} s"
