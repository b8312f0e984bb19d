"""Downloads against a local HTTP server on 127.0.0.1: a good file, a checksum mismatch, a truncated
transfer, a server that fails once, and a cached file that no longer matches its checksum; a closed port
and a connection that times out (tried once, at once); offline, the cache alone. Nothing half-written may
stay in the cache."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import time
import warnings

import pytest

import clip_jax.download as download_module
from clip_jax.download import (
    CONNECT_TIMEOUT,
    ChecksumError,
    DownloadError,
    NotCachedError,
    UnreachableError,
    default_cache_dir,
    download,
    reach,
)

from .local_server import QuietHandler, closed_port, count_connections, serve as serve_http

BODY = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk
SHA = hashlib.sha256(BODY).hexdigest()


class Handler(QuietHandler):
    def do_GET(self):
        n = self.count()
        if self.path.startswith("/good/"):
            return self.send_body(BODY)
        if self.path == "/bad.bin":
            return self.send_body(BODY[:-1] + b"X")
        if self.path == "/truncated.bin":
            # Announce the whole body, send half, close: http.client reports no error by itself.
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/flaky.bin" and n == 1:
            return self.send_error(503, "busy")
        if self.path == "/flaky.bin":
            return self.send_body(BODY)
        self.send_error(404, "no such file")


@pytest.fixture
def server(hits):
    """A server for this test alone (one costs a thread and a socket): its request counts are the test's."""
    with serve_http(Handler, hits) as url:
        yield url


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_good_download_then_cache_hit(server, hits, tmp_path, capsys):
    url = f"{server}/good/{SHA}/model.pt"
    path, digest = download(url, SHA, cache_dir=tmp_path, progress=True)
    assert path == tmp_path / "model.pt" and path.read_bytes() == BODY and digest == SHA
    assert "100%" in capsys.readouterr().err  # the progress bar reached the end
    assert leftovers(tmp_path) == ["model.pt"]  # no temporary file left behind
    assert hits == {f"/good/{SHA}/model.pt": 1}
    path2, digest2 = download(url, SHA, cache_dir=tmp_path, progress=False)
    assert (path2, digest2) == (path, SHA) and hits == {f"/good/{SHA}/model.pt": 1}  # no request


def test_prefix_checksum_and_no_checksum(server, tmp_path):
    """A published prefix of the digest (open_clip's release files carry 8 hex digits) is checked as
    such; without any, the full digest is still returned for cache keys."""
    path, digest = download(f"{server}/good/a/x.bin", SHA[:8], cache_dir=tmp_path, progress=False)
    assert digest == SHA
    _, digest = download(f"{server}/good/b/y.bin", None, cache_dir=tmp_path, progress=False)
    assert digest == SHA
    with pytest.raises(ValueError, match="8 to 64 hex digits"):
        download(f"{server}/good/c/z.bin", "abc", cache_dir=tmp_path)


def test_checksum_mismatch_keeps_nothing(server, hits, tmp_path):
    with pytest.raises(ChecksumError, match=f"SHA-256 mismatch: expected {SHA}, got [0-9a-f]{{64}}"):
        download(f"{server}/bad.bin", SHA, cache_dir=tmp_path, progress=False, backoff=0)
    assert hits["/bad.bin"] == 1  # a mismatch is not retried
    assert leftovers(tmp_path) == []


def test_truncated_transfer_is_an_error(server, hits, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DownloadError, match=f"after {len(BODY) // 2} of {len(BODY)} bytes"):
            download(f"{server}/truncated.bin", SHA, cache_dir=tmp_path, progress=False, retries=2, backoff=0)
    assert hits["/truncated.bin"] == 3  # the first try and 2 retries
    assert sum("retrying" in str(w.message) for w in caught) == 2
    assert leftovers(tmp_path) == []


def test_retry_after_a_failure(server, hits, tmp_path):
    with pytest.warns(UserWarning, match="HTTP 503 busy; retrying"):
        path, _ = download(f"{server}/flaky.bin", SHA, cache_dir=tmp_path, progress=False, backoff=0)
    assert path.read_bytes() == BODY and hits["/flaky.bin"] == 2


def test_not_found_is_not_retried(server, hits, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server}/missing.bin", SHA, cache_dir=tmp_path, progress=False, backoff=0)
    assert hits["/missing.bin"] == 1
    assert leftovers(tmp_path) == []


def test_corrupt_cached_file_is_fetched_again(server, hits, tmp_path):
    url = f"{server}/good/again/model.pt"
    (tmp_path / "model.pt").write_bytes(BODY[:100])  # e.g. an interrupted copy made by hand
    with pytest.warns(UserWarning, match="doesn't match"):
        path, digest = download(url, SHA, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == BODY and digest == SHA and hits["/good/again/model.pt"] == 1


def test_a_failed_refetch_keeps_no_partial_file(server, tmp_path):
    """A stale cached file and a failing server: the error names the URL, the stale file isn't
    replaced by a partial one, and no temporary file stays."""
    (tmp_path / "truncated.bin").write_bytes(b"old")
    with pytest.warns(UserWarning), pytest.raises(DownloadError, match="truncated"):
        download(f"{server}/truncated.bin", SHA, cache_dir=tmp_path, progress=False, retries=0)
    assert leftovers(tmp_path) == ["truncated.bin"] and (tmp_path / "truncated.bin").read_bytes() == b"old"


def test_cache_dir_default_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CLIP_JAX_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "clip_jax"
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins


def test_download_into_the_env_cache(server, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path / "env"))
    path, _ = download(f"{server}/good/env/m.bin", SHA, progress=False)
    assert path == tmp_path / "env" / "m.bin"


