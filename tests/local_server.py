"""A threaded HTTP server on 127.0.0.1 (a free port) for download tests; no test touches the internet."""

from __future__ import annotations

import collections
import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that doesn't log to stderr, can send a whole body in one call, and counts the
    requests by path in its server's `hits`."""

    def log_message(self, *args):
        pass

    def count(self) -> int:
        """Count this request; -> how many requests for this path the server has had, this one included."""
        self.server.hits[self.path] += 1
        return self.server.hits[self.path]

    def send_body(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler], hits: collections.Counter | None = None) -> Iterator[str]:
    """Serve `handler` while the block runs; yields the base URL. Requests that the handler counts go to
    `hits` (a fresh Counter by default): one per server, so that tests don't see each other's."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.hits = collections.Counter() if hits is None else hits
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_connections(monkeypatch) -> list[tuple[str, int, float | None]]:
    """Record every socket.create_connection (urllib's and clip_jax.download.reach's way to connect) as
    (host, port, timeout) in the returned list; the connections are made as usual."""
    connections = []
    real = socket.create_connection

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, *args, **kwargs):
        connections.append((address[0], address[1], timeout))
        return real(address, timeout, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return connections
