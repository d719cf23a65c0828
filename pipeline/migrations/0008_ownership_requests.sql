-- Operators' requests to the controller of this DC (docs/ownership.md, "Requests"): a planned
-- move of a shard this DC owns, or a manual failover away from a DC. The controller sets
-- started_at when it acts, and done_at with the outcome ('done', or 'refused: <why>').
CREATE TABLE ownership_requests (
    id            bigserial   PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('move', 'failover')),
    shard         integer     CHECK (shard >= 0),
    from_dc       text        NOT NULL,
    to_dc         text,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    done_at       timestamptz,
    outcome       text,
    CHECK ((kind = 'move') = (shard IS NOT NULL AND to_dc IS NOT NULL))
);
CREATE INDEX ownership_requests_open ON ownership_requests (id) WHERE done_at IS NULL;
