-- The ownership protocol's durable state (docs/ownership.md): leases, promises, claims, and
-- the restart requests a takeover leaves for the Coopr server.

-- The end of the owner's lease, on this database's clock. publish() accepts a write only while
-- `lease_until > clock_timestamp()`. 'infinity' is static ownership: no controller has taken
-- charge of this DC yet (a fresh stack, or a deployment without controllers, which then has no
-- failover). A controller's first start sets finite leases; from then on only it renews them.
ALTER TABLE shard_ownership ADD COLUMN lease_until timestamptz NOT NULL DEFAULT 'infinity';

-- Per shard, the highest epoch this DC promised, and whether it had heard the shard's owner
-- within the failure timeout when it promised. Committed before the heartbeat announcing it.
CREATE TABLE ownership_promises (
    shard        integer     PRIMARY KEY CHECK (shard >= 0),
    epoch        bigint      NOT NULL CHECK (epoch >= 1),
    heard_owner  boolean     NOT NULL,
    promised_at  timestamptz NOT NULL DEFAULT now()
);

-- Every claim (OwnershipChange) this DC has seen, its own included. `cut` is the last seq of
-- from_epoch the new owner applied (0: none): replicas apply from_epoch up to it and fence the
-- rest. The applier applies an event of a newer epoch only once its claim is here.
CREATE TABLE ownership_claims (
    shard       integer     NOT NULL CHECK (shard >= 0),
    epoch       bigint      NOT NULL,
    from_dc     text        NOT NULL,
    from_epoch  bigint      NOT NULL,
    to_dc       text        NOT NULL,
    cut         bigint      NOT NULL CHECK (cut >= 0),
    reason      text        NOT NULL,
    event_id    text        NOT NULL,
    claimed_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, epoch),
    CHECK (epoch > from_epoch)
);

-- Jobs a takeover found in flight (an uncompleted replica checkpoint): the new owner's Coopr
-- server resumes each from its checkpoint and sets resumed_at in the transaction of the job's
-- first write here. `checkpoint` is the RestartCheckpoint as replicated (single-object Avro).
CREATE TABLE restart_requests (
    job_id        text        PRIMARY KEY,
    cluster_id    text        NOT NULL,
    shard         integer     NOT NULL,
    epoch         bigint      NOT NULL,
    checkpoint    bytea       NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    resumed_at    timestamptz
);
CREATE INDEX restart_requests_pending ON restart_requests (shard) WHERE resumed_at IS NULL;
