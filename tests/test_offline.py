"""Offline, a missing CLIP checkpoint or official data file is refused in seconds, with the
URL, where to put the file and its SHA-256, not after the system's name-lookup time-out."""
import hashlib
import socket
import threading
import time

import pytest

import utils.download
from toolbox.released import SHA256, ReleasedFileError, cache_path, fetch_released
from utils.clip_backbone import BackboneError, fetch_openai_weights, import_clip
from utils.download import fetch_verified, open_url

clip = import_clip()
UNRESOLVABLE = "http://nonexistent.invalid/clip/models/{}/ViT-B-16.pt"


def test_an_unresolvable_host_gives_the_offline_error(tmp_path, monkeypatch):
    sha = hashlib.sha256(b"weights").hexdigest()
    monkeypatch.setitem(clip.clip._MODELS, "ViT-B/16", UNRESOLVABLE.format(sha))
    start = time.perf_counter()
    with pytest.raises(BackboneError) as e:
        fetch_openai_weights("ViT-B/16", str(tmp_path))
    print(f"offline error after {time.perf_counter() - start:.2f} s")
    msg = str(e.value)
    assert UNRESOLVABLE.format(sha) in msg and str(tmp_path / "ViT-B-16.pt") in msg and sha in msg
    assert "could not be downloaded" in msg and "clip_cache" in msg
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_an_official_file_from_an_unresolvable_host_gives_the_offline_error(tmp_path, monkeypatch):
    name = "mgclip/class_orders/cifar100.yaml"
    monkeypatch.setattr("toolbox.released.url_of", lambda n: "http://nonexistent.invalid/" + n)
    with pytest.raises(ReleasedFileError) as e:
        fetch_released(name, str(tmp_path))
    msg = str(e.value)
    assert "http://nonexistent.invalid/" + name in msg and cache_path(name, str(tmp_path)) in msg
    assert SHA256[name] in msg and "released_cache" in msg


@pytest.fixture
def hanging_name_lookup(monkeypatch):
    """The system's name lookup hangs (as offline, up to 75 s), until the test ends."""
    release = threading.Event()

    def lookup(*a, **k):
        release.wait(30)
        raise socket.gaierror(-2, "late answer")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(utils.download, "CONNECT_TIMEOUT_S", 0.5)
    yield
    release.set()


def test_a_hanging_name_lookup_is_not_waited_for(tmp_path, hanging_name_lookup):
    with pytest.raises(TimeoutError, match="no answer from nonexistent.invalid within 0.5 s"):
        open_url("http://nonexistent.invalid/x")
    with pytest.raises(RuntimeError) as e:
        fetch_verified("http://nonexistent.invalid/x", str(tmp_path / "x"), "0" * 64, RuntimeError, "or else.")
    msg = str(e.value)
    assert "within 0.5 s" in msg and "late answer" not in msg
    assert "http://nonexistent.invalid/x" in msg and str(tmp_path / "x") in msg and "0" * 64 in msg


def test_a_connected_download_passes_its_response_and_its_errors_through(monkeypatch):
    response = object()
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: response)
    assert open_url("http://example.invalid/x") is response

    def refused(url, timeout):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr("urllib.request.urlopen", refused)
    with pytest.raises(ConnectionRefusedError):
        open_url("http://example.invalid/x")
