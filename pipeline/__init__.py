"""coopr-pipeline: multi-datacenter replication for Coopr over Kafka and MirrorMaker 2.

The shared runtime of the producer and consumer sides: topology, topic names, Kafka client
settings, the event contract, logging, the local stack and the ``coopr-pipeline`` CLI.
"""

from pipeline.errors import PipelineError
from pipeline.topology import DataCenter, Topology, load_topology

__all__ = ["DataCenter", "PipelineError", "Topology", "load_topology"]
__version__ = "0.1.0"
