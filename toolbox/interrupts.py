"""Ctrl-C that never turns a finished run into a failed one.

``main`` installs one SIGINT handler for the whole command. While a run is working the
handler is *armed*: Ctrl-C raises ``KeyboardInterrupt`` as usual, and the trainer turns it
into "interrupted in task k/n ... resume with ...". Once a run has written its last result
the trainer *holds* Ctrl-C: a SIGINT that arrives while the run's files are moved into
place, its summary is logged and its lock is released is only recorded. The next run of
the same command (another seed or method) starts with :func:`release`, which raises the
recorded interrupt there, before that run has written anything; if no run follows, the
command ends with exit status 0 and a note.

Without :func:`installed` (a test or a fork calling the trainer directly) Python's own
handler stays in place and nothing here changes how Ctrl-C behaves.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class _State:
    installed = False
    armed = True
    pending = False


_state = _State()


def _handler(signum, frame) -> None:
    if _state.armed:
        raise KeyboardInterrupt
    _state.pending = True


@contextmanager
def installed(exiting: bool = False) -> Iterator[None]:
    """Ctrl-C handling for one command (main thread only; elsewhere a no-op). ``exiting``:
    the process ends after the block (a command line), so Ctrl-C stays ignored rather than
    getting Python's handler back for the last steps of the exit; otherwise (a test or a
    caller in the same process) the previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    _state.installed, _state.armed, _state.pending = True, True, False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if exiting and not _state.armed else previous)
        _state.installed, _state.armed, _state.pending = False, True, False


def hold() -> None:
    """From now on a Ctrl-C is recorded, not raised (a run's results are complete)."""
    _state.armed = False


def release() -> None:
    """Arm Ctrl-C again; raises ``KeyboardInterrupt`` now if one was recorded while held."""
    pending, _state.pending, _state.armed = _state.pending, False, True
    if pending:
        raise KeyboardInterrupt


def received_while_held() -> bool:
    """Whether a Ctrl-C arrived after the last run finished (the command still succeeds)."""
    return _state.pending
