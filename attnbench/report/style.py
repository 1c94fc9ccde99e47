"""One look for every table and plot: a fixed colour, marker and row order per mechanism, and number formats.

Colours and markers are a fixed mapping so that PSAL-3 is the same colour in every plot of every report;
mechanisms not listed (third-party plugins) get a colour derived from their name, stable across runs.
"""
from __future__ import annotations

import colorsys
import hashlib

from ..metrics import GIB, seconds, sig  # noqa: F401  (one number style everywhere)

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
    "efficient": "#e6a03c",
    "performer": "#9467bd",
    "reformer": "#e377c2",
    "psal-1": "#a6761d",
    "psal-3": "#2ca02c",
    "psal-7": "#bcbd22",
    "psal-15": "#17a768",
    "psal-31": "#1d5e20",
    "psal-aggreg": "#d62728",
    "psal": "#2ca02c",
    "knn-exact": "#7f7f7f",
}
#: markers of the known mechanisms (variants with parameters get one derived from their full name)
_MARKERS: dict[str, str] = {
    "full": "o", "flash": "s", "flash-xformers": "p", "local": "^", "linear": "v", "efficient": "<",
    "performer": "D", "reformer": "P", "psal-1": "X", "psal-3": "*", "psal-7": ">", "psal-15": "h",
    "psal-31": "H", "psal-aggreg": "d", "psal": "*", "knn-exact": "8",
}
_MARKER_POOL = ("o", "s", "^", "v", "<", ">", "D", "P", "X", "*", "h", "H", "d", "8", "p")


def _digest(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


def colour(mechanism: str) -> str:
    """The colour of a mechanism (by its registry name, parameters ignored) in every plot.

    Pass the record's ``mechanism`` (or a ``name[params]`` label), never a row label carrying
    other words: the colour is a function of the name alone, so it is the same in every plot.
    Mechanisms not in the fixed map (third-party plugins) get a hue derived from their name.
    """
    base = mechanism.split("[", 1)[0].strip()
    if base in _COLOURS:
        return _COLOURS[base]
    digest = _digest(base)
    hue = (digest % 360) / 360.0
    r, g, b = colorsys.hls_to_rgb(hue, 0.42 + (digest >> 9) % 3 * 0.08, 0.65)
    return "#{:02x}{:02x}{:02x}".format(int(r * 255), int(g * 255), int(b * 255))


def marker(mechanism: str) -> str:
    """The marker of a mechanism label (``full`` and ``full[stride=2]`` differ, share the colour)."""
    name = mechanism.strip()
    if name in _MARKERS:
        return _MARKERS[name]
    base = name.split("[", 1)[0]
    pool = [m for m in _MARKER_POOL if m != _MARKERS.get(base)]
    return pool[_digest(name) % len(pool)]


def order_key(mechanism: str) -> tuple[int, str]:
    """Sort key putting mechanisms in the paper's order, unknown ones after, alphabetically."""
    base = mechanism.split("[", 1)[0]
    try:
        return MECHANISM_ORDER.index(base), mechanism
    except ValueError:
        return len(MECHANISM_ORDER), mechanism


def gib(nbytes: float | None) -> str:
    """Bytes as GiB with three significant digits (no unit)."""
    return sig(None if nbytes is None else nbytes / GIB)
