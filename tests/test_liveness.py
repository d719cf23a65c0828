"""A controller's liveness bookkeeping, without I/O: numbered heartbeats, echoes of this
instance only, suspicion by arrival time, fencing below a majority."""

from __future__ import annotations

from datetime import UTC, datetime

from controller.liveness import Liveness
from pipeline.events import Echo, Heartbeat

DCS = ("dc1", "dc2", "dc3")
WALL = datetime(2026, 11, 30, tzinfo=UTC)


def heartbeat(
    dc: str, number: int, echoes: tuple[Echo, ...] = (), instance: str = "i"
) -> Heartbeat:
    return Heartbeat("e", WALL, dc, instance, (dc,), number=number, echoes=echoes)


def test_heartbeats_are_numbered_and_echo_the_latest_heard() -> None:
    me = Liveness("dc1", DCS, timeout_s=10.0)
    first = me.next_heartbeat(0.0, WALL)
    assert first.number == 1 and first.echoes == () and first.alive_dcs == ("dc1",)
    assert me.receive(heartbeat("dc2", 7), now=1.0)
    assert not me.receive(heartbeat("dc2", 6), now=1.5), "an older one, delivered twice"
    assert not me.receive(heartbeat("dc1", 99), now=1.5), "this DC's own"
    second = me.next_heartbeat(2.0, WALL)
    assert second.number == 2
    assert second.echoes == (Echo("dc2", "i", 7, 1000),)
    assert second.alive_dcs == ("dc1", "dc2")


def test_a_dc_is_suspected_once_silent_for_the_timeout_and_a_dc_alone_is_fenced() -> None:
    me = Liveness("dc1", DCS, timeout_s=10.0)
    me.receive(heartbeat("dc2", 1), now=0.0)
    me.receive(heartbeat("dc3", 1), now=5.0)
    assert me.suspected(9.0) == frozenset() and not me.fenced(9.0)
    assert me.suspected(12.0) == {"dc2"} and not me.fenced(12.0)
    assert me.suspected(16.0) == {"dc2", "dc3"} and me.fenced(16.0)
    me.receive(heartbeat("dc2", 2), now=17.0)
    assert not me.fenced(17.0)


def test_only_echoes_of_this_instance_can_carry_its_lease() -> None:
    me = Liveness("dc1", DCS, timeout_s=10.0, controller_id="mine")
    me.next_heartbeat(0.0, WALL)
    me.receive(heartbeat("dc2", 1, (Echo("dc1", "an-earlier-start", 1, 5),)), now=1.0)
    assert "dc1" not in me.views()["dc2"].echoes
    me.receive(heartbeat("dc2", 2, (Echo("dc1", "mine", 1, 5),)), now=2.0)
    assert me.views()["dc2"].echoes["dc1"] == 1
    assert me.sent_at() == {1: 0.0}
