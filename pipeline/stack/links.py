"""The stack's links between DCs: one toxiproxy proxy per ordered DC pair.

Kafka clients dial the addresses a broker advertises, not the bootstrap address they were
given, so one proxy in front of a bootstrap port would be bypassed after the first metadata
answer. Each broker X therefore has one listener per DC Y that reads it, advertised at the
address of the link ``X->Y``; a client in Y given that address as bootstrap is told the same
address again, and every byte from X to Y passes ``X->Y``. The ports are in
:mod:`pipeline.stack.layout`; the links' state (cut, slow) lives in the toxiproxy server only,
so it is what ``stack status`` shows, and a restarted toxiproxy starts with every link healed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import StackError
from pipeline.stack.layout import link_port, listener_port, toxiproxy_port
from pipeline.stack.toxiproxy import Proxy, Toxiproxy, toxic_state
from pipeline.topology import Topology

__all__ = [
    "Link",
    "LinkStatus",
    "check_links",
    "cut_one_way",
    "ensure_links",
    "heal",
    "link_status",
    "links",
    "partition",
    "slow",
    "slow_one_way",
]


@dataclass(frozen=True, slots=True)
class Link:
    """The link ``source->target``: ``target``'s clients reach ``source``'s broker at
    ``127.0.0.1:port``, which forwards to ``upstream`` (the broker's listener for ``target``)."""

    source: str
    target: str
    port: int
    upstream: str

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """One line of ``stack status``'s links: ``state`` is ``ok``, ``cut``, ``slow N ms``,
    ``cut, slow N ms``, ``missing`` (no such proxy) or ``unknown`` (toxiproxy unreachable);
    ``latency_ms`` is the delay added each way."""

    link: Link
    state: str
    cut: bool
    latency_ms: int


def links(topology: Topology, dc: str | None = None) -> list[Link]:
    """Every link of the stack, or those into and out of ``dc``."""
    if dc is not None:
        topology.dc(dc)  # an unknown name is an error naming the known ones
    return [
        Link(
            s.name,
            t.name,
            link_port(topology, s.name, t.name),
            f"127.0.0.1:{listener_port(topology, s.name, t.name)}",
        )
        for s in topology.dcs
        for t in topology.dcs
        if s.name != t.name and dc in (None, s.name, t.name)
    ]


def _server(topology: Topology) -> Toxiproxy:
    return Toxiproxy(toxiproxy_port(topology))


def _proxies(topology: Topology, dc: str | None) -> list[Proxy]:
    server = _server(topology)
    existing = server.proxies()
    found = [Proxy(server, link.name, link.port) for link in links(topology, dc)]
    missing = [p.name for p in found if p.name not in existing]
    if missing:
        raise StackError(
            f"the links {', '.join(missing)} do not exist: run `coopr-pipeline stack up`"
        )
    return found


def ensure_links(topology: Topology) -> None:
    """Create every link that the toxiproxy server lacks; existing ones keep their state."""
    server = _server(topology)
    for link in links(topology):
        server.ensure_proxy(link.name, link.port, link.upstream)


def partition(topology: Topology, dc: str) -> list[Link]:
    """Cut every link into and out of ``dc``: data stops and connections hang."""
    for proxy in _proxies(topology, dc):
        proxy.cut()
    return links(topology, dc)


def _one_way(topology: Topology, source: str, target: str) -> tuple[Link, Proxy]:
    (link,) = (link for link in links(topology, source) if link.target == target)
    server = _server(topology)
    if link.name not in server.proxies():
        raise StackError(f"the link {link.name} does not exist: run `coopr-pipeline stack up`")
    return link, Proxy(server, link.name, link.port)


def cut_one_way(topology: Topology, source: str, target: str) -> Link:
    """Cut the link ``source->target`` only: ``target`` stops hearing ``source``, while
    ``source`` still hears ``target`` (``heal`` undoes it)."""
    link, proxy = _one_way(topology, source, target)
    proxy.cut()
    return link


def slow_one_way(topology: Topology, source: str, target: str, latency_ms: int) -> Link:
    """Delay data on the link ``source->target`` only by ``latency_ms`` ms (``heal`` undoes
    it)."""
    if latency_ms < 0:
        raise StackError(f"a latency is at least 0 ms, not {latency_ms}")
    link, proxy = _one_way(topology, source, target)
    proxy.slow(latency_ms)
    return link


def heal(topology: Topology, dc: str | None = None) -> list[Link]:
    """Remove every cut and delay from ``dc``'s links, or from all links."""
    for proxy in _proxies(topology, dc):
        proxy.heal()
    return links(topology, dc)


def slow(topology: Topology, dc: str, latency_ms: int) -> list[Link]:
    """Delay data on every link into and out of ``dc`` by ``latency_ms`` ms each way."""
    if latency_ms < 0:
        raise StackError(f"a latency is at least 0 ms, not {latency_ms}")
    for proxy in _proxies(topology, dc):
        proxy.slow(latency_ms)
    return links(topology, dc)


def link_status(topology: Topology) -> list[LinkStatus]:
    """Every link with its state, read from the toxiproxy server."""
    try:
        existing = _server(topology).proxies()
    except StackError:
        return [LinkStatus(link, "unknown", False, 0) for link in links(topology)]
    rows = []
    for link in links(topology):
        proxy = existing.get(link.name)
        if proxy is None:
            rows.append(LinkStatus(link, "missing", False, 0))
            continue
        cut, latency_ms = toxic_state(proxy.get("toxics") or [])
        parts = (["cut"] if cut else []) + ([f"slow {latency_ms} ms"] if latency_ms else [])
        rows.append(LinkStatus(link, ", ".join(parts) or "ok", cut, latency_ms))
    return rows


def check_links(topology: Topology) -> str:
    """Health of the toxiproxy server: ``healthy`` when it answers and has every link."""
    try:
        existing = _server(topology).proxies()
    except StackError as e:
        return f"unreachable: {e}"
    missing = [link.name for link in links(topology) if link.name not in existing]
    return f"links missing: {', '.join(missing)}" if missing else "healthy"
