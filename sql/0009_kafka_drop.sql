-- teal's schema, version 9: 'kafka_drop' audit rows. --kafka-drop-on-wal-risk
-- removed Kafka from the slot's watermark so that blue would not invalidate
-- the slot while Kafka was the slow consumer; details name Kafka's
-- acknowledged LSN (the first change Kafka misses is after it) and why.
ALTER TABLE @schema@.audit DROP CONSTRAINT IF EXISTS audit_operation_check;
ALTER TABLE @schema@.audit ADD CONSTRAINT audit_operation_check CHECK (operation IN
    ('stream', 'snapshot', 'verify', 'repair', 'cutover', 'rollback', 'schema_error', 'kafka_drop'));
