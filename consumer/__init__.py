"""The replica-DC side of coopr-pipeline: the applier that upserts mirrored events."""

__all__: list[str] = []
