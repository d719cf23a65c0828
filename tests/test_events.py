"""Event dataclasses: they mirror the latest schemas, and records round-trip through them."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pytest
from hypothesis import given, settings

from pipeline.events import (
    EVENT_TYPES,
    Cluster,
    ClusterAction,
    ClusterStatus,
    Event,
    Job,
    JobStatus,
    Node,
    OwnershipChangeReason,
    ProvisionerAction,
    Task,
    TaskStatus,
)
from pipeline.schemas import catalog
from tests.strategies import events

NESTED = {"Cluster": Cluster, "Job": Job, "Task": Task, "Node": Node}
ENUMS: list[type[enum.Enum]] = [
    ClusterStatus,
    ClusterAction,
    JobStatus,
    TaskStatus,
    ProvisionerAction,
    OwnershipChangeReason,
]


def _named_types() -> dict[str, dict[str, Any]]:
    """Every named type of the latest versions, by short name."""
    found: dict[str, dict[str, Any]] = {}
    for record in catalog().records():
        for full_name, schema in catalog().latest(record).named.items():
            found[full_name.rsplit(".", 1)[-1]] = schema
    return found


def test_every_record_has_an_event_class() -> None:
    assert set(EVENT_TYPES) == set(catalog().records())


@pytest.mark.parametrize("name", sorted(EVENT_TYPES) + sorted(NESTED))
def test_dataclass_fields_are_the_avro_fields_in_order(name: str) -> None:
    cls = EVENT_TYPES.get(name) or NESTED[name]
    schema = _named_types()[name]
    assert [f.name for f in dataclasses.fields(cls)] == [f["name"] for f in schema["fields"]]


@pytest.mark.parametrize("cls", ENUMS, ids=lambda c: c.__name__)
def test_enums_match_the_avro_symbols(cls: type[enum.Enum]) -> None:
    schema = _named_types()[cls.__name__]
    assert [m.value for m in cls] == schema["symbols"]
    assert [m.name for m in cls] == schema["symbols"]


@settings(max_examples=200, deadline=None)
@given(events)
def test_record_round_trip(event: Event) -> None:
    assert type(event).from_record(event.to_record()) == event


@given(events)
def test_events_are_frozen_and_slotted(event: Event) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.event_id = "changed"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
