-- Dead letters that `coopr-pipeline dlq redrive` took back through the applier's decoding and
-- sequencing, one row per source record (where the applier read it), written in the same
-- transaction as the rows the redrive applied. The key is the source record, not the dead
-- letter: a record shipped twice to coopr.dlq (a crash between Kafka's acknowledgement and
-- the delete of its dead_letters row) is still applied once, and a second redrive, or one
-- running at the same time (the key makes it wait, then find the row), applies nothing.
-- Only final outcomes are recorded: applied, duplicate (the replica had it already), fenced.
-- A letter still refused or waiting for a claim has no row and can be redriven again.
CREATE TABLE dead_letter_redrives (
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    -- The offset in this DC's coopr.dlq (partition 0) of the dead letter that was redriven.
    letter            bigint      NOT NULL,
    outcome           text        NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'fenced')),
    shard             integer     NOT NULL,
    source_dc         text        NOT NULL,
    epoch             bigint      NOT NULL,
    seq               bigint      NOT NULL,
    redriven_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset)
);
