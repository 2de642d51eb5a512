"""The ``GET /metrics`` endpoint of ``python -m ferroloop --metrics-port``: the standard
library's threading HTTP server on a daemon thread, answering with
`ferroloop.prometheus.exposition` (read from another thread, so a scrape is answered while
a loop is blocked in a callback)."""

from __future__ import annotations

import http.server
import socket
import threading
from typing import TYPE_CHECKING

from .prometheus import CONTENT_TYPE, exposition

if TYPE_CHECKING:
    from ._exporting import LoopSource

__all__ = ["serve"]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    loops: LoopSource


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/metrics", "/metrics/"):
            self.send_error(404, "ferroloop serves /metrics only")
            return
        try:
            body = exposition(self.server.loops).encode()
        except Exception as exc:  # a scrape must not kill the server
            self.send_error(500, f"ferroloop: exporting metrics failed: {exc!r}")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the program's stderr is its own


def serve(loops: LoopSource, host: str = "127.0.0.1", port: int = 0) -> str:
    """Binds `host`:`port` (0: a free port), serves ``GET /metrics`` of `loops` from a
    daemon thread and returns the URL. Raises OSError when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("_Server", (_Server,), {"address_family": family})
    server = server_class((host, port), _Handler)
    server.loops = loops
    bound_port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, name="ferroloop-metrics-server", daemon=True
    )
    thread.start()
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return f"http://{shown}:{bound_port}/metrics"
