-- A task made by POST /tasks/{id}/retry, and the task it retries (both ways).
ALTER TABLE cleanup_tasks ADD COLUMN retry_of uuid, ADD COLUMN retried_by uuid;
