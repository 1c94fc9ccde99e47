"""The terminal, one way for every verb: rich when it is a terminal, plain full-width rows when piped.

Why one place: a table that rich squeezes to 80 columns in a CI log or a pipe breaks names and
numbers mid-word, and ``NO_COLOR`` (https://no-color.org) must turn off every style, bold and
italic included, not only colours. Text from records and plugins (labels, reasons) is printed
through :func:`plain` or ``rich.text.Text``, never as markup, so ``psal[k=[/x]]`` prints as typed.
"""
from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape

#: width used when the output is not a terminal: wide enough that no table row wraps
PIPE_WIDTH = 1000

__all__ = ["PIPE_WIDTH", "escape", "make_console", "no_color", "plain"]


#: the style of each cell status wherever one is printed (the run's progress lines, report tables):
#: green done, yellow skipped as too big or slow, dim a final "cannot run here", red failed
STATUS_STYLE = {"ok": "green", "infeasible": "yellow", "unavailable": "dim", "unsupported": "dim", "not run": "dim",
                "oom": "red", "timeout": "red", "killed": "red", "error": "bold red"}


def no_color() -> bool:
    """``NO_COLOR`` set to anything non-empty (the convention's rule)."""
    return bool(os.environ.get("NO_COLOR"))


class _Console(Console):
    """rich's Console, except when stdout's reader has gone (``attnbench list | head``): rich would
    exit 1, which `attnbench gate` uses for "regression"; this hands the
    BrokenPipeError to ``cli.main``, which exits quietly with 141 as a command killed by SIGPIPE."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def make_console(stderr: bool = False) -> Console:
    """A console for stdout (results) or stderr (progress, warnings).

    On a terminal: rich's own width and styles. Piped or redirected: no styles and no wrapping
    (a very wide virtual width, soft-wrapped lines). ``NO_COLOR``: no escape codes at all, so no
    bold or italic either (``color_system=None`` makes rich render styles as plain text).
    """
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return _Console(file=stream, color_system=None if no_color() else "auto", highlight=not no_color())
    return _Console(file=stream, color_system=None, force_terminal=False, width=PIPE_WIDTH, soft_wrap=True,
                   highlight=False, emoji=False)


def plain(text: object) -> str:
    """Record or plugin text made safe to embed in markup (``[`` is never read as a style tag)."""
    return escape(str(text))
