-- Retention deletes finished tasks of one status, oldest finished first.
CREATE INDEX cleanup_tasks_status_finished ON cleanup_tasks (status, finished_at)
    WHERE finished_at IS NOT NULL;
