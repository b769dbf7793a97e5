-- The runs table that cleanup_runs expects, as used by the demo and the tests.
--
-- Any table works if it has: a primary key (RUNS_ID_COLUMN), a status column of text or
-- enum type (RUNS_STATUS_COLUMN), and a timestamp column (RUNS_TIMESTAMP_COLUMN, ideally
-- timestamptz). Child rows must reference their run with ON DELETE CASCADE so they go
-- with it; a child table without it makes deletion fail permanently (foreign key
-- violation) instead of leaving orphans.
CREATE TABLE IF NOT EXISTS runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    status      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- The cleanup walks runs by age, oldest first, each batch going on from the last row of
-- the previous one: an index on (finished_at, id) serves that order whole (strategy
-- `keyset`). Without it the batches walk the primary key instead (`key_range`).
CREATE INDEX IF NOT EXISTS runs_finished_at_id ON runs (finished_at, id);

CREATE TABLE IF NOT EXISTS run_logs (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    line   text NOT NULL
);

-- Without this index every deleted run costs a scan of run_logs.
CREATE INDEX IF NOT EXISTS run_logs_run_id ON run_logs (run_id);

-- The worker keeps each cleanup_runs task's count here, committed with the rows it
-- deleted (RUNS_PROGRESS_TABLE), and creates it when missing. Create it yourself when the
-- worker's login may not create tables, and grant it SELECT, INSERT, UPDATE, DELETE.
CREATE TABLE IF NOT EXISTS cleanup_runs_progress (
    task_id      uuid PRIMARY KEY,
    runs_deleted bigint NOT NULL DEFAULT 0 CHECK (runs_deleted >= 0),
    runs_estimated bigint NOT NULL DEFAULT 0 CHECK (runs_estimated >= 0),
    pending_drop text,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
