"""The owner-DC side of coopr-pipeline: the transactional outbox and the relay worker."""

__all__: list[str] = []
