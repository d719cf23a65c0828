"""The controller worker (``docs/ownership.md``): liveness, leases, promises, claims, takeover.

One controller per DC is active: it holds the DC's controller advisory lock; others wait as
standbys and try the lock every interval. The active one, on a single loop:

- every ``interval_s`` publishes this DC's heartbeat to the local ``coopr.heartbeat``
  (MirrorMaker 2 carries it to every other DC), carrying its committed promises and the owner
  of every shard as it applies them; it reads every other DC's heartbeats from their end (what
  arrived before it started says nothing about now);
- reads every DC's claims (``coopr.ownership``, local and mirrored, from the beginning: the
  topic is compacted, one claim per shard) and records each one; a claim above this DC's
  promise is promised (committed before the next heartbeat announces it), and a claim by
  another DC above the shard's epoch here makes that DC the owner as this DC sees it;
- renews the leases of the shards this DC owns into ``shard_ownership.lease_until``, from the
  echoes of its heartbeats (a controller that stalls stops renewing: writes stop when the lease
  ends, whatever the controller does);
- when a majority suspects a shard's owner and this DC is the shard's claimant, drains the
  owner's mirrored topic (bounded), claims with a fresh epoch of its own and the cut, waits for
  a majority of promises (and for the old lease to end), and takes the shard over.

Heartbeats are sent with a delivery timeout of a few intervals: one that could not leave in
time is dropped rather than delivered late, when its echoes would be stale.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge

from controller.claims import Claiming, Phase, PromiseBook, drained
from controller.ledger import Ledger, OwnershipStore, Request
from controller.liveness import Liveness
from controller.protocol import (
    Promise,
    claimant,
    lease_end,
    majority,
    next_epoch,
    owner_ready_at,
)
from controller.report import latest_heartbeats
from controller.witness import WitnessStore
from pipeline.admin import end_offsets
from pipeline.codec import decode, encode
from pipeline.db import connect
from pipeline.errors import CodecError, PipelineError, UnreachableError, first_line
from pipeline.events import (
    Heartbeat,
    OwnershipChange,
    OwnershipChangeReason,
    ShardOwnerView,
    ShardPromise,
)
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.ownership import Claim, ShardOwner
from pipeline.shutdown import Closeable
from pipeline.topics import HEARTBEAT_TOPIC, OWNERSHIP_TOPIC, mirrored, shard_topic
from pipeline.topology import Topology

__all__ = ["Controller", "ControllerConfig"]

log = get_logger(__name__)

SENT = Counter("coopr_controller_heartbeats_sent_total", "Heartbeats published.", ["dc"])
HEARD = Gauge("coopr_controller_dcs_heard", "Other DCs heard within the failure timeout.", ["dc"])
SUSPECTED = Gauge("coopr_controller_dcs_suspected", "Other DCs this DC suspects.", ["dc"])
FENCED = Gauge("coopr_controller_fenced", "1 while this DC hears fewer than a majority.", ["dc"])
ACTIVE = Gauge("coopr_controller_active", "1 while this controller holds the DC's lock.", ["dc"])
OWNED = Gauge("coopr_controller_shards_owned", "Shards this DC owns.", ["dc"])
LEASED = Gauge(
    "coopr_controller_shards_writable",
    "Shards this DC owns, not read-only, whose lease runs: the ones it accepts writes for.",
    ["dc"],
)
CLAIMS = Counter("coopr_controller_claims_total", "Claims this DC published.", ["dc"])
TAKEOVERS = Counter("coopr_controller_takeovers_total", "Shards this DC took over.", ["dc"])
FAILOVER_S = Gauge(
    "coopr_controller_last_takeover_seconds",
    "Seconds from the start of this DC's latest successful claim (the owner suspected by a"
    " majority) to its takeover.",
    ["dc"],
)

#: Longest wait, in seconds, for the relay to publish a shard being moved away.
_MOVE_FLUSH_S = 30.0
#: How often, in seconds, a handover in progress is moved on between heartbeat rounds: its
#: writes are refused until it ends, and a round (1 s by default) is long against that.
_HANDOVER_TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Settings of one controller. Times in seconds.

    ``lease_s`` must be below ``failure_timeout_s``: the difference absorbs clock rate
    differences and scheduling delays (``docs/ownership.md``, "Assumptions")."""

    dc: str
    kafka: KafkaSettings
    topology: Topology
    #: libpq DSN of this DC's database; None for a witness, which keeps its promises in
    #: its own heartbeats (``controller/witness.py``).
    database: str | None = field(repr=False)
    interval_s: float = 1.0
    failure_timeout_s: float = 10.0
    lease_s: float = 5.0
    #: Longest wait for this DC's applier to reach the end of the old owner's topic.
    drain_timeout_s: float = 2.0

    @property
    def dcs(self) -> tuple[str, ...]:
        return tuple(dc.name for dc in self.topology.dcs)


