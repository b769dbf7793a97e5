-- The relay claims cancellations before task messages: a partial index finds them
-- without walking a backlog of task messages.
CREATE INDEX cleanup_outbox_cancels ON cleanup_outbox (due_at, id) WHERE kind = 'cancel';

-- A cancelled task leaves `cancelled` only for `succeeded` (its worker finished it before
-- the cancel reached it). Any other change of status is skipped: this also holds against a
-- producer-api replica of an older version during a rolling upgrade, whose recorder does
-- not know `cancelled` is final (it would schedule a retry of a cancelled task).
CREATE FUNCTION cleanup_tasks_cancelled_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('cancelled', 'succeeded') THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER cleanup_tasks_cancelled_is_final
    BEFORE UPDATE OF status ON cleanup_tasks
    FOR EACH ROW WHEN (OLD.status = 'cancelled')
    EXECUTE FUNCTION cleanup_tasks_cancelled_is_final();
