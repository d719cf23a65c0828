"""Claims recorded in a DC's ``ownership_claims`` for tests, as its controller records the
claims it sees, and removed again so that the shared stack keeps no made-up claim."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pipeline.db import connect, fetch_all
from pipeline.events import OwnershipChangeReason
from pipeline.ownership import Claim, record_claim


class Claims:
    """Records claims in the database at ``dsn``; :meth:`forget` deletes every claim of the
    shards given at creation (also those a failed earlier run left)."""

    def __init__(self, dsn: str, *shards: int):
        self.dsn, self.shards = dsn, list(shards)
        self.forget()

    def record(
        self, shard: int, epoch: int, from_dc: str, from_epoch: int, to_dc: str, cut: int
    ) -> Claim:
        assert shard in self.shards, "a shard this helper does not clean up"
        claim = Claim(
            shard,
            epoch,
            from_dc,
            from_epoch,
            to_dc,
            cut,
            OwnershipChangeReason.FAILOVER,
            str(uuid.uuid4()),
            datetime.now(UTC),
        )
        conn = connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                assert record_claim(cur, claim)
        finally:
            conn.close()
        return claim

    def forget(self) -> None:
        fetch_all(
            self.dsn,
            "DELETE FROM ownership_claims WHERE shard = ANY(%s)",
            (self.shards,),
        )
