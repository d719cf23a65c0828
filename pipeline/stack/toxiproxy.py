"""Links that can fail: a toxiproxy server and the proxies on it.

A proxy forwards one TCP port to another. :meth:`Proxy.cut` makes it fail the way a WAN link
does: data stops in both directions and connections hang, open but silent (toxiproxy's
``timeout`` toxic with no timeout); :meth:`Proxy.slow` delays data both ways (``latency``
toxic); :meth:`Proxy.heal` removes both. A refused connection, which disabling a proxy gives,
would let clients fail fast and hide what a hung link does to them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import StackError
from pipeline.stack.processes import TOXIPROXY, ProcessRecord, spawn
from pipeline.stack.runtime import toxiproxy

__all__ = ["Proxy", "Toxiproxy", "start_toxiproxy", "toxic_state"]

_CUT = ("cut-upstream", "upstream"), ("cut-downstream", "downstream")
_SLOW = ("slow-upstream", "upstream"), ("slow-downstream", "downstream")


def start_toxiproxy(port: int, log: Path) -> ProcessRecord:
    """Start a toxiproxy server with its API on ``127.0.0.1:port``."""
    return spawn(
        TOXIPROXY,
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

    def proxies(self) -> dict[str, Any]:
        """Every proxy by name, as the API gives it (``listen``, ``upstream``, ``toxics``)."""
        answer: dict[str, Any] = self.call("GET", "/proxies")
        return answer

    def proxy(self, name: str, listen_port: int, upstream: str) -> Proxy:
        """Create (or replace) the proxy ``name`` from ``127.0.0.1:listen_port`` to
        ``upstream`` (host:port)."""
        if name in self.proxies():
            self.call("DELETE", f"/proxies/{_quote(name)}")
        self.call(
            "POST",
            "/proxies",
            {"name": name, "listen": f"127.0.0.1:{listen_port}", "upstream": upstream},
        )
        return Proxy(self, name, listen_port)

    def ensure_proxy(self, name: str, listen_port: int, upstream: str) -> Proxy:
        """The proxy ``name`` as :meth:`proxy` makes it, but one that already forwards the
        same ports is kept with its toxics (a link cut on purpose stays cut)."""
        current = self.proxies().get(name)
        if (
            current is not None
            and current["listen"] == f"127.0.0.1:{listen_port}"
            and current["upstream"] == upstream
        ):
            return Proxy(self, name, listen_port)
        return self.proxy(name, listen_port, upstream)


def _quote(name: str) -> str:
    # Proxy names such as ``dc1->dc2`` go into the URL's path.
    return urllib.parse.quote(name, safe="")


class Proxy:
    """One proxy: cut and heal (a hung link), refuse and accept (a server down), remove."""

    def __init__(self, server: Toxiproxy, name: str, port: int):
        self.server = server
        self.name = name
        self.port = port

    @property
    def _path(self) -> str:
        return f"/proxies/{_quote(self.name)}"

    def _add(
        self, toxics: tuple[tuple[str, str], ...], kind: str, attributes: dict[str, int]
    ) -> None:
        present = self.toxics()
        for toxic, stream in toxics:
            if toxic in present:
                self.server.call("DELETE", f"{self._path}/toxics/{toxic}")
            self.server.call(
                "POST",
                f"{self._path}/toxics",
                {"name": toxic, "type": kind, "stream": stream, "attributes": attributes},
            )

    def toxics(self) -> dict[str, Any]:
        """The proxy's toxics by name, as the API gives them."""
        return {t["name"]: t for t in self.server.call("GET", f"{self._path}/toxics")}

    def cut(self) -> None:
        """Stop data both ways; connections stay open and hang."""
        self._add(_CUT, "timeout", {"timeout": 0})

    def slow(self, latency_ms: int) -> None:
        """Delay data by ``latency_ms`` ms in each direction (a round trip by twice that)."""
        self._add(_SLOW, "latency", {"latency": latency_ms})

    def heal(self) -> None:
        """Let data flow again at full speed: no cut, no delay (connections cut meanwhile may
        be closed)."""
        present = self.toxics()
        for toxic, _ in (*_CUT, *_SLOW):
            if toxic in present:
                self.server.call("DELETE", f"{self._path}/toxics/{toxic}")

    def refuse(self) -> None:
        """Refuse connections and close the open ones, as a server that is down does."""
        self.server.call("POST", self._path, {"enabled": False})

    def accept(self) -> None:
        """Accept connections again."""
        self.server.call("POST", self._path, {"enabled": True})

    def remove(self) -> None:
        self.server.call("DELETE", self._path)


def toxic_state(toxics: list[dict[str, Any]]) -> tuple[bool, int]:
    """Whether toxics as the API lists them cut a link, and the delay they add (ms, each way)."""
    names = {t["name"]: t for t in toxics}
    cut = any(name in names for name, _ in _CUT)
    latency_ms = max(
        (int(names[n]["attributes"]["latency"]) for n, _ in _SLOW if n in names), default=0
    )
    return cut, latency_ms
