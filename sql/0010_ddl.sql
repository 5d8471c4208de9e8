-- teal's schema, version 10: DDL in the stream. One row per DDL statement
-- blue's event trigger sent (teal ddl install) that green has: run by apply
-- in the same transaction as the batch it came with ('applied'), or run by
-- hand and recorded by `teal ddl resolve` ('resolved', which apply then
-- skips when it meets the statement again).
CREATE TABLE @schema@.ddl (
    id          bigserial PRIMARY KEY,
    slot        text NOT NULL,
    lsn         pg_lsn NOT NULL,        -- the trigger's message
    tag         text NOT NULL,
    statement   text,
    how         text NOT NULL CHECK (how IN ('applied', 'resolved')),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON @schema@.ddl (slot, lsn);
