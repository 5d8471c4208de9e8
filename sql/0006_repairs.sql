-- teal's schema, version 6: `teal repair`. One row per key it made equal
-- to blue (keys only, never values), and 'repair' audit rows.
ALTER TABLE @schema@.audit DROP CONSTRAINT IF EXISTS audit_operation_check;
ALTER TABLE @schema@.audit ADD CONSTRAINT audit_operation_check CHECK (operation IN
    ('stream', 'snapshot', 'verify', 'repair', 'cutover', 'rollback', 'schema_error'));
CREATE TABLE @schema@.repairs (
    id           bigserial PRIMARY KEY,
    operation_id uuid NOT NULL,      -- the repair's audit row
    slot         text NOT NULL,
    table_name   text NOT NULL,      -- schema.table
    key          jsonb NOT NULL,     -- the row's primary key
    action       text NOT NULL CHECK (action IN ('inserted', 'updated', 'deleted', 'unchanged')),
    lsn          pg_lsn NOT NULL,    -- blue's point the row was read at
    repaired_at  timestamptz NOT NULL DEFAULT now()
);
