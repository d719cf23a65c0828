-- The relay reads unpublished rows shard by shard (a stuck or blocked shard is left out and
-- must not hold the others back), so its index leads with the shard.
CREATE INDEX outbox_unpublished_by_shard ON outbox (shard, id) WHERE published_at IS NULL;
DROP INDEX outbox_unpublished;
