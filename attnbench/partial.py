"""What a cell knew before it ended without a record: the estimates, noted by the worker as soon as
they are known, so that a timeout, a kill or a native crash still records them.

Its own module because both sides use it: the measuring path notes (:func:`report_partial`), the
executor reads (:func:`read_partial`); neither needs the worker for it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: environment variable naming the file where a worker notes what it knows before the risky part
#: of a cell (the estimates), so that a timeout or a kill still records them
PARTIAL_ENV = "ATTNBENCH_PARTIAL_RECORD"


def report_partial(metrics: dict[str, Any]) -> None:
    """Note metrics known so far (atomically); the executor puts them in a timeout or kill record."""
    path = os.environ.get(PARTIAL_ENV)
    if not path:
        return
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, default=str)
        os.replace(tmp, path)
    except OSError:
        pass  # best effort: the cell's own record carries everything anyway


def read_partial(path: str | Path) -> dict[str, Any]:
    """What a worker noted with :func:`report_partial` (empty when nothing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


#: where a worker notes its partial record when the executor names no other file: beside the record
PARTIAL_NAME = "partial.json"
