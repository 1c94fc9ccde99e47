"""CLI verbs: each module defines NAME, HELP, add_arguments(parser) and run(args) -> exit code."""
from __future__ import annotations

import tempfile
from pathlib import Path


def writable_folder(path: Path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and prove a file can be written there, before any work starts.

    Raises UserError (one line, exit 2) naming the folder and why, e.g. a read-only file system.
    """
    from ..errors import UserError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write there ({exc.strerror or type(exc).__name__})") from None
    return path


def int_option(flag: str, minimum: int = 1, maximum: int | None = None, odd: bool = False):  # type: ignore[no-untyped-def]
    """An argparse ``type`` for an integer flag in [minimum, maximum] (odd if asked; the largest seed
    when no maximum is given): bad text or a value out of range is a UserError naming the flag, so
    every command says it the same way."""
    from ..cells import MAX_SEED
    from ..errors import UserError

    maximum = MAX_SEED if maximum is None else maximum
    kind = f"{'an odd' if odd else 'an'} integer from {minimum} to {maximum if maximum < MAX_SEED else '2^63-1'}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"{flag} must be {kind}, got {text!r}") from None
        if not minimum <= value <= maximum or (odd and value % 2 == 0):
            raise UserError(f"{flag} must be {kind}, got {value}")
        return value

    return parse
