"""argparse ``type`` functions for flags that several commands and the executors declare, so that
every flag says a bad value the same way (a UserError: one line, exit 2). Its own module so that
executors, which add their own flags, need not import the CLI."""
from __future__ import annotations


def int_option(flag: str, minimum: int = 1, maximum: int | None = None, odd: bool = False):  # type: ignore[no-untyped-def]
    """An argparse ``type`` for an integer flag in [minimum, maximum] (odd if asked; the largest seed
    when no maximum is given): bad text or a value out of range is a UserError naming the flag, so
    every command says it the same way."""
    from .cells import MAX_SEED
    from .errors import UserError

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
