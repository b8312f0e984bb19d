"""Verified downloads into a local cache.

`download(url, sha256)` streams to a temporary file in the cache directory, hashing as it goes, checks
the length the server announced and the SHA-256, and only then renames the file into place (atomic on
POSIX), so the cache never holds a partial or unverified file under its real name. A cached file is
re-hashed on every use, as clip.load does, and fetched again if it no longer matches.

A host that can't be connected to (no network, a failed name lookup, a refused connection, no answer
within `connect_timeout`) is tried once: UnreachableError, one line naming the host. Errors from a host
that answered (5xx, a transfer cut short) are retried with backoff.

The cache directory: the `cache_dir` argument, else $CLIP_JAX_CACHE, else ~/.cache/clip_jax.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from .errors import ClipJaxError, InputError
from .fileio import atomic_write, output_target

CHUNK = 1 << 20
ENV_CACHE = "CLIP_JAX_CACHE"
CONNECT_TIMEOUT = 5.0  # seconds to open a connection; a reachable host answers in far less


class DownloadError(ClipJaxError, OSError):
    """A download failed (network, HTTP status, truncated transfer); nothing was left in the cache."""

    retryable = True  # network errors, 5xx, truncation; not a 404 or a checksum mismatch


class ChecksumError(DownloadError):
    """The bytes received don't have the expected SHA-256."""

    retryable = False


class UnreachableError(DownloadError):
    """No connection could be made to `host` (no network, name lookup failed, refused, connect timeout).
    Not retried: asking again at once gets the same answer."""

    retryable = False

    def __init__(self, host: str, why: str, message: str | None = None):
        super().__init__(message or f"can't reach {host} ({why})")
        self.host, self.why = host, why


class NotCachedError(DownloadError):
    """Offline (download(..., offline=True)) and the file is not in the cache."""

    retryable = False


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $CLIP_JAX_CACHE, else ~/.cache/clip_jax."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/clip_jax").expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _matches(digest: str, expected: str | None) -> bool:
    # A prefix is all some sources publish (open_clip's release files carry 8 hex digits of it).
    return expected is None or digest.startswith(expected.lower())