def test_cache_entry_symlink_fifo_and_full_disk(server, hits, tmp_path, monkeypatch):
    """The cache's file may be a symlink (e.g. to shared storage): a refetch is written through it. A
    FIFO there is refused before any request. A full disk is one line naming the file, nothing left."""
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    shared.mkdir(), cache.mkdir()
    (shared / "model.pt").write_bytes(b"stale")
    (cache / "model.pt").symlink_to(shared / "model.pt")
    with pytest.warns(UserWarning, match="doesn't match"):
        path, _ = download(f"{server}/good/link/model.pt", SHA, cache_dir=cache, progress=False)
    assert (cache / "model.pt").is_symlink() and (shared / "model.pt").read_bytes() == BODY
    assert leftovers(shared) == ["model.pt"]

    os.mkfifo(cache / "fifo.pt")
    with pytest.raises(OSError, match=r"fifo\.pt: exists and is a FIFO, not a regular file"):
        download(f"{server}/good/fifo/fifo.pt", SHA, cache_dir=cache, progress=False)
    assert "/good/fifo/fifo.pt" not in hits

    def fill_the_disk(url, tmp, *args):
        tmp.write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "_fetch", fill_the_disk)
    with pytest.raises(OSError, match=r"^\S*new\.pt: no space left on device"):
        download(f"{server}/good/full/new.pt", SHA, cache_dir=cache, progress=False)
    assert leftovers(cache) == ["fifo.pt", "model.pt"]


# --- a host that can't be reached -------------------------------------------------------------------


def test_unreachable_host_is_tried_once(tmp_path, monkeypatch):
    """A refused connection is no network (or no server): one attempt, no retries (backoff 10 s would
    show in the time), one line naming the host; nothing in the cache."""
    connections = count_connections(monkeypatch)
    port = closed_port()
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a retry would warn
        with pytest.raises(UnreachableError, match=rf"^can't reach 127\.0\.0\.1:{port} \(Connection refused\)$") as e:
            download(f"http://127.0.0.1:{port}/m/model.pt", SHA, cache_dir=tmp_path, progress=False, backoff=10)
    assert time.monotonic() - start < 5
    assert connections == [("127.0.0.1", port, CONNECT_TIMEOUT)]
    assert (e.value.host, e.value.why) == (f"127.0.0.1:{port}", "Connection refused")
    assert leftovers(tmp_path) == []


def test_connect_timeout_is_short_and_not_retried(tmp_path, monkeypatch):
    """A host that doesn't answer is waited for `connect_timeout` seconds, not the read timeout, once."""
    def no_answer(address, timeout=None, *args):
        calls.append(timeout)
        raise TimeoutError("timed out")

    calls = []
    monkeypatch.setattr(socket, "create_connection", no_answer)
    with pytest.raises(UnreachableError, match=r"^can't reach example\.org \(connection timed out\)$"):
        download("https://example.org/m.pt", SHA, cache_dir=tmp_path, progress=False, backoff=10,
                 timeout=60, connect_timeout=0.5)
    assert calls == [0.5]
    assert reach("https://example.org/") == "connection timed out" and calls == [0.5, CONNECT_TIMEOUT]


def test_server_errors_are_still_retried_with_a_long_read_timeout(server, hits, tmp_path, monkeypatch):
    """A host that answers 503 is retried; once connected, reads wait `timeout`, not `connect_timeout`."""
    timeouts = []
    real = socket.socket.settimeout
    monkeypatch.setattr(socket.socket, "settimeout", lambda sock, t: (timeouts.append(t), real(sock, t))[1])
    with pytest.warns(UserWarning, match="HTTP 503 busy; retrying"):
        download(f"{server}/flaky.bin", SHA, cache_dir=tmp_path, progress=False, backoff=0, timeout=42,
                 connect_timeout=3)
    assert hits["/flaky.bin"] == 2
    assert 3 in timeouts and timeouts[-1] == 42  # the connection opened within 3 s, the reads then had 42


def test_reach(server):
    assert reach(server) is None
    assert reach(f"http://127.0.0.1:{closed_port()}/") == "Connection refused"


def test_offline_uses_only_the_cache(server, hits, tmp_path, monkeypatch):
    url = f"{server}/good/offline/model.pt"
    with pytest.raises(NotCachedError, match=r"model\.pt: no verified copy in the cache .* and offline"):
        download(url, SHA, cache_dir=tmp_path, offline=True)
    download(url, SHA, cache_dir=tmp_path, progress=False)
    connections = count_connections(monkeypatch)
    path, digest = download(url, SHA, cache_dir=tmp_path, offline=True)
    assert path.read_bytes() == BODY and digest == SHA and connections == [] and hits[url.removeprefix(server)] == 1
