-- The stand-in Coopr server's own state (`coopr-pipeline simulate`, producer/simulator.py).
--
-- A real Coopr server keeps clusters and jobs in its own database; these tables stand in for
-- it so that every stage boundary is one local transaction holding both the state change and
-- its outbox event, as the transactional outbox requires. They are the owner DC's live view:
-- rows are written only in the database of the DC that owns the cluster's shard. Replica DCs
-- learn the same state from the events, never from these tables.

-- Cluster IDs this DC hands out, like Coopr's `server.ids.start.num` / `server.ids.increment.by`:
-- DC i (0-based) of n data DCs allocates start_num = i + 1, then every increment_by = n, so two
-- DCs never create the same ID. The row survives restarts, so an ID is never handed out twice;
-- an ID allocated for a create that never committed is skipped, not reused.
CREATE TABLE coopr_id_counters (
    id_type       text        PRIMARY KEY,          -- 'cluster'
    start_num     bigint      NOT NULL CHECK (start_num >= 1),
    increment_by  bigint      NOT NULL CHECK (increment_by >= 1),
    last_num      bigint      NOT NULL,             -- last allocated (start_num - increment_by: none)
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per cluster this DC owns. `body` is the full Cluster record and `nodes` the Node
-- records (as in the events, times as ISO-8601 text), so the row can be compared with the
-- last OperationCompleted byte for byte. Deleted clusters stay, TERMINATED, as in Coopr.
CREATE TABLE coopr_clusters (
    id             text        PRIMARY KEY,
    shard          integer     NOT NULL CHECK (shard >= 0),
    status         text        NOT NULL,
    latest_job_id  text        NOT NULL,
    body           jsonb       NOT NULL,
    nodes          jsonb       NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- The simulator picks the clusters to operate on among the live ones.
CREATE INDEX coopr_clusters_live ON coopr_clusters (id) WHERE status <> 'TERMINATED';

-- One row per job. `step` is the last stage boundary applied (an index into the plan's steps):
-- a boundary retried after an ambiguous commit sees it already applied and is not written
-- twice. `plan` is the whole job as planned (every stage's tasks with node, service, action and
-- simulated outcome), which Coopr keeps in its task store: a restarted simulator resumes a
-- RUNNING job from it at the next boundary.
CREATE TABLE coopr_jobs (
    id          text        PRIMARY KEY,
    cluster_id  text        NOT NULL REFERENCES coopr_clusters (id),
    shard       integer     NOT NULL CHECK (shard >= 0),
    action      text        NOT NULL,
    status      text        NOT NULL,
    step        integer     NOT NULL CHECK (step >= 0),
    body        jsonb       NOT NULL,   -- the Job record as of the last boundary
    tasks       jsonb       NOT NULL,   -- the current stage's Task records
    plan        jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX coopr_jobs_cluster ON coopr_jobs (cluster_id);
CREATE INDEX coopr_jobs_running ON coopr_jobs (id) WHERE status = 'RUNNING';
