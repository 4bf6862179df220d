"""One map from an exception to the command's exit status and its one ``error:`` line,
shared by ``main.py`` and ``python -m toolbox.table`` (docs/reliability.md lists the codes).

| code | what |
|---|---|
| 2 | the user's input: config, data, official files, backbone, checkpoint, a run folder in use or |
|   | holding an earlier run |
| 1 | the machine: a file or folder that cannot be written (full disk, read-only) |
| 3 | a run that stopped on a NaN/inf (or, for tables, jobs that failed) |
| 130 | Ctrl-C |
"""
from __future__ import annotations

import sys
from typing import Optional

from toolbox.checkpoint import CheckpointError
from toolbox.data import DatasetError
from toolbox.released import ReleasedFileError
from toolbox.run_lock import RunLockedError
from toolbox.trainer import ExistingRunError, RunInterrupted
from utils.clip_backbone import BackboneError
from utils.config import ConfigError
from utils.errors import NonFiniteError, user_message

INPUT_ERRORS = (ConfigError, DatasetError, BackboneError, CheckpointError, RunLockedError, ReleasedFileError,
                ExistingRunError)
STOPPED_ERRORS = (NonFiniteError,)


def exit_code(e: BaseException, stopped: tuple = ()) -> Optional[int]:
    """Prints ``e`` as one ``error:`` line on stderr and returns the exit status; None for
    an exception that is a bug (let it show its traceback). ``stopped``: more exception
    types that end with status 3 (the table's failed jobs)."""
    if isinstance(e, INPUT_ERRORS):
        code, text = 2, user_message(e)
    elif isinstance(e, STOPPED_ERRORS + tuple(stopped)):
        code, text = 3, str(e)
    elif isinstance(e, RunInterrupted):
        code, text = 130, str(e)
    elif isinstance(e, KeyboardInterrupt):
        code, text = 130, ("interrupted before a run started: nothing of it was written (runs of this command that "
                           "had finished are complete; the same command with --resume runs the rest)")
    elif isinstance(e, OSError):  # the machine's world: a full disk, a read-only folder (path and reason)
        code, text = 1, user_message(e)
    else:
        return None
    print(f"error: {text}", file=sys.stderr)
    return code
