-- teal's schema, version 2: the audit trail. One row per operation teal
-- performed against green: a `teal stream` session from start to stop, a
-- schema error that stopped it, and (later) snapshot, verify, cutover and
-- rollback. correlation_id ties the rows of one run together and appears in
-- every log line of that run; source and target never hold passwords.
CREATE TABLE @schema@.audit (
    operation_id    uuid PRIMARY KEY,
    correlation_id  uuid NOT NULL,
    operation       text NOT NULL CHECK (operation IN
                        ('stream', 'snapshot', 'verify', 'cutover', 'rollback', 'schema_error')),
    status          text NOT NULL CHECK (status IN
                        ('running', 'succeeded', 'failed', 'stopped', 'interrupted')),
    slot            text,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    duration_ms     bigint,
    source          text,
    target          text,
    performed_by    text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_started ON @schema@.audit (started_at);
CREATE INDEX audit_correlation ON @schema@.audit (correlation_id);
