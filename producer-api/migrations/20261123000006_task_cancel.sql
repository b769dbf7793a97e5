-- Cancel (POST /tasks/{id}/cancel): a new terminal status, and who asked when. A queued
-- or retrying task becomes `cancelled` at once; a running one keeps `running` with
-- `cancel_requested_at` set until its worker reports `task.cancelled` (or finished first).
ALTER TABLE cleanup_tasks DROP CONSTRAINT cleanup_tasks_status_check;
ALTER TABLE cleanup_tasks ADD CONSTRAINT cleanup_tasks_status_check
    CHECK (status IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead', 'cancelled'));
ALTER TABLE cleanup_tasks
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN cancelled_by text;
