-- Who created a task: the API token's name (or the schedule's writer, for its windows).
ALTER TABLE cleanup_tasks ADD COLUMN actor text;
CREATE INDEX cleanup_tasks_actor_id ON cleanup_tasks (actor, id) WHERE actor IS NOT NULL;
