-- The demo application database holding the runs table.
CREATE DATABASE app;
\connect app
\i /schema/runs-schema.sql
