-- Shard ownership as this DC knows it, and the transactional outbox.
--
-- shard_ownership has one row per shard. The owner DC's row is writable; `last_seq` is the
-- last seq assigned in `epoch` (the next event gets last_seq + 1). Incrementing it with an
-- UPDATE takes the row lock, so writers of one shard queue behind each other until commit:
-- seqs have no gaps (a rollback gives its number back) and commit in seq order.
CREATE TABLE shard_ownership (
    shard       integer     PRIMARY KEY CHECK (shard >= 0),
    owner_dc    text        NOT NULL,
    epoch       bigint      NOT NULL CHECK (epoch >= 1),
    writable    boolean     NOT NULL,
    last_seq    bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Routers LISTEN on coopr_ownership to refresh their cache; only a change of owner, epoch or
-- writability notifies (not the last_seq bump of every published event).
CREATE FUNCTION notify_ownership_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('coopr_ownership', NEW.shard::text);
    RETURN NEW;
END;
$$;
CREATE TRIGGER shard_ownership_changed
    AFTER UPDATE ON shard_ownership FOR EACH ROW
    WHEN (OLD.owner_dc IS DISTINCT FROM NEW.owner_dc
          OR OLD.epoch IS DISTINCT FROM NEW.epoch
          OR OLD.writable IS DISTINCT FROM NEW.writable)
    EXECUTE FUNCTION notify_ownership_change();

-- One row per event, written in the same transaction as the state change it reports.
-- The relay publishes rows in id order (= seq order within a shard, see above) and sets
-- published_at only after Kafka acknowledged them.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    shard         integer     NOT NULL,
    epoch         bigint      NOT NULL,
    seq           bigint      NOT NULL,
    event_type    text        NOT NULL,
    event_key     text        NOT NULL,
    payload       bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz,
    UNIQUE (shard, epoch, seq)
);
-- Every row is updated once (published_at) and deleted later: vacuum it early, or the relay's
-- index of unpublished rows fills with dead entries it has to step over on every fetch.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.01);
-- Only unpublished rows are looked up by the relay. No index on published_at: each would be
-- one more index write per published row; pruning walks the oldest ids instead.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
