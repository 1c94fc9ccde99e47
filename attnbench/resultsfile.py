"""The results file of one run: checked before any cell, held exclusively, appended safely.

Why: a run must never lose a finished cell nor corrupt the file. So, before any worker starts,
:meth:`ResultsFile.open` checks that ``--out`` can be written (one-line error, exit 2, otherwise),
takes an exclusive lock (``fcntl.flock`` on a hidden ``.NAME.lock`` beside the file, holding the
owner's PID: a second run on the same file is refused, naming it), and then either

* resumes: drops a torn last line (announced), refuses a corrupt complete line (with its line
  number) and a file of another suite's records, and collects the cells already finished (the last record of each key; ``error``,
  ``timeout`` and ``killed`` cells are run again unless ``keep_failed``), or
* starts over: moves an existing results file aside to ``NAME.<time>.prev`` (announced) after
  checking it is an attnbench file (anything else is refused, never moved).

:meth:`append` writes one record and fsyncs it; a write error (disk full) truncates the partial
line and raises :class:`ResultsWriteError`, so every complete record stays readable.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .cells import FAILED_STATUSES, FINAL_STATUSES
from .schema import migrate
from .errors import UserError


class ResultsWriteError(Exception):
    """A record could not be written (disk full, I/O error): the run stops, keeping what it wrote."""


def _why(exc: OSError) -> str:
    return exc.strerror or (errno.errorcode.get(exc.errno or 0, "") if exc.errno else "") or str(exc)


class ResultsFile:
    """An open, locked results file (JSON Lines). Use :meth:`open`; :meth:`close` releases it."""

    def __init__(self, path: Path, lock_fd: int, done: dict[str, str], notes: list[str],
                 definitions: Optional[dict[str, Any]] = None):
        self.path = path
        self._lock_fd: Optional[int] = lock_fd
        #: key -> status of the finished cells a resumed run may skip
        self.done = done
        #: key -> the definition each of those was measured under
        self.definitions = dict(definitions or {})
        #: what opening did that a user should know (torn line dropped, old file moved aside)
        self.notes = notes
        self.written = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: Path, resume: bool = False, keep_failed: bool = False,
             note: Callable[[str], None] = lambda _msg: None, suite: Optional[str] = None) -> "ResultsFile":
        """Check, lock and prepare ``path`` for appending (UserError when it cannot be used; with
        ``suite``, resuming a file that holds another suite's records is refused)."""
        path = Path(path)
        notes: list[str] = []

        def say(msg: str) -> None:
            notes.append(msg)
            note(msg)

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {path}: cannot create folder {path.parent}: {_why(exc)}") from None
        try:
            path.exists()
        except OSError as exc:  # e.g. a name too long
            raise UserError(f"--out {path}: {_why(exc)}") from None
        if path.exists() and not path.is_file():
            raise UserError(f"--out {path}: not a regular file; give a folder or a .jsonl file")
        lock_fd = _lock(path)
        try:
            done: dict[str, str] = {}
            definitions: dict[str, Any] = {}
            if resume and path.exists():
                done, definitions = _resume_state(path, keep_failed, say, suite)
            elif path.exists() and path.stat().st_size > 0:
                _check_is_results(path)
                backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.prev")
                try:
                    path.rename(backup)
                except OSError as exc:
                    raise UserError(f"--out {path}: cannot move the previous results aside: {_why(exc)}") from None
                say(f"previous results moved to {backup} (use --resume to continue them instead)")
            try:
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise UserError(f"--out {path}: cannot write: {_why(exc)}") from None
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, lock_fd, done, notes, definitions)

    def todo(self, cells: list[Any], note: Callable[[str], None] = lambda _msg: None) -> list[Any]:
        """The cells still to run: not finished in the file, or finished under another definition
        (a runner or algorithm change: the old figure no longer answers the cell; said once)."""
        from .definition import difference, of_cell

        todo, changed = [], []
        for cell in cells:
            if cell.key not in self.done:
                todo.append(cell)
                continue
            what = difference(self.definitions.get(cell.key), of_cell(cell))
            if what:
                todo.append(cell)
                changed.append(f"{cell.label} ({what})")
        if changed:
            note(f"{len(changed)} finished cell(s) were measured under another definition and run again: "
                 + "; ".join(changed[:3]) + (" ..." if len(changed) > 3 else ""))
        return todo

    # ------------------------------------------------------------------ writing
    def append(self, record: dict[str, Any]) -> None:
        """Append one record and fsync it; on failure leave the file as it was and raise ResultsWriteError."""
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ResultsWriteError(f"cannot open {self.path}: {_why(exc)}") from None
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)  # no torn line left behind
                except OSError:
                    pass
                raise ResultsWriteError(f"cannot write to {self.path}: {_why(exc)}") from None
        finally:
            os.close(fd)
        self.written += 1

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _lock(path: Path) -> int:
    """Take the run's exclusive lock on ``path`` (its PID written in the lock file), or UserError."""
    where = lock_path(path)
    try:
        fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write in {path.parent}: {_why(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"--out {path} is in use by another attnbench run (PID {holder}); "
                        "wait for it to finish or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)  # also proves the folder's disk takes writes
    except OSError as exc:
        os.close(fd)
        raise UserError(f"--out {path}: cannot write in {path.parent}: {_why(exc)}") from None
    return fd


def _check_is_results(path: Path) -> None:
    """Refuse to move aside (or append to) a file that is not attnbench results."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot read: {_why(exc)}") from None
    try:
        rec = json.loads(first)
        ok = isinstance(rec, dict) and "schema" in rec and "key" in rec
    except ValueError:  # a run killed while writing its first record leaves one torn line
        ok = not first.endswith(b"\n") and first.startswith(b'{"')
    if not ok:
        raise UserError(f"--out {path} exists and is not an attnbench results file (JSON Lines); "
                        "choose another --out or remove it")


def _resume_state(path: Path, keep_failed: bool, say: Callable[[str], None],
                  suite: Optional[str] = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Drop a torn tail, refuse corrupt lines and (with ``suite``) another suite's records, and
    return (key -> last status of the finished cells, key -> the definition that last record was
    measured under)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"--out {path}: cannot read: {_why(exc)}") from None
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        try:
            with open(path, "r+b") as fh:
                fh.truncate(len(keep))
        except OSError as exc:
            raise UserError(f"--out {path}: cannot drop its unfinished last line: {_why(exc)}") from None
        line_no = keep.count(b"\n") + 1
        say(f"dropped the unfinished last line of {path} (line {line_no}: a run killed mid-write)")
        data = keep
    last: dict[str, str] = {}
    definitions: dict[str, Any] = {}
    for no, raw in enumerate(data.split(b"\n")[:-1] if data else [], 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or not isinstance(rec.get("status"), str):
            raise UserError(f"{path}:{no}: not an attnbench record; the results file is corrupt (fix or remove "
                            "that line, then --resume again)")
        if suite is not None and rec.get("suite") != suite:
            raise UserError(f"--resume: {path} holds results of suite {rec.get('suite')!r}, not {suite!r} (line {no}); "
                            "appending would mix two suites in one file: choose another --out")
        last[rec["key"]] = rec["status"]
        definitions[rec["key"]] = migrate(rec).get("definition")
    keep_statuses = set(FINAL_STATUSES) | (set(FAILED_STATUSES) if keep_failed else set())
    done = {key: status for key, status in last.items() if status in keep_statuses}
    return done, {key: definitions[key] for key in done}
