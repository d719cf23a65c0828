-- A manual failover away from a DC (ownership_requests, kind 'failover', outcome 'done...')
-- also takes that DC out of the majority that leases and fencing count, so that the DCs left
-- can write without it (docs/ownership.md, "Manual failover"). The exclusion ends when its
-- heartbeat is heard again; the controller records when.
ALTER TABLE ownership_requests ADD COLUMN exclusion_ended_at timestamptz;
