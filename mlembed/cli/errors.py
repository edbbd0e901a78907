"""One error contract for every subcommand: a user's mistake is one line naming the file, record or flag, exit
code 2, no traceback (``MLEMBED_TRACEBACK=1`` shows it); a bug keeps its traceback."""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from mlembed.data.records import RecordError
from mlembed.data.shards import WorkerDied
from mlembed.data.stream import ShardError

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, WorkerDied)
"""The exception types mlembed raises for bad settings and input: each message names the flag, file or record."""
OWN_ERRORS = (RecordError, ShardError, WorkerDied)
"""mlembed's own error classes: only ever raised to report bad input, even when a process pool re-raises them."""
TRACEBACK_ENV = "MLEMBED_TRACEBACK"
PACKAGE = Path(__file__).resolve().parents[1]
"""The mlembed package: an error raised by its own code is a report, not a bug."""
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')
_RAISED = re.compile(r"^(?:[\w.]+\.)?(?P<type>\w+): (?P<message>.*)", re.DOTALL)


def user_error(err: BaseException) -> str | None:
    """The message of mlembed's own report of a user's mistake in ``err``, or None (a bug: keep the traceback).

    A user's mistake is an exception of ``USER_ERRORS`` raised by mlembed's own code (the innermost frame is in
    the package), met on ``err`` or on the chain of exceptions that caused it (jsonargparse wraps a settings
    class's error in its own), or one a loader worker raised (torch re-raises it with the worker's traceback as
    text). The same types raised inside torch or transformers keep their traceback, as does everything when
    ``MLEMBED_TRACEBACK`` is set.
    """
    if os.environ.get(TRACEBACK_ENV):
        return None
    while err is not None:
        message = _worker_user_error(str(err))
        if message is not None:
            return message
        if isinstance(err, OWN_ERRORS):  # mlembed's own report types, wherever they were re-raised (a worker pool)
            return str(err)
        if isinstance(err, USER_ERRORS) and err.__traceback__ is not None:
            innermost = Path(traceback.extract_tb(err.__traceback__)[-1].filename).resolve()
            if innermost.is_relative_to(PACKAGE):
                return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        err = err.__cause__
    return None


def _worker_user_error(text: str) -> str | None:
    """The user-error message inside a loader worker's re-raised traceback text (see ``user_error``), or None."""
    if "\nOriginal Traceback (most recent call last):" not in text:
        return None
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return None
    innermost = Path(_FRAME.match(lines[frames[-1]])["file"]).resolve()
    raised = next((i for i in range(frames[-1] + 1, len(lines)) if not lines[i].startswith(" ")), None)
    found = _RAISED.match("\n".join(lines[raised:])) if raised is not None else None
    known = {kind.__name__ for kind in (*USER_ERRORS, RecordError, ShardError)}
    if found is None or found["type"] not in known or not innermost.is_relative_to(PACKAGE):
        return None
    return found["message"].strip()




def reported(command: str, run: Callable[[], int | None]) -> int:
    """Run one command under the error contract: its exit code (0 when it returns None); a user's mistake printed
    as one line ``mlembed COMMAND: error: ...`` with exit code 2; anything else (a bug) raised with its traceback."""
    try:
        return int(run() or 0)
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"mlembed {command}: error: {message}\n(the traceback: set {TRACEBACK_ENV}=1)", file=sys.stderr)
        return 2
