-- Which DC this database belongs to. A worker started with the wrong DSN for its DC would
-- otherwise write one DC's state into another's database; `db migrate --dc` records the
-- name once and refuses any other afterwards.
CREATE TABLE local_dc (
    name        text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    singleton   boolean     NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
