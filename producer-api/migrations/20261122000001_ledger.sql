-- The task ledger: one row per task, written only by producer-api.
CREATE TABLE cleanup_tasks (
    id              uuid PRIMARY KEY,                 -- UUID v7, time-ordered
    kind            text NOT NULL CHECK (kind IN ('cleanup_runs', 'cleanup_temp_files')),
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead')),
    params          jsonb NOT NULL,
    cutoff          timestamptz NOT NULL,             -- nothing younger is deleted
    attempts        integer NOT NULL DEFAULT 0,       -- highest attempt a worker has started
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    result          jsonb,
    error           jsonb,
    idempotency_key text,
    worker_id       text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    next_attempt_at timestamptz,
    published_at    timestamptz                       -- last publish of an attempt by the relay
);

CREATE UNIQUE INDEX cleanup_tasks_idempotency_key
    ON cleanup_tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- GET /tasks?status=..&kind=.. pages by id (time order) within a filter.
CREATE INDEX cleanup_tasks_status_id ON cleanup_tasks (status, id);
CREATE INDEX cleanup_tasks_kind_id ON cleanup_tasks (kind, id);

-- The transactional outbox: messages that must reach RabbitMQ. A row is inserted in the
-- same statement as its task and deleted by the relay once the broker confirmed it.
CREATE TABLE cleanup_outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       uuid NOT NULL REFERENCES cleanup_tasks (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    kind          text NOT NULL,
    envelope      jsonb NOT NULL,
    due_at        timestamptz NOT NULL DEFAULT now(),  -- retries are due later
    created_at    timestamptz NOT NULL DEFAULT now(),
    publish_tries integer NOT NULL DEFAULT 0,
    last_error    text
);

CREATE INDEX cleanup_outbox_due ON cleanup_outbox (due_at, id);

-- Wake the relays at once instead of waiting for their next poll.
CREATE FUNCTION cleanup_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cleanup_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER cleanup_outbox_notify
    AFTER INSERT ON cleanup_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION cleanup_outbox_notify();

-- Worker registry, kept from heartbeats by the recorder.
CREATE TABLE workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    version      text NOT NULL,
    kinds        text[] NOT NULL DEFAULT '{}',
    status       text NOT NULL CHECK (status IN ('up', 'stopped', 'lost')),
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    in_flight    integer NOT NULL DEFAULT 0,
    processed    bigint NOT NULL DEFAULT 0
);
