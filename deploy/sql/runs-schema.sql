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

-- The cleanup selects by age, oldest first: index the timestamp.
CREATE INDEX IF NOT EXISTS runs_finished_at ON runs (finished_at);

CREATE TABLE IF NOT EXISTS run_logs (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    line   text NOT NULL
);

-- Without this index every deleted run costs a scan of run_logs.
CREATE INDEX IF NOT EXISTS run_logs_run_id ON run_logs (run_id);
