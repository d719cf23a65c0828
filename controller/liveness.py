"""Liveness: the heartbeats a controller sends and the ones it hears (``docs/ownership.md``,
"Heartbeat" and "Suspicion"). No I/O: the worker passes heartbeats in and sends what
:meth:`Liveness.next_heartbeat` returns. Times are seconds of the local monotonic clock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from controller.protocol import PeerView, Promise, heard, majority, suspected_by_majority
from pipeline.events import Echo, Heartbeat, ShardOwnerView, ShardPromise

__all__ = ["Liveness"]


@dataclass(slots=True)
class Liveness:
    """What DC ``dc`` knows of every DC's heartbeats, and the heartbeats it sends.

    ``dcs``: every DC of the topology, witnesses included. ``timeout_s``: a DC not heard for
    that long is suspected."""

    dc: str
    dcs: tuple[str, ...]
    timeout_s: float
    #: When this controller started listening. For one timeout after it, every DC counts as
    #: heard: a controller that just started has not had the time to hear anyone, and must
    #: neither suspect the others nor call itself fenced (which would make the others fail
    #: its shards over at every restart). Leases rest on echoes only, so this grants none.
    started_at: float = float("-inf")
    controller_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: DCs a manual failover took out of the majority until they are heard again.
    excluded: set[str] = field(default_factory=set)
    _number: int = 0
    #: When each recent heartbeat number of this instance was sent: what an echo proves.
    _sent: dict[int, float] = field(default_factory=dict)
    #: The latest heartbeat of every other DC, and when it arrived.
    _latest: dict[str, tuple[Heartbeat, float]] = field(default_factory=dict)

    def receive(self, heartbeat: Heartbeat, now: float) -> bool:
        """Take a heartbeat that arrived at ``now``; False when it says nothing new (this
        DC's own, or an older one of a sender, as a mirror may deliver twice)."""
        if heartbeat.dc == self.dc or heartbeat.dc not in self.dcs:
            return False
        held = self._latest.get(heartbeat.dc)
        if (
            held is not None
            and held[0].controller_id == heartbeat.controller_id
            and heartbeat.number <= held[0].number
        ):
            return False
        self._latest[heartbeat.dc] = (heartbeat, now)
        return True

    def next_heartbeat(
        self,
        now: float,
        wall: datetime,
        promises: tuple[ShardPromise, ...] = (),
        owners: tuple[ShardOwnerView, ...] = (),
    ) -> Heartbeat:
        """The heartbeat to send at ``now`` (``wall``: the same moment by the wall clock, for
        people): numbered, echoing the latest heartbeat of every DC heard, carrying this DC's
        committed ``promises`` and the ``owners`` it applies."""
        self._number += 1
        self._sent[self._number] = now
        for number in [n for n, at in self._sent.items() if now - at > 2 * self.timeout_s]:
            del self._sent[number]
        echoes = tuple(
            Echo(dc, hb.controller_id, hb.number, int((now - at) * 1000))
            for dc, (hb, at) in sorted(self._latest.items())
        )
        return Heartbeat(
            event_id=str(uuid.uuid4()),
            occurred_at=wall,
            dc=self.dc,
            controller_id=self.controller_id,
            alive_dcs=tuple(sorted(self.heard(now) | {self.dc})),
            number=self._number,
            echoes=echoes,
            promises=promises,
            owners=owners,
            fenced=self.fenced(now),
        )

    def views(self) -> dict[str, PeerView]:
        """Every other DC's latest heartbeat as the protocol reads it; echoes count only when
        they echo this controller instance."""
        return {
            dc: PeerView(
                dc,
                arrived_at=at,
                echoes={
                    e.dc: e.number
                    for e in hb.echoes
                    if e.dc != self.dc or e.controller_id == self.controller_id
                },
                hears=frozenset(hb.alive_dcs),
                promises={p.shard: Promise(p.epoch, p.heard_owner) for p in hb.promises},
                fenced=hb.fenced,
            )
            for dc, (hb, at) in self._latest.items()
        }

    def sent_at(self) -> dict[int, float]:
        """When each recent heartbeat number of this instance was sent."""
        return dict(self._sent)

    def heard(self, now: float) -> frozenset[str]:
        """The other DCs heard within the timeout (all of them within the timeout after
        :attr:`started_at`)."""
        if now - self.started_at < self.timeout_s:
            return frozenset(dc for dc in self.dcs if dc != self.dc)
        return heard(self.views(), now, self.timeout_s)

    def suspected(self, now: float) -> frozenset[str]:
        """The other DCs this DC suspects: not heard within the timeout, or fenced by their
        own word."""
        views = self.views()
        fresh = self.heard(now)
        return frozenset(
            dc
            for dc in self.dcs
            if dc != self.dc and (dc not in fresh or (dc in views and views[dc].fenced))
        )

    def suspected_by_majority(self, suspect: str, now: float) -> bool:
        """Whether a majority of all DCs suspects ``suspect``, as far as this DC can tell
        (never within the timeout after :attr:`started_at`)."""
        if now - self.started_at < self.timeout_s:
            return False
        return suspected_by_majority(
            suspect, self.dc, self.views(), now, self.timeout_s, len(self.dcs)
        )

    def voters(self) -> tuple[str, ...]:
        """The DCs whose majority leases and fencing count: all but the excluded ones."""
        return tuple(dc for dc in self.dcs if dc not in self.excluded)

    def fenced(self, now: float) -> bool:
        """True when this DC hears fewer than a majority of the voters, itself included."""
        voters = self.voters()
        return len(self.heard(now) & set(voters)) + 1 < majority(len(voters))

    def last_heard(self, now: float) -> dict[str, float]:
        """Seconds since each other DC's latest heartbeat arrived."""
        return {dc: now - at for dc, (_, at) in sorted(self._latest.items())}
