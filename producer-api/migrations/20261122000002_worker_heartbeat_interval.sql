-- Heartbeat period of each worker: it is `lost` after three silent periods.
ALTER TABLE workers ADD COLUMN heartbeat_interval_ms integer NOT NULL DEFAULT 5000;
