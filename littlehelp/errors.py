"""Errors a user can fix: the CLI prints the message's first line and exits with `exit_code`.

Raise a subclass (or `LittlehelpError` itself) for bad input, a missing or unusable file, a
checkpoint that cannot be used or a run that cannot go on; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

EXIT_ERROR = 1  # the run failed; the message says why
EXIT_CONFIG = 2  # the configuration was refused before anything ran
EXIT_PREEMPTED = 75  # SIGTERM: the run saved its state and stopped; run the same command to resume


class LittlehelpError(Exception):
    """An error with a one-line message naming the culprit; the CLI exits with `exit_code`."""

    exit_code: int = EXIT_ERROR

    def one_line(self) -> str:
        """The message's first line (gin appends "In call to configurable ..." lines below it)."""
        text = str(self).strip()
        return text.splitlines()[0] if text else type(self).__name__


class PreemptedError(LittlehelpError):
    """A run stopped by SIGTERM with its state saved, where a caller needed it finished; rerun to resume."""

    exit_code = EXIT_PREEMPTED


@contextlib.contextmanager
def exit_on_error(prog: str) -> Iterator[None]:
    """Runs the block; a `LittlehelpError` raised in it is printed as `PROG: error: <its first line>` on
    stderr and exits with its `exit_code` (a command's entry point wraps its work in this)."""
    try:
        yield
    except LittlehelpError as error:
        print(f"{prog}: error: {error.one_line()}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
