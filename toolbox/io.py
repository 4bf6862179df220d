"""Crash-safe file writing: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import Any, Callable


class WriteError(OSError):
    """A file or folder could not be written (full disk, read-only folder, ...); the
    message names the path, the reason and what to do."""


def write_error(path: str, e: OSError) -> WriteError:
    """One line for an OS error on writing ``path``: path, reason, what to do."""
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        todo = "free some space there, or point config key 'logdir' elsewhere"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = "make it writable, or point config key 'logdir' at a writable folder"
    else:
        todo = "check the folder, or point config key 'logdir' elsewhere"
    return WriteError(f"cannot write {e.filename or path}: {reason}; {todo}")


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` through ``write(fileobj)`` into a temp file in the same folder,
    fsync it, then rename it over ``path``. On any error the temp file is removed and the
    previous ``path`` (if any) is left untouched; an OS error (full disk, read-only
    folder) comes out as one :class:`WriteError` naming ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise write_error(path, e) from None
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path) -> None:
    """Remove ``path`` if it exists; an error doing so is ignored (best-effort clean-up)."""
    try:
        if path is not None and os.path.exists(path):
            os.remove(path)
    except OSError:
        pass


def remove_stale_temps(folder: str) -> None:
    """Remove temp files that a killed process left mid-write in ``folder`` (a SIGKILL
    leaves no chance to clean up; the files they were for are intact)."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(folder, name))


def fsync_folder(folder: str) -> None:
    """Make the renames into ``folder`` durable (a crash after this keeps them); a file
    system that cannot fsync a folder is left to its own guarantees."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, allow_nan=False))


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))
