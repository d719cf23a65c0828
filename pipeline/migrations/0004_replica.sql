-- What a replica DC knows of the shards it replicates, written only by the applier.
--
-- Every row carries the (epoch, seq) of the event that wrote it, and the applier's upserts
-- only overwrite a row with a newer (epoch, seq): replays and duplicates change nothing.

-- The latest completed state of every replicated cluster (from OperationCompleted events).
-- `body` and `nodes` have the shape of the owner's coopr_clusters row.
CREATE TABLE replica_clusters (
    cluster_id     text        PRIMARY KEY,
    shard          integer     NOT NULL,
    source_dc      text        NOT NULL,
    epoch          bigint      NOT NULL,
    seq            bigint      NOT NULL,
    status         text        NOT NULL,
    deleted        boolean     NOT NULL,
    latest_job_id  text        NOT NULL,
    body           jsonb       NOT NULL,
    nodes          jsonb       NOT NULL,
    occurred_at    timestamptz NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replica_clusters_shard ON replica_clusters (shard);

-- The restart checkpoint of every job in flight. A job's OperationCompleted does not delete
-- its row but marks it completed: a replayed, older checkpoint then finds a newer row and
-- cannot bring a finished job back to life. `payload` is the RestartCheckpoint as received
-- (single-object Avro), decoded again by the takeover.
CREATE TABLE replica_checkpoints (
    job_id       text        PRIMARY KEY,
    cluster_id   text        NOT NULL,
    shard        integer     NOT NULL,
    source_dc    text        NOT NULL,
    epoch        bigint      NOT NULL,
    seq          bigint      NOT NULL,
    completed    boolean     NOT NULL,
    payload      bytea,
    occurred_at  timestamptz NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replica_checkpoints_in_flight ON replica_checkpoints (shard) WHERE NOT completed;

-- The next offset to read of each mirrored partition, committed with the rows it produced.
CREATE TABLE applied_offsets (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Per shard: the current epoch, the last seq applied in it, and what was seen wrong.
-- `open_gaps` lists the [after, before] seq ranges (exclusive) of the current epoch that are
-- still missing: an event arriving late into one is applied, not taken for a duplicate.
CREATE TABLE replication_state (
    shard            integer     PRIMARY KEY,
    source_dc        text        NOT NULL,
    epoch            bigint      NOT NULL,
    last_seq         bigint      NOT NULL,
    open_gaps        jsonb       NOT NULL DEFAULT '[]',
    gaps             bigint      NOT NULL DEFAULT 0,
    late             bigint      NOT NULL DEFAULT 0,
    fenced           bigint      NOT NULL DEFAULT 0,
    last_applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Every gap, for `status` and for an operator: the seqs between after_seq and before_seq
-- (exclusive) never arrived.
CREATE TABLE replication_gaps (
    id           bigserial   PRIMARY KEY,
    shard        integer     NOT NULL,
    source_dc    text        NOT NULL,
    epoch        bigint      NOT NULL,
    after_seq    bigint      NOT NULL,
    before_seq   bigint      NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now()
);
