"""One cell in a fresh process: ``python -m attnbench.worker SPEC.json RECORD.json``.

Running every cell in its own process means an OOM, a segfault or a hang loses only that cell
(pyperf and asv do the same), and that memory and one-time costs (kernel builds, allocator
caches) never leak from one cell into the next. Nor do processes: the worker is the subreaper
of whatever its cell starts and kills all of it when the cell ends (:mod:`attnbench.proctree`).
"""
from __future__ import annotations

import importlib
import json
import os
import random
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .cells import CellSpec
from .context import RunContext, activate
from .errors import Infeasible, InvalidOutput, OutOfMemory, Unavailable, Unsupported, UserError
from .partial import PARTIAL_ENV, PARTIAL_NAME
from .proctree import CELL_ENV, become_subreaper, kill_descendants

def load_runner(path: str) -> Callable[[CellSpec], dict[str, Any]]:
    module, _, func = path.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"suite runner {path!r} cannot be loaded: {exc}") from None


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def execute(spec: CellSpec) -> dict[str, Any]:
    """Run one cell in this process and return its record (never raises)."""
    from .env import capture
    from .load import load_record, mark
    from .measure.memory import is_oom
    from .schema import make_record

    load_start = mark()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    status, reason, metrics, extra = "ok", "", {}, {}
    try:
        activate(RunContext.from_dict(spec.context))
        runner = load_runner(spec.runner)
        seed_everything(spec.seed)
        metrics = runner(spec)
    except Unavailable as exc:
        status, reason = "unavailable", str(exc)
    except Infeasible as exc:
        status, reason, metrics = "infeasible", str(exc), exc.metrics
    except Unsupported as exc:
        status, reason, metrics = "unsupported", str(exc), exc.metrics
    except OutOfMemory as exc:
        status, reason, metrics = "oom", str(exc), exc.metrics
    except UserError as exc:
        status, reason = "error", str(exc)
    except InvalidOutput as exc:
        status, reason, metrics = "error", f"invalid output: {exc}", dict(getattr(exc, "metrics", {}) or {})
    except BaseException as exc:  # noqa: BLE001 -- a cell must never take the suite down
        if isinstance(exc, KeyboardInterrupt):
            raise
        status = "oom" if is_oom(exc) else "error"
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
        extra["traceback"] = traceback.format_exc()[-4000:]
        metrics = dict(getattr(exc, "metrics", {}) or {})
    env = capture(spec.device, spec.seed)
    return make_record(spec, status, reason, metrics, env, started_at=started,
                       duration_s=round(time.perf_counter() - t0, 3), load=load_record(load_start), **extra)




def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    os.environ.setdefault(PARTIAL_ENV, str(Path(args[1]).with_name(PARTIAL_NAME)))
    become_subreaper()  # orphans of the cell stay in this tree, and end with it below
    os.environ[CELL_ENV] = str(Path(args[0]).resolve())  # the mark the executor finds escapees by
    try:
        spec = CellSpec.from_dict(json.loads(Path(args[0]).read_text()))
        record = execute(spec)
        Path(args[1]).write_text(json.dumps(record, default=str))
    finally:
        kill_descendants()  # whatever the cell started ends with it
    return 0


if __name__ == "__main__":
    sys.exit(main())
