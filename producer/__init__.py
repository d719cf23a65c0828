"""The owner-DC side of coopr-pipeline: the transactional outbox, routing and the relay."""

from producer.outbox import Published, publish
from producer.relay import Relay, RelayConfig
from producer.router import Route, ShardRouter

__all__ = ["Published", "Relay", "RelayConfig", "Route", "ShardRouter", "publish"]
