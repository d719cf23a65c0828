"""The replica-DC side of coopr-pipeline: the applier that upserts mirrored events."""

from consumer.applier import Applier, ApplierConfig, replicated_topics
from consumer.store import apply_batch

__all__ = ["Applier", "ApplierConfig", "apply_batch", "replicated_topics"]
