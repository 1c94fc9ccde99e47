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
