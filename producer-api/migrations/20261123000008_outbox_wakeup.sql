-- A NOTIFY serializes the commits of every notifying transaction of the database (it
-- takes a database-wide lock at commit): one per enqueue capped the enqueue rate. A
-- producer-api that runs its own relay wakes it in-process and marks its connections
-- `cleanup.outbox_wakeup = local`; the others (API-only replicas, scripts) still notify,
-- so every relay hears of their rows.
CREATE OR REPLACE FUNCTION cleanup_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('cleanup.outbox_wakeup', true), '') <> 'local' THEN
        PERFORM pg_notify('cleanup_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
