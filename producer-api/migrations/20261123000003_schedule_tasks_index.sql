-- A schedule's tasks, newest first (its failing streak, shown in metrics).
CREATE INDEX cleanup_tasks_schedule ON cleanup_tasks (schedule, created_at)
    WHERE schedule IS NOT NULL;
