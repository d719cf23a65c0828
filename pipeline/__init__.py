"""coopr-pipeline: multi-datacenter replication for Coopr over Kafka and MirrorMaker 2.

The shared runtime of every other package: the event contract (events, schemas, codec),
topology, shards and topic names, Kafka and database helpers, logging, metrics, the local
stack. It imports none of them (``make lint`` checks the layers).
"""

from pipeline.errors import PipelineError
from pipeline.topology import DataCenter, Topology, load_topology

__all__ = ["DataCenter", "PipelineError", "Topology", "load_topology"]
__version__ = "0.1.0"
