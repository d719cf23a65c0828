"""Prometheus metrics and a health endpoint for workers, on one small HTTP server.

``GET /metrics`` gives Prometheus' text format; ``GET /healthz`` gives a JSON object from the
worker's health function, with status 200 when healthy and 503 when not.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from pipeline.shutdown import Closeable

__all__ = ["HealthFn", "ObservabilityServer"]

#: Returns (healthy, details); details are served as JSON.
HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class ObservabilityServer(Closeable):
    """Serves /metrics and /healthz on ``host:port`` (port 0: any free port) in a daemon thread.

    Loopback by default: the endpoints have no authentication. A context manager: leaving the
    block stops the server and frees the port.
    """

    def __init__(self, health: HealthFn, *, port: int = 0, host: str = "127.0.0.1"):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    ok, details = health()
                    body = json.dumps(details).encode()
                    ctype, code = "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Scrapes every few seconds would drown the worker's own log."""

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """The address listened on."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