class Controller(Closeable):
    """The controller worker; :meth:`run` returns when ``stop`` is set."""

    def __init__(self, config: ControllerConfig, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.liveness = Liveness(config.dc, config.dcs, config.failure_timeout_s)
        timeout_ms = int(max(1000, 3 * config.interval_s * 1000))
        self._producer = Producer(
            config.kafka.producer(**{"linger.ms": 0, "message.timeout.ms": timeout_ms})
        )
        self._consumer = Consumer(config.kafka.consumer(f"coopr-controller-{config.dc}"))
        self._admin = AdminClient(config.kafka.admin())
        self._conn = None if config.database is None else connect(config.database)
        self._ledger = None if self._conn is None else Ledger(self._conn, config.dc)
        self._store: OwnershipStore = self._ledger or WitnessStore(config.dc, config.topology)
        self._labels = {"dc": config.dc}
        self._log = log.bind(dc=config.dc, controller_id=self.liveness.controller_id)
        self._index = config.dcs.index(config.dc)
        self.active = False
        self.last_error: str | None = None
        self._owners: dict[int, ShardOwner] = {}
        self._promises: dict[int, Promise] = {}
        self._claims: dict[int, Claim] = {}
        self._book = PromiseBook()
        self._claiming: dict[int, Claiming] = {}
        #: DCs that have run a controller: their leases are finite (see _claimable).
        self._leased_dcs: set[str] = set()
        self._started_at = 0.0
        #: Moves in progress: request ID -> when this controller started on it.
        self._moves: dict[int, float] = {}

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(self.config.interval_s)
        if self._conn is not None:
            self._conn.close()

    def _data(self) -> Ledger:
        """This data DC's database; a witness never gets here: it owns, claims and takes
        over nothing, and takes no operator's requests."""
        if self._ledger is None:
            raise PipelineError(f"{self.config.dc} is a witness: it has no database")
        return self._ledger

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless fenced or failing; lists the DCs heard and suspected, the shards
        owned and writable, and the claims in progress."""
        now = time.monotonic()
        fenced = self.liveness.fenced(now)
        mine = [o for o in self._owners.values() if o.owner_dc == self.config.dc]
        details = {
            "dc": self.config.dc,
            "controller_id": self.liveness.controller_id,
            "active": self.active,
            # Within one failure timeout of its start a controller counts every DC as heard.
            "starting": now - self.liveness.started_at < self.config.failure_timeout_s,
            "heard": sorted(self.liveness.heard(now)),
            "suspected": sorted(self.liveness.suspected(now)),
            "fenced": fenced,
            "last_heard_s": {k: round(v, 3) for k, v in self.liveness.last_heard(now).items()},
            "owned": sorted(o.shard for o in mine),
            "writable": sorted(o.shard for o in mine if o.writable and o.leased),
            "claiming": {str(c.shard): c.phase.value for c in self._claiming.values()},
            "last_error": self.last_error,
        }
        return not fenced and self.last_error is None, details

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Wait for the DC's controller lock, then run until ``stop`` is set. Raises
        :class:`UnreachableError` when the database fails: without it this DC can serve none
        of its shards, so its controller stops sending heartbeats (the others fail its shards
        over) and exits, for a standby or a restart to take over."""
        try:
            self._run()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            raise UnreachableError(
                f"the database of {self.config.dc} failed ({first_line(e)}): the controller"
                " stops; a standby or a restart takes over"
            ) from None

    def _run(self) -> None:
        while not self._store.try_lock():
            if self.stop.wait(self.config.interval_s):
                return
        self.active = True
        ACTIVE.labels(**self._labels).set(1)
        self._start()
        next_send = next_step = time.monotonic()
        was_fenced = False
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                self._send(now)
                next_send = max(next_send + self.config.interval_s, now)
                was_fenced = self._observe(now, was_fenced)
                # Echoes renew leases as they arrive; this round renews them when none can
                # (a DC a manual failover left alone supports its leases by itself).
                self._renew(now)
                self._act(now)
                took = time.monotonic() - now
                if took > self.config.interval_s:
                    # Heartbeats wait for this loop: a slow round delays them all.
                    self._log.warning("controller round slow", took_s=round(took, 3))
            handing_over = self._handing_over()
            wait = _HANDOVER_TICK_S if handing_over else 0.1
            msg = self._consumer.poll(max(0.0, min(wait, next_send - time.monotonic())))
            if msg is not None:
                self._receive(msg)
            if handing_over and time.monotonic() >= next_step:
                self._step_handovers(time.monotonic())
                next_step = time.monotonic() + _HANDOVER_TICK_S
        self._log.info("controller stopped")

    def _handing_over(self) -> bool:
        """Whether a move waits for its relay here, or a claim for promises or its cut."""
        return bool(self._moves) or any(c.phase is Phase.PROMISING for c in self._claiming.values())

    def _step_handovers(self, now: float) -> None:
        """Between rounds: a started move claims as soon as its relay has flushed, and a claim
        takes over as soon as its promises and its cut are there (the same steps as in
        :meth:`_act`, sooner)."""
        if self._moves:
            for request in self._store.open_requests():
                if request.kind == "move" and request.started:
                    self._move(request, now)
        for claiming in list(self._claiming.values()):
            if claiming.phase is Phase.PROMISING:
                self._await_promises(claiming, now)

    def _start(self) -> None:
        """Take charge: learn every claim so far, then make leases finite, before the first
        heartbeat (a DC's first heartbeat tells the others its leases are finite)."""
        others = [dc for dc in self.config.dcs if dc != self.config.dc]
        claim_topics = [OWNERSHIP_TOPIC, *(mirrored(dc, OWNERSHIP_TOPIC) for dc in others)]
        for dc in others:
            if self._has_heartbeats(dc):
                self._leased_dcs.add(dc)
        if isinstance(self._store, WitnessStore):
            mine = latest_heartbeats(self.config.kafka, self.config.topology, self.config.dc)
            if self.config.dc in mine:
                self._store.recover(
                    (p.shard, Promise(p.epoch, p.heard_owner))
                    for p in mine[self.config.dc].promises
                )
        read_to = self._catch_up_claims(claim_topics)
        self._reload()
        self.liveness.excluded = self._store.exclusions()
        ended = self._store.end_static_leases()
        self._started_at = self.liveness.started_at = time.monotonic()
        # Claims go on from where the catch-up stopped: one mirrored in between is not missed.
        self._consumer.assign(
            [TopicPartition(mirrored(dc, HEARTBEAT_TOPIC), 0, OFFSET_END) for dc in others]
            + [TopicPartition(t, 0, read_to.get(t, OFFSET_BEGINNING)) for t in claim_topics]
        )
        self._log.info(
            "controller active",
            dcs=len(self.config.dcs),
            static_leases_ended=ended,
            claims=len(self._claims),
            leased_dcs=sorted(self._leased_dcs),
        )

    def _has_heartbeats(self, dc: str) -> bool:
        """Whether ``dc`` ever sent a heartbeat here (its mirrored topic holds a record)."""
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(mirrored(dc, HEARTBEAT_TOPIC), 0), timeout=5.0
            )
        except KafkaException:
            return False
        return int(high) > 0

    def _catch_up_claims(self, topics: list[str]) -> dict[str, int]:
        """Read every claim topic from its beginning to the end it had when this started
        (bounded: at most 30 s); returns the next offset to read of each topic it read."""
        ends: dict[str, int] = {}
        for topic in topics:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, 0), timeout=5.0
                )
            except KafkaException:
                continue
            if high > 0:
                ends[topic] = int(high)
        read_to = {topic: 0 for topic in ends}
        if not ends:
            return read_to
        self._consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in ends])
        deadline = time.monotonic() + 30.0
        while (
            any(read_to[t] < ends[t] for t in ends)
            and time.monotonic() < deadline
            and not self.stop.is_set()
        ):
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            self._receive(msg)
            read_to[msg.topic() or ""] = (msg.offset() or 0) + 1
        self._consumer.unassign()
        return read_to

    def _reload(self) -> None:
        self._owners = self._store.ownership()
        self._promises = self._store.promises()
        self._claims = self._store.claims()
        mine = [o for o in self._owners.values() if o.owner_dc == self.config.dc]
        OWNED.labels(**self._labels).set(len(mine))
        LEASED.labels(**self._labels).set(sum(1 for o in mine if o.writable and o.leased))

    # --- heartbeats ---------------------------------------------------------------------

    def _send(self, now: float) -> None:
        heartbeat = self.liveness.next_heartbeat(
            now,
            datetime.now(UTC),
            promises=tuple(
                ShardPromise(s, p.epoch, p.heard_owner) for s, p in sorted(self._promises.items())
            ),
            owners=tuple(
                ShardOwnerView(o.shard, o.owner_dc, o.epoch, o.writable and o.leased)
                for o in self._owners.values()
            ),
        )
        try:
            self._producer.produce(
                HEARTBEAT_TOPIC,
                key=self.config.dc.encode(),
                value=encode(heartbeat),
                on_delivery=self._on_delivery,
            )
        except BufferError:
            self.last_error = "the local Kafka takes no more heartbeats"
        self._producer.poll(0)
        SENT.labels(**self._labels).inc()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self.last_error = None if err is None else f"heartbeat not delivered: {err.str()}"

    def _receive(self, msg: Message) -> None:
        if msg.error() is not None or msg.value() is None:
            return
        try:
            event = decode(msg.value() or b"")
        except CodecError as e:
            self._log.warning("undecodable record ignored", topic=msg.topic(), error=first_line(e))
            return
        now = time.monotonic()
        if isinstance(event, Heartbeat):
            if self.liveness.receive(event, now):
                self._leased_dcs.add(event.dc)
                if event.dc in self.liveness.excluded:
                    self._store.end_exclusion(event.dc)
                    self.liveness.excluded.discard(event.dc)
                    self._log.warning("heard again: back in the majority", excluded_dc=event.dc)
                for p in event.promises:
                    self._book.note(event.dc, p.shard, Promise(p.epoch, p.heard_owner), now)
                    if p.epoch > self._promised(p.shard):
                        self._promise(p.shard, p.epoch, now)
                self._renew(now)
        elif isinstance(event, OwnershipChange):
            claim = Claim.of(event)
            # A DC commits its promise of a claim's epoch before it publishes the claim.
            topic = msg.topic() or ""
            publisher = self.config.dc if topic == OWNERSHIP_TOPIC else topic.split(".", 1)[0]
            self._book.note(publisher, claim.shard, Promise(claim.epoch, True), now)
            self._see_claim(claim, now)

    def _observe(self, now: float, was_fenced: bool) -> bool:
        heard = self.liveness.heard(now)
        suspected = self.liveness.suspected(now)
        fenced = self.liveness.fenced(now)
        HEARD.labels(**self._labels).set(len(heard))
        SUSPECTED.labels(**self._labels).set(len(suspected))
        FENCED.labels(**self._labels).set(1 if fenced else 0)
        if fenced != was_fenced:
            self._log.warning(
                "fenced: hears fewer than a majority" if fenced else "hears a majority again",
                heard=sorted(heard),
            )
        return fenced

    # --- promises, claims, leases -------------------------------------------------------

    def _promised(self, shard: int) -> int:
        held = self._promises.get(shard)
        return 0 if held is None else held.epoch

    def _promise(self, shard: int, epoch: int, now: float) -> None:
        owner = self._owners.get(shard)
        # A controller that started less than T ago does not know what its predecessor in
        # this DC echoed: it counts as having heard the owner, so the claimant waits L.
        heard_owner = (
            owner is None
            or owner.owner_dc == self.config.dc
            or owner.owner_dc in self.liveness.heard(now)
            or now - self._started_at < self.config.failure_timeout_s
        )
        if self._store.promise(shard, epoch, heard_owner):
            self._log.info("promised", shard=shard, epoch=epoch, heard_owner=heard_owner)
        mine = self._claiming.get(shard)
        if mine is not None and (mine.claim is None or mine.claim.epoch < epoch):
            self._log.warning("claim given up: a higher epoch was promised", shard=shard)
            del self._claiming[shard]
        self._reload()
        self._book.note(self.config.dc, shard, self._promises[shard], now)

    def _see_claim(self, claim: Claim, now: float) -> None:
        if self._store.see_claim(claim):
            self._log.info(
                "claim seen",
                shard=claim.shard,
                epoch=claim.epoch,
                to_dc=claim.to_dc,
                from_dc=claim.from_dc,
                cut=claim.cut,
                reason=claim.reason.value,
            )
        if claim.epoch > self._promised(claim.shard):
            self._promise(claim.shard, claim.epoch, now)
        else:
            self._reload()
        if claim.to_dc == self.config.dc:
            # Made on this DC's behalf (a planned move here): seen through from now on.
            self._resume_claims(now)

    def _renew(self, now: float) -> None:
        """Extend the lease of every shard this DC owns and has promised nothing above."""
        ends: dict[tuple[int, int], float] = {}
        for o in self._owners.values():
            if o.owner_dc != self.config.dc or self._promised(o.shard) > o.epoch:
                continue
            end = self._lease_end(o.shard, o.epoch, now)
            if end is not None:
                ends[(o.shard, o.epoch)] = end
        if not ends:
            return
        clock = self._data().read_clock(time.monotonic)
        if self._data().renew({key: clock.at(end) for key, end in ends.items()}):
            was = {o.shard for o in self._owners.values() if o.leased}
            self._reload()
            regained = {o.shard for o in self._owners.values() if o.leased} - was
            if regained:
                self._log.info("leases running", shards=sorted(regained))

    def _lease_end(self, shard: int, epoch: int, now: float) -> float | None:
        """When this DC's lease on (``shard``, ``epoch``) ends, counting the voters only; a
        DC left alone by a manual failover supports its lease by itself."""
        voters = self.liveness.voters()
        if majority(len(voters)) == 1:
            return now + self.config.lease_s
        views = {dc: v for dc, v in self.liveness.views().items() if dc in voters}
        return lease_end(
            shard,
            epoch,
            self.config.dc,
            views,
            self.liveness.sent_at(),
            len(voters),
            self.config.lease_s,
        )

    def _act(self, now: float) -> None:
        """Start claims the views call for and move the ones in progress on."""
        suspected = self.liveness.suspected(now)
        fenced = self.liveness.fenced(now)
        for shard, owner in sorted(self._owners.items()):
            if shard in self._claiming or fenced or not self._claimable(owner, suspected, now):
                continue
            self._claiming[shard] = Claiming(
                shard,
                owner.owner_dc,
                owner.epoch,
                started_at=now,
                drain_until=now + self.config.drain_timeout_s,
            )
            self._log.warning(
                "owner suspected by a majority: claiming", shard=shard, owner=owner.owner_dc
            )
        self._resume_claims(now)
        for request in self._store.open_requests():
            if request.kind == "move":
                self._move(request, now)
            else:
                self._manual_failover(request, now, suspected)
        draining = [c for c in self._claiming.values() if c.phase is Phase.DRAINING]
        drained_now = self._drained(draining, now) if draining else []
        if drained_now:
            self._claim(drained_now, now)
        for claiming in list(self._claiming.values()):
            if claiming.phase is Phase.PROMISING:
                self._await_promises(claiming, now)

    def _move(self, request: Request, now: float) -> None:
        """A planned move of a shard this DC owns (``docs/ownership.md``, "Planned
        handover"): read-only, the relay flushes, then the claim on the target's behalf."""
        shard, target = request.shard, request.to_dc
        assert shard is not None and target is not None
        owner = self._owners.get(shard)
        if not request.started:
            refusal = self._move_refusal(shard, target, owner, now)
            if refusal is not None:
                self._data().finish_request(request, f"refused: {refusal}")
                self._log.warning("move refused", shard=shard, to_dc=target, reason=refusal)
                return
            self._data().set_writable(shard, False)
            self._data().start_request(request)
            self._log.info("moving", shard=shard, to_dc=target)
        elif owner is None or owner.owner_dc != self.config.dc:
            # Started by a predecessor of this controller, which was stopped after the claim.
            moved = owner is not None and owner.owner_dc == target
            self._data().finish_request(request, "done" if moved else "refused: ownership moved")
            return
        started = self._moves.setdefault(request.id, now)
        assert owner is not None
        if self._data().unpublished(shard, owner.epoch):
            if now - started > _MOVE_FLUSH_S:
                self._data().set_writable(shard, True)
                self._data().finish_request(
                    request,
                    f"refused: the relay did not publish shard {shard} in {_MOVE_FLUSH_S:g} s",
                )
                del self._moves[request.id]
            return
        last_seq = self._data().last_seqs()[shard]
        claim = Claim(
            shard=shard,
            epoch=next_epoch(
                [owner.epoch, self._promised(shard), self._book.highest(shard)],
                self.config.dcs.index(target),
            ),
            from_dc=self.config.dc,
            from_epoch=owner.epoch,
            to_dc=target,
            cut=last_seq,
            reason=OwnershipChangeReason.PLANNED_HANDOVER,
            event_id=str(uuid.uuid4()),
            claimed_at=datetime.now(UTC),
        )
        self._data().claim([(claim, True)])
        self._publish_claims([claim])
        self._data().finish_request(request, "done")
        del self._moves[request.id]
        self._reload()
        self._log.warning(
            "handed over",
            shard=shard,
            to_dc=target,
            epoch=claim.epoch,
            cut=last_seq,
            read_only_s=round(time.monotonic() - started, 3),
        )

    def _move_refusal(
        self, shard: int, target: str, owner: ShardOwner | None, now: float
    ) -> str | None:
        if owner is None or owner.owner_dc != self.config.dc:
            return f"{self.config.dc} does not own shard {shard}"
        if target not in self.config.topology.dc_set(shard) or target == self.config.dc:
            sets = ", ".join(d for d in self.config.topology.dc_set(shard) if d != self.config.dc)
            return f"{target} holds no replica of shard {shard} (its replicas: {sets})"
        if target in self.liveness.suspected(now):
            return f"{target} is suspected"
        if not (owner.writable and owner.leased):
            return f"shard {shard} is not writable here"
        return None

    def _manual_failover(self, request: Request, now: float, suspected: frozenset[str]) -> None:
        """The operator's failover away from ``request.from_dc``: claim every shard of it this
        DC is the claimant of, unless a majority still hears it."""
        gone = request.from_dc
        views = self.liveness.views()
        fresh = self.liveness.heard(now)
        heard_by = {self.config.dc, gone} if gone in fresh else set()
        heard_by |= {d for d in fresh if d in views and d != gone and gone in views[d].hears}
        if gone == self.config.dc:
            outcome = "refused: a DC cannot fail over away from itself"
        elif len(heard_by) >= majority(len(self.config.dcs)):
            outcome = f"refused: {gone} is still heard by {', '.join(sorted(heard_by))}"
        else:
            shards = [
                o
                for o in self._owners.values()
                if o.owner_dc == gone
                and o.shard not in self._claiming
                and claimant(self.config.topology, o.shard, gone, suspected | {gone})
                == self.config.dc
            ]
            for o in shards:
                self._claiming[o.shard] = Claiming(
                    o.shard,
                    gone,
                    o.epoch,
                    started_at=now,
                    drain_until=now + self.config.drain_timeout_s,
                    reason=OwnershipChangeReason.MANUAL,
                )
            outcome = f"done: claiming {len(shards)} shards"
            self.liveness.excluded.add(gone)
        self._data().finish_request(request, outcome)
        self._log.warning("manual failover", from_dc=gone, outcome=outcome)

    def _resume_claims(self, now: float) -> None:
        """See through this DC's own claims that no claim in progress here stands for: ones
        published before this controller started (by it or by its predecessor)."""
        for shard, claim in sorted(self._claims.items()):
            held = self._owners.get(shard)
            if (
                claim.to_dc == self.config.dc
                and shard not in self._claiming
                and held is not None
                and held.epoch < claim.epoch
                and max(self._promised(shard), self._book.highest(shard)) <= claim.epoch
            ):
                self._claiming[shard] = Claiming(
                    shard,
                    claim.from_dc,
                    claim.from_epoch,
                    started_at=now,
                    drain_until=now,
                    phase=Phase.PROMISING,
                    claim=claim,
                    claimed_at=now,
                )
                self._book.note(self.config.dc, shard, self._promises[shard], now)
                self._log.info("resuming claim", shard=shard, epoch=claim.epoch)

    def _reached(self, claim: Claim) -> bool:
        """Whether this DC's applier has applied ``claim``'s from-epoch up to its cut (a claim
        made here on this DC's own position always has; one made for it by the old owner, in a
        planned move, once the last events arrived)."""
        if claim.cut == 0:
            return True
        position = self._data().applied_position(claim.shard)
        return position is not None and position >= (claim.from_epoch, claim.cut)

    def _claimable(self, owner: ShardOwner, suspected: frozenset[str], now: float) -> bool:
        """Whether this DC claims ``owner.shard`` now. Never from a DC that has not run a
        controller: its lease is endless until it does (static ownership)."""
        shard, dc = owner.shard, owner.owner_dc
        if dc == self.config.dc or dc not in self._leased_dcs:
            return False
        if not self.liveness.suspected_by_majority(dc, now):
            return False
        if claimant(self.config.topology, shard, dc, suspected) != self.config.dc:
            return False
        # A live DC's claim above the owner's epoch is under way: leave it to finish.
        return max(self._promised(shard), self._book.highest(shard)) <= owner.epoch or (
            self._claims.get(shard) is not None
            and self._claims[shard].to_dc in suspected
            and self._claims[shard].epoch > owner.epoch
        )

    def _drained(self, draining: list[Claiming], now: float) -> list[Claiming]:
        """The claims among ``draining`` whose drain is over at ``now``. A topic whose end
        cannot be read counts as not reached: its drain ends at its deadline."""
        topics = {c.shard: mirrored(c.from_dc, shard_topic(c.shard)) for c in draining}
        ends = end_offsets(self._admin, topics.values(), timeout_s=self.config.interval_s)
        return [
            c
            for c in draining
            if drained(
                c,
                self._data().applied_offset(topics[c.shard]) or 0,
                ends.get(topics[c.shard], sys.maxsize),
                now,
                self.config.interval_s,
            )
        ]

    def _claim(self, drained_now: list[Claiming], now: float) -> None:
        """Claim the shards whose drain is over: commit the claims (and this DC's promises
        of them) in one transaction, then publish them."""
        heard = self.liveness.heard(now)
        made: list[tuple[Claim, bool]] = []
        for claiming in drained_now:
            shard = claiming.shard
            position = self._data().applied_position(shard)
            cut = position[1] if position is not None and position[0] == claiming.from_epoch else 0
            seen = [
                claiming.from_epoch,
                self._promised(shard),
                self._book.highest(shard),
                *(c.epoch for c in [self._claims.get(shard)] if c is not None),
            ]
            claim = Claim(
                shard=shard,
                epoch=next_epoch(seen, self._index),
                from_dc=claiming.from_dc,
                from_epoch=claiming.from_epoch,
                to_dc=self.config.dc,
                cut=cut,
                reason=claiming.reason,
                event_id=str(uuid.uuid4()),
                claimed_at=datetime.now(UTC),
            )
            made.append((claim, claiming.from_dc in heard))
            claiming.claim, claiming.claimed_at, claiming.phase = claim, now, Phase.PROMISING
        self._data().claim(made)
        self._publish_claims([claim for claim, _ in made])
        for claim, heard_owner in made:
            self._book.note(self.config.dc, claim.shard, Promise(claim.epoch, heard_owner), now)
            CLAIMS.labels(**self._labels).inc()
            self._log.warning(
                "claimed",
                shard=claim.shard,
                epoch=claim.epoch,
                from_dc=claim.from_dc,
                from_epoch=claim.from_epoch,
                cut=claim.cut,
                drained_s=round(now - self._claiming[claim.shard].started_at, 3),
            )
        self._reload()

    def _publish_claims(self, claims: list[Claim]) -> None:
        """Publish committed claims to the local ``coopr.ownership``; waits for them at most
        one interval (a claim not delivered is published again by nobody: it stays committed,
        and is seen through as this DC's word)."""
        for claim in claims:
            self._producer.produce(
                OWNERSHIP_TOPIC, key=str(claim.shard).encode(), value=encode(claim.event())
            )
        self._producer.flush(self.config.interval_s)

    def _await_promises(self, claiming: Claiming, now: float) -> None:
        claim = claiming.claim
        assert claim is not None
        if max(self._book.highest(claim.shard), self._promised(claim.shard)) > claim.epoch:
            self._log.warning("claim given up: a higher epoch was promised", shard=claim.shard)
            del self._claiming[claim.shard]
            return
        if claiming.reason is OwnershipChangeReason.MANUAL:
            # The operator's decision stands for the majority; the wait ends the old lease.
            ready: float | None = claiming.claimed_at + self.config.lease_s
        else:
            ready = owner_ready_at(
                claim.epoch,
                claim.from_dc,
                self._book.of(claim.shard, claim.epoch),
                len(self.config.dcs),
                self.config.lease_s,
            )
        if ready is None or now < ready or not self._reached(claim):
            return
        end = self._lease_end(claim.shard, claim.epoch, now)
        until = None if end is None else self._data().read_clock(time.monotonic).at(end)
        done = self._data().take_over(claim, until)
        del self._claiming[claim.shard]
        self._reload()
        TAKEOVERS.labels(**self._labels).inc()
        took = time.monotonic() - claiming.started_at
        FAILOVER_S.labels(**self._labels).set(took)
        self._log.warning(
            "took over",
            shard=claim.shard,
            epoch=claim.epoch,
            from_dc=claim.from_dc,
            cut=claim.cut,
            clusters=done.clusters,
            restarts=done.restarts,
            took_s=round(took, 3),
        )
