-- The operator console (/ui).
--
-- Sessions: a signed-in browser holds a random id in an HttpOnly cookie; the ledger keeps
-- only its SHA-256, the name of the API token it was exchanged for with a MAC binding
-- that token's secret to the session id (HMAC-SHA256 keyed with the token's digest: the
-- id is only in the cookie, so a copy of this table tests no guess of a secret), and the
-- session's CSRF token. The token is looked up in API_TOKENS on every request: a token
-- removed or given a new secret ends its sessions.
CREATE TABLE console_sessions (
    id_digest    bytea PRIMARY KEY,
    token_name   text,                -- NULL when auth is disabled (anonymous admin)
    token_mac    bytea,
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Every failed attempt of a task, for its timeline: the task row keeps only the last
-- error and worker.
CREATE TABLE cleanup_task_attempts (
    task_id   uuid NOT NULL REFERENCES cleanup_tasks (id) ON DELETE CASCADE,
    attempt   integer NOT NULL,
    worker_id text NOT NULL,
    error     jsonb NOT NULL,
    failed_at timestamptz NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

-- A real run made from a succeeded dry run (POST /tasks/{id}/run): same parameters, same
-- cutoff. At most one per dry run.
ALTER TABLE cleanup_tasks ADD COLUMN dry_run_of uuid;
CREATE UNIQUE INDEX cleanup_tasks_dry_run_of ON cleanup_tasks (dry_run_of) WHERE dry_run_of IS NOT NULL;
