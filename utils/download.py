"""Downloads checked by SHA-256: a file is used only when its checksum is the expected one,
and an interrupted or wrong download never leaves a file behind (temp file, then rename)."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, Type

logger = logging.getLogger(__name__)

# Offline, the system's name lookup can take over a minute to give up (and urlopen's
# timeout does not cover it): the server must answer within CONNECT_TIMEOUT_S, name lookup
# and connection included; once it has, each read may take READ_TIMEOUT_S.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_url(url: str, connect_timeout: Optional[float] = None, read_timeout: float = READ_TIMEOUT_S):
    """``urllib.request.urlopen(url)``, or ``TimeoutError`` when the server has not answered
    within ``connect_timeout`` seconds (default ``CONNECT_TIMEOUT_S``). The opening runs in a
    daemon thread, so a name lookup that hangs is left behind, not waited for."""
    connect_timeout = CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
    box: Dict[str, Any] = {}
    lock, done = threading.Lock(), threading.Event()

    def opening() -> None:
        try:
            response = urllib.request.urlopen(url, timeout=read_timeout)
        except BaseException as e:  # handed to the caller, who raises it
            box["error"] = e
        else:
            with lock:
                if box.get("abandoned"):
                    response.close()
                else:
                    box["response"] = response
        finally:
            done.set()

    threading.Thread(target=opening, name="open-url", daemon=True).start()
    if not done.wait(connect_timeout):
        with lock:
            if "response" not in box and "error" not in box:
                box["abandoned"] = True
                host = urllib.parse.urlsplit(url).hostname or url
                raise TimeoutError(f"no answer from {host} within {connect_timeout:g} s: no network, or its name "
                                   f"cannot be looked up")
    if "error" in box:
        raise box["error"]
    return box["response"]


def fetch_verified(url: str, target: str, sha256: Optional[str], error: Type[Exception], offline_hint: str,
                   redownload_mismatch: bool = True) -> str:
    """``target`` if its SHA-256 is ``sha256``, else downloaded from ``url`` into it.

    A file at ``target`` with another checksum is downloaded again
    (``redownload_mismatch``) or refused with ``error``. Offline, ``error`` names the URL,
    the checksum, where to put the file and ``offline_hint``. ``sha256`` None: a file
    with no published checksum, taken as it is; the download is still written to a
    temporary file and renamed only once whole, so a broken download leaves nothing."""
    if os.path.isfile(target) and sha256 is None:
        return target
    if os.path.isfile(target):
        actual = sha256_of(target)
        if actual == sha256:
            return target
        if not redownload_mismatch:
            raise error(f"{target} has SHA-256 {actual}, expected {sha256}: it is not the file at {url}. "
                        f"Delete it to download the right one, or replace it with that file")
        logger.warning("%s has SHA-256 %s, expected %s; downloading it again", target, actual, sha256)
    folder = os.path.dirname(os.path.abspath(target))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
        with os.fdopen(fd, "wb") as out, open_url(url) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
        actual = sha256_of(tmp) if sha256 is not None else None
        if actual != sha256:
            raise error(f"the download of {url} has SHA-256 {actual}, expected {sha256}; try again, or place a "
                        f"verified copy at {target}")
        os.replace(tmp, target)
        return target
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise error(f"{os.path.basename(target)} is not in {folder} and could not be downloaded ({e}). Download "
                    f"{url} on a machine with internet and put it at {target}"
                    f"{f' (SHA-256 {sha256})' if sha256 else ''}, "
                    f"{offline_hint}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
