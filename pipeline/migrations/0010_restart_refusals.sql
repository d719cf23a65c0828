-- Why a Coopr server could not resume a restart request (its checkpoint does not fit what the
-- server can plan from it): the request stays pending for an operator, the reason says why.
-- A later takeover of the shard clears it with its own request.
ALTER TABLE restart_requests ADD COLUMN refused text;