def _check_sha256(expected: str | None) -> None:
    if expected is not None and not re.fullmatch(r"[0-9a-fA-F]{8,64}", expected):
        raise InputError(f"sha256 must be 8 to 64 hex digits, got {expected!r}")


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, name: str, total: int | None, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled
        self.done, self.start, self.shown = 0, time.monotonic(), 0.0

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (not final and now - self.shown < 0.1):
            return
        self.shown = now
        rate = self.done / max(now - self.start, 1e-9) / 1e6
        if self.total:
            pct = 100 * self.done / self.total
            bar = "#" * int(pct // 5)
            line = (f"{self.name}: {pct:3.0f}% [{bar:<20}] {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                    f"{rate:.1f} MB/s")
        else:
            line = f"{self.name}: {self.done / 1e6:.1f} MB {rate:.1f} MB/s"
        sys.stderr.write("\r" + line + ("\n" if final else ""))
        sys.stderr.flush()


def _connect_timeout(connection_class: type[http.client.HTTPConnection], connect_timeout: float) -> type:
    """`connection_class` that waits at most `connect_timeout` s for the connection (and TLS handshake),
    then `timeout` for each read: a host that isn't there fails fast, a slow transfer still completes."""

    class Connection(connection_class):
        def connect(self) -> None:
            read_timeout = self.timeout
            self.timeout = connect_timeout if read_timeout is None else min(connect_timeout, read_timeout)
            try:
                super().connect()
            finally:
                self.timeout = read_timeout
            self.sock.settimeout(read_timeout)

    return Connection


def _opener(connect_timeout: float) -> urllib.request.OpenerDirector:
    http_connection = _connect_timeout(http.client.HTTPConnection, connect_timeout)
    https_connection = _connect_timeout(http.client.HTTPSConnection, connect_timeout)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_connection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_connection, req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)  # proxies from the environment, as urlopen


def _why(e: OSError) -> str:
    """A failed connection in a few words: "Connection refused", "connection timed out"."""
    if isinstance(e, TimeoutError):
        return "connection timed out"
    return e.strerror or str(e) or type(e).__name__


def reach(url: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """One TCP connection to the host `url` names (or to the proxy the environment names for it), at most
    `timeout` seconds. -> None if it opened, else why not, in a few words."""
    parts = urllib.parse.urlparse(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return _why(e)
    return None


def host_of(url: str) -> str:
    """The host a URL names, with its port if one is given: "https://openaipublic.azureedge.net/clip/..." ->
    "openaipublic.azureedge.net"."""
    parts = urllib.parse.urlparse(url)
    if not parts.hostname:
        return url
    return parts.hostname + (f":{parts.port}" if parts.port else "")


def _fetch(url: str, tmp: Path, name: str, timeout: float, progress: bool,
           connect_timeout: float = CONNECT_TIMEOUT) -> str:
    """One attempt: stream `url` into `tmp`. -> SHA-256 hex. Raises DownloadError on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "clip_jax"})
    try:
        with _opener(connect_timeout).open(request, timeout=timeout) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _Progress(name, total, progress)
            h = hashlib.sha256()
            while chunk := response.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
            # http.client returns b"" when the server closes early, without an error: count the bytes.
            if total is not None and bar.done != total:
                raise DownloadError(f"{url}: transfer ended after {bar.done} of {total} bytes (truncated)")
            bar.update(0, final=True)
            return h.hexdigest()
    except urllib.error.HTTPError as e:
        err = DownloadError(f"{url}: HTTP {e.code} {e.reason}")
        # Client errors other than timeouts and rate limits won't go away by asking again.
        err.retryable = e.code >= 500 or e.code in (408, 429)
        raise err from None
    except urllib.error.URLError as e:
        # urllib wraps what failed before any answer (connect, name lookup, TLS handshake) in URLError.
        reason = e.reason
        if not isinstance(reason, OSError) or isinstance(reason, ssl.SSLError):
            err = DownloadError(f"{url}: {reason}")
            err.retryable = False  # a certificate or protocol error: the same answer again
            raise err from None
        raise UnreachableError(host_of(url), _why(reason)) from None
    except (http.client.HTTPException, socket.timeout, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: {type(e).__name__}: {reason}") from None


def download(
    url: str,
    sha256: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    filename: str | None = None,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    connect_timeout: float = CONNECT_TIMEOUT,
    offline: bool = False,
) -> tuple[Path, str]:
    """Fetch `url` into the cache (unless a verified copy is there). -> (path, its full SHA-256 hex).

    sha256: the expected digest (or a prefix of >= 8 hex digits); None skips verification. filename:
    the name in the cache (default: the URL's last path segment). A host that can't be connected to
    within `connect_timeout` seconds raises UnreachableError after that one attempt. Errors after the host
    answered (5xx, 408, 429, a read timeout, a truncated transfer) are retried `retries` times, waiting
    backoff * 2**attempt seconds. A checksum mismatch is not retried: it raises ChecksumError. offline:
    only the cache, NotCachedError if the file isn't there. On failure nothing is left in the cache.
    """
    _check_sha256(sha256)
    directory = default_cache_dir(cache_dir)
    name = filename or Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise InputError(f"{url}: no file name in the URL; pass filename=")
    target = directory / name
    output_target(target)  # a FIFO or device in the cache is refused before anything is fetched
    if target.is_file():
        digest = sha256_file(target)
        if _matches(digest, sha256):
            return target, digest
        if not offline:
            warnings.warn(f"{target}: SHA-256 {digest} doesn't match {sha256}; downloading it again", stacklevel=2)
    if offline:
        raise NotCachedError(f"{name}: no verified copy in the cache ({directory}) and offline")

    directory.mkdir(parents=True, exist_ok=True)
    digest = ""

    def fetch_verified(tmp: str) -> None:
        nonlocal digest
        for attempt in range(retries + 1):
            try:
                digest = _fetch(url, Path(tmp), name, timeout, progress, connect_timeout)
                break
            except DownloadError as e:
                if attempt == retries or not e.retryable:
                    raise
                warnings.warn(f"{e}; retrying ({attempt + 1}/{retries})", stacklevel=3)
                time.sleep(backoff * 2**attempt)
        if not _matches(digest, sha256):
            raise ChecksumError(f"{url}: SHA-256 mismatch: expected {sha256}, got {digest}; the file was not kept")

    # A temporary file beside the target, renamed onto it only once verified; removed on any failure.
    atomic_write(target, fetch_verified)
    return target, digest
