"""Errors a user can fix: the CLI prints them as one line and exits 2, never a traceback."""


class UserError(Exception):
    """Bad input (unknown mechanism, bad size, unreadable file...). The message says what to do."""


class UnsupportedRequest(UserError):
    """A mechanism was asked for a similarity, device, dtype or gradient it does not support."""


class Unavailable(Exception):
    """A plugin cannot run on this machine (missing or broken dependency); carries the reason."""


class CellOutcome(Exception):
    """A cell that ended without a measurement; ``metrics`` keeps what was known (e.g. estimates)."""

    def __init__(self, reason: str, metrics: dict | None = None):
        super().__init__(reason)
        self.metrics = dict(metrics or {})


class Unsupported(CellOutcome):
    """A mechanism that cannot take this cell's shape or setting at all (NATTEN's head-dim limit,
    an SDPA backend on a device it does not exist on): a final answer, not a failure. The record
    says ``unsupported`` with the reason; ``--resume`` does not run it again and the exit status
    is 0."""


class Infeasible(CellOutcome):
    """A cell that is not run because its estimate exceeds what the machine has (memory or time)."""


class OutOfMemory(CellOutcome):
    """A cell ran out of memory (mapped from allocator errors so records say ``oom``)."""


class InvalidOutput(Exception):
    """A mechanism returned an output of the wrong shape or dtype, or with NaN/Inf: the cell is ``error``."""
