-- A schedule's tasks, newest first, and its latest success (its failing streak, shown
-- in metrics; retention keeps that success).
CREATE INDEX cleanup_tasks_schedule ON cleanup_tasks (schedule, created_at)
    WHERE schedule IS NOT NULL;
CREATE INDEX cleanup_tasks_schedule_succeeded ON cleanup_tasks (schedule, created_at)
    WHERE schedule IS NOT NULL AND status = 'succeeded';
