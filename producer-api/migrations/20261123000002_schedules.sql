-- Schedules: cleanups declared once, fired by every producer-api replica's scheduler
-- (each window claimed with a row lock, its task inserted in the same transaction).
CREATE TABLE cleanup_schedules (
    name            text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('cleanup_runs', 'cleanup_temp_files')),
    params          jsonb NOT NULL,
    cron            text NOT NULL,
    timezone        text NOT NULL DEFAULT 'UTC',
    enabled         boolean NOT NULL DEFAULT true,
    catch_up        text NOT NULL DEFAULT 'once' CHECK (catch_up IN ('once', 'skip')),
    overlap         text NOT NULL DEFAULT 'skip' CHECK (overlap IN ('skip', 'allow')),
    next_fire_at    timestamptz,                  -- NULL while disabled
    last_fired_at   timestamptz,                  -- the scheduled time of the last window fired
    last_task_id    uuid,
    skipped_windows bigint NOT NULL DEFAULT 0,    -- windows that fired nothing
    managed_by      text NOT NULL DEFAULT 'api' CHECK (managed_by IN ('api', 'file')),
    actor           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cleanup_schedules_due ON cleanup_schedules (next_fire_at) WHERE enabled;

-- Which schedule and window created a task.
ALTER TABLE cleanup_tasks ADD COLUMN schedule text, ADD COLUMN scheduled_for timestamptz;
