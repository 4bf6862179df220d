"""One process per run directory: an OS file lock held for the whole run.

The lock is ``filelock``'s: the kernel holds it for the process, so a process that is
killed (SIGKILL, a crash, a lost machine) leaves no lock behind that could block
``--resume``; the lock file itself may remain and is harmless. Beside it an owner file
names the holder (process id, host, start time) so that a second run can say who holds
the folder.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Optional

from filelock import FileLock, Timeout

from toolbox.io import remove_quietly, write_error, write_json

LOCK_NAME = ".run.lock"
OWNER_NAME = ".run.owner.json"
# A run folder's other hidden names (toolbox/trainer.py writes them, toolbox/report.py never reads
# them as runs): a replacement run (--overwrite) until it finishes, and a finished one being moved in.
ATTEMPT = ".attempt"
REPLACING = ".replacing"


class RunLockedError(RuntimeError):
    """Another process is running in this run directory."""


class RunLock:
    """``with RunLock(run_dir):`` creates ``run_dir`` if needed and holds it for this
    process; a second holder fails at once with :class:`RunLockedError`."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._lock = FileLock(os.path.join(run_dir, LOCK_NAME), timeout=0)
        self._owner_path = os.path.join(run_dir, OWNER_NAME)

    def __enter__(self) -> "RunLock":
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(in_use_message(self.run_dir)) from None
        except OSError as e:  # after Timeout, which is an OSError too
            raise write_error(self.run_dir, e) from None
        try:
            write_json(self._owner_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                          "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        remove_quietly(self._owner_path)
        self._lock.release()


def in_use_message(run_dir: str) -> str:
    return (f"run folder {run_dir} is in use by {describe_owner(run_dir)}; wait for it to finish or stop it, "
            f"or run into another folder (config key 'prefix' or 'logdir')")


def check_not_in_use(run_dir: str) -> None:
    """Before a run's checks say what the folder holds: :class:`RunLockedError` when another
    process holds it now (a run still going: neither --resume nor --overwrite can help until it
    ends). Creates nothing: a folder without a lock file has no holder. Not for a process that
    holds the folder itself (a second lock of the same file conflicts within one process)."""
    path = os.path.join(run_dir, LOCK_NAME)
    if not os.path.isfile(path):
        return
    probe = FileLock(path, timeout=0)
    try:
        probe.acquire()
    except Timeout:
        raise RunLockedError(in_use_message(run_dir)) from None
    except OSError:  # unreadable lock file: the run's own locking reports it with the path
        return
    probe.release()


def describe_owner(run_dir: str) -> str:
    """'process 1234 on host (since ...)' from the owner file, or a plain phrase."""
    owner = read_owner(run_dir)
    if owner is None:
        return "another process"
    return f"process {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')})"


def read_owner(run_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(run_dir, OWNER_NAME), "r", encoding="utf-8") as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None
