-- Records the applier refused, written in the same transaction as the offsets past them and
-- shipped to the local coopr.dlq afterwards; a row is deleted once Kafka acknowledged it.
-- So a refused record becomes one dead letter whatever the retries: a failed transaction
-- leaves no row, a committed one is never read again.
CREATE TABLE dead_letters (
    id                bigserial   PRIMARY KEY,
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    key               bytea,
    value             bytea,
    reason            text        NOT NULL,
    error             text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, source_partition, source_offset)
);
