"""The Markdown report page (``report.md``): the same sections as the HTML page, as plain text
that renders on any code host, so a results folder can be read without a browser."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import pandas as pd

from .tables import to_markdown

CAPTION = ("Memory in GiB (2^30 bytes), work in GFLOP, time in seconds; the paper's figures (`paper` columns) "
           "are as published (memory in GB), shown only beside cells run at the paper's settings.")


def _figure_lines(suite: str, names: Sequence[str], formats: Sequence[str]) -> list[str]:
    lines = []
    for name in names:
        fmt = next((f for f in ("png", "svg") if f in formats), None)
        if fmt:
            lines.append(f"![{suite} {name}](plots/{suite}-{name}.{fmt})")
    return lines


def _example_lines(suite: str, examples: Sequence[tuple[str, Path]], out: Path) -> list[str]:
    """Copies each example image under ``out/examples/<suite>/`` and links it."""
    if not examples:
        return []
    lines = ["", f"Example outputs ({suite}):", ""]
    for caption, path in examples:
        target = out / "examples" / suite / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        lines.append(f"![{caption.replace('[', '(').replace(']', ')')}](examples/{suite}/{quote(path.name)})")
    return lines


def page(title: str, sources: Sequence[str], headline: Sequence[str], suites: Sequence[str],
         tables: Mapping[str, Sequence[pd.DataFrame]], settings: Mapping[str, Mapping[str, Any]],
         figures: Mapping[str, Sequence[str]], examples: Mapping[str, Sequence[tuple[str, Path]]],
         crossover: pd.DataFrame, env: pd.DataFrame, formats: Sequence[str], out: Path) -> str:
    """The whole page; ``figures`` names each suite's plots (written beside it by the caller)."""
    lines = [f"# {title}", "", f"From {', '.join(sources)}. {CAPTION}", ""]
    if headline:
        lines += ["## Summary", ""] + [f"- {h}" for h in headline] + [""]
    for s in suites:
        lines += [f"## {s}", "", "Settings: " + "; ".join(f"{k} {v}" for k, v in settings[s].items()), ""]
        lines += [to_markdown(t) for t in tables[s]]
        lines += _figure_lines(s, figures.get(s, ()), formats)
        lines += _example_lines(s, examples.get(s, ()), out)
        lines.append("")
    if not crossover.empty:
        lines += ["## Crossover", "", to_markdown(crossover), ""]
    lines += ["## Environment", "", env.to_markdown(index=False), ""]
    return "\n".join(lines)
