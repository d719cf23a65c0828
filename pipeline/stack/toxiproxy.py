"""Links that can fail: a toxiproxy server and the proxies on it.

A proxy forwards one TCP port to another. :meth:`Proxy.cut` makes it fail the way a WAN link
does: data stops in both directions and connections hang, open but silent (toxiproxy's
``timeout`` toxic with no timeout); :meth:`Proxy.heal` lets data flow again. A refused
connection, which disabling a proxy gives, would let clients fail fast and hide what a hung
link does to them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import StackError
from pipeline.stack.processes import ProcessRecord, spawn
from pipeline.stack.runtime import toxiproxy

__all__ = ["Proxy", "Toxiproxy", "start_toxiproxy"]

_CUT = ("cut-upstream", "upstream"), ("cut-downstream", "downstream")


def start_toxiproxy(port: int, log: Path) -> ProcessRecord:
    """Start a toxiproxy server with its API on ``127.0.0.1:port``."""
    return spawn(
        "toxiproxy",
        [toxiproxy(), "-host", "127.0.0.1", "-port", str(port)],
        log=log,
        ports=(port,),
    )


class Toxiproxy:
    """The HTTP API of a toxiproxy server on ``127.0.0.1:port``."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read()
        except (urllib.error.URLError, OSError) as e:
            raise StackError(f"toxiproxy at {self.url}: {method} {path} failed: {e}") from None
        # Every answer is JSON except /version's plain text.
        return json.loads(text) if text and not path.startswith("/version") else text

    def reachable(self) -> bool:
        try:
            self.call("GET", "/version")
        except StackError:
            return False
        return True

    def proxy(self, name: str, listen_port: int, upstream: str) -> Proxy:
        """Create (or replace) the proxy ``name`` from ``127.0.0.1:listen_port`` to
        ``upstream`` (host:port)."""
        existing = self.call("GET", "/proxies")
        if name in existing:
            self.call("DELETE", f"/proxies/{name}")
        self.call(
            "POST",
            "/proxies",
            {"name": name, "listen": f"127.0.0.1:{listen_port}", "upstream": upstream},
        )
        return Proxy(self, name, listen_port)


class Proxy:
    """One proxy: cut and heal (a hung link), refuse and accept (a server down), remove."""

    def __init__(self, server: Toxiproxy, name: str, port: int):
        self.server = server
        self.name = name
        self.port = port

    def cut(self) -> None:
        """Stop data both ways; connections stay open and hang."""
        for toxic, stream in _CUT:
            self.server.call(
                "POST",
                f"/proxies/{self.name}/toxics",
                {"name": toxic, "type": "timeout", "stream": stream, "attributes": {"timeout": 0}},
            )

    def heal(self) -> None:
        """Let data flow again (connections cut meanwhile may be closed)."""
        toxics = {t["name"] for t in self.server.call("GET", f"/proxies/{self.name}/toxics")}
        for toxic, _ in _CUT:
            if toxic in toxics:
                self.server.call("DELETE", f"/proxies/{self.name}/toxics/{toxic}")

    def refuse(self) -> None:
        """Refuse connections and close the open ones, as a server that is down does."""
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": False})

    def accept(self) -> None:
        """Accept connections again."""
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": True})

    def remove(self) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}")
