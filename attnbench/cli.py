"""``attnbench`` command line (also ``python -m attnbench``): list | run | check | estimate | report | compare | gate.

Bad input (unknown mechanism or suite, bad size, unreadable file...) raises UserError, printed
here as one line on stderr with exit code 2 -- never a traceback. Ctrl-C, SIGTERM and SIGHUP
(runloop.Terminated) print one line saying what the command keeps; exit 130 (SIGHUP: 129).
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Optional, Sequence

from .errors import Unavailable, UserError

VERBS = ("list", "run", "check", "estimate", "report", "compare", "gate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="attnbench", description="Benchmark attention layers on images: memory, FLOPs, time, quality.")
    parser.add_argument("--version", action="version", version=f"attnbench {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    for verb in VERBS:
        try:
            module = importlib.import_module(f"attnbench.commands.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name != f"attnbench.commands.{verb}":
                raise
            continue
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _interrupted=getattr(module, "INTERRUPTED", ""))
    return parser


def closed_stdout() -> int:
    """The reader of stdout went away (``attnbench list | head``): stop quietly, as a POSIX tool
    killed by SIGPIPE would, instead of printing a BrokenPipeError traceback. Returns 141 (128 +
    SIGPIPE)."""
    try:  # the interpreter flushes stdout once more at exit: point it at /dev/null first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except (UserError, Unavailable) as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return closed_stdout()
    except KeyboardInterrupt as exc:
        what = getattr(args, "_interrupted", "")  # each command says what an interruption leaves behind
        signum = getattr(exc, "signum", None)  # runloop.Terminated: SIGTERM or SIGHUP
        how = f" ({signal.Signals(signum).name})" if signum else ""
        try:
            print(f"attnbench: interrupted{how}{'; ' + what if what else ''}", file=sys.stderr)
        except OSError:  # a hung-up terminal: the exit status still says it
            pass
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
