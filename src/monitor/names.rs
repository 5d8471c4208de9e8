//! Every metric teal exports, in one place:
//! `teal_<subsystem>_<name>_<unit>[_total]` (subsystems: `lag`, `source`,
//! `decode`, `apply`, `slot`, `copy`, `kafka`, `verify`; process-wide: `retries`,
//! `errors`, `stalled`, `up`). The help texts are in `metrics.rs`.
//!
//! Renamed on 2026-12-06 (old -> new): `teal_received_wal_end_lsn` -> `teal_source_wal_end_lsn`, `teal_received_bytes_total` -> `teal_source_received_bytes_total`, `teal_heartbeats_total` -> `teal_source_heartbeats_total`, `teal_applied_lsn` -> `teal_apply_committed_lsn`, `teal_pending_transactions` -> `teal_apply_pending_transactions`, `teal_transactions_total` -> `teal_apply_transactions_total`, `teal_changes_total` -> `teal_apply_changes_total`, `teal_batches_total` -> `teal_apply_batches_total`, `teal_skipped_transactions_total` -> `teal_apply_skipped_transactions_total`, `teal_conflicts_total` -> `teal_apply_conflicts_total`, `teal_set_based_rows_total` -> `teal_apply_set_based_rows_total`, `teal_superseded_updates_total` -> `teal_apply_superseded_updates_total`, `teal_batch_size_changes` -> `teal_apply_batch_size_changes`, `teal_table_changes_total` -> `teal_apply_table_changes_total`, `teal_copy_chunks` -> `teal_copy_planned_chunks`.

/// Blue's latest WAL end minus the end LSN green committed.
pub const LAG_BYTES: &str = "teal_lag_bytes";
/// Age of the oldest source commit not yet committed on green.
pub const LAG_SECONDS: &str = "teal_lag_seconds";
/// Blue's latest WAL end, as a 64-bit LSN.
pub const SOURCE_WAL_END_LSN: &str = "teal_source_wal_end_lsn";
/// Replication data received from blue.
pub const SOURCE_RECEIVED_BYTES: &str = "teal_source_received_bytes_total";
/// Heartbeat messages written on blue.
pub const SOURCE_HEARTBEATS: &str = "teal_source_heartbeats_total";
/// Changes of tables `--tables` / `--exclude-tables` leave out.
pub const SOURCE_SKIPPED_CHANGES: &str = "teal_source_skipped_changes_total";
/// Time since blue was last heard.
pub const SOURCE_IDLE_SECONDS: &str = "teal_source_idle_seconds";
/// Replication sessions reopened after a transient error.
pub const SOURCE_RECONNECTS: &str = "teal_source_reconnects_total";
/// Time the decoder worked.
pub const DECODE_BUSY_SECONDS: &str = "teal_decode_busy_seconds_total";
/// End LSN committed on green, as a 64-bit LSN.
pub const APPLY_COMMITTED_LSN: &str = "teal_apply_committed_lsn";
/// Source transactions received, not yet committed on green.
pub const APPLY_PENDING_TRANSACTIONS: &str = "teal_apply_pending_transactions";
/// Time since apply last sent changes or committed.
pub const APPLY_IDLE_SECONDS: &str = "teal_apply_idle_seconds";
/// Green commit time minus blue commit time (summary).
pub const APPLY_LATENCY_SECONDS: &str = "teal_apply_latency_seconds";
/// Source transactions applied.
pub const APPLY_TRANSACTIONS: &str = "teal_apply_transactions_total";
/// Changes applied.
pub const APPLY_CHANGES: &str = "teal_apply_changes_total";
/// Green transactions committed.
pub const APPLY_BATCHES: &str = "teal_apply_batches_total";
/// Rows appended to the ledger of applied changes.
pub const APPLY_LEDGER_ROWS: &str = "teal_apply_ledger_rows_total";
/// The first 48 bits of the ledger's head, as a number.
pub const APPLY_LEDGER_HEAD_PREFIX: &str = "teal_apply_ledger_head_prefix";
/// Source transactions green already had.
pub const APPLY_SKIPPED_TRANSACTIONS: &str = "teal_apply_skipped_transactions_total";
/// Conflicts resolved by policy.
pub const APPLY_CONFLICTS: &str = "teal_apply_conflicts_total";
/// Rows applied by set-based statements.
pub const APPLY_SET_BASED_ROWS: &str = "teal_apply_set_based_rows_total";
/// Updates a later whole-row update made unnecessary.
pub const APPLY_SUPERSEDED_UPDATES: &str = "teal_apply_superseded_updates_total";
/// Time apply worked, waits for green included.
pub const APPLY_BUSY_SECONDS: &str = "teal_apply_busy_seconds_total";
/// Changes per green transaction (histogram).
pub const APPLY_BATCH_SIZE_CHANGES: &str = "teal_apply_batch_size_changes";
/// Changes applied per table and operation.
pub const APPLY_TABLE_CHANGES: &str = "teal_apply_table_changes_total";
/// WAL blue keeps for the slot.
pub const SLOT_RETAINED_WAL_BYTES: &str = "teal_slot_retained_wal_bytes";
/// The slot's wal_status on blue.
pub const SLOT_WAL_STATUS: &str = "teal_slot_wal_status";
/// Bytes blue may still write before the slot is invalidated.
pub const SLOT_SAFE_WAL_BYTES: &str = "teal_slot_safe_wal_bytes";
/// When the slot would be invalidated at blue's WAL rate.
pub const SLOT_INVALIDATION_ETA_SECONDS: &str = "teal_slot_invalidation_eta_seconds";
/// Share of the initial copy done.
pub const COPY_PROGRESS_RATIO: &str = "teal_copy_progress_ratio";
/// Rows of the initial copy committed.
pub const COPY_ROWS: &str = "teal_copy_rows_total";
/// COPY bytes of the initial copy read.
pub const COPY_BYTES: &str = "teal_copy_bytes_total";
/// Chunks of the initial copy committed.
pub const COPY_CHUNKS_DONE: &str = "teal_copy_chunks_done_total";
/// Chunks of the initial copy planned.
pub const COPY_CHUNKS_PLANNED: &str = "teal_copy_planned_chunks";
/// End LSN up to which Kafka holds every record.
pub const KAFKA_ACKNOWLEDGED_LSN: &str = "teal_kafka_acknowledged_lsn";
/// 1 once `--kafka-drop-on-wal-risk` dropped Kafka from the slot's watermark.
pub const KAFKA_DROPPED: &str = "teal_kafka_dropped";
/// What green committed minus what Kafka acknowledged.
pub const KAFKA_LAG_BYTES: &str = "teal_kafka_lag_bytes";
/// Records handed to the producer.
pub const KAFKA_RECORDS_PRODUCED: &str = "teal_kafka_records_produced_total";
/// Records Kafka acknowledged.
pub const KAFKA_RECORDS_ACKNOWLEDGED: &str = "teal_kafka_records_acknowledged_total";
/// Records librdkafka gave up.
pub const KAFKA_RECORDS_FAILED: &str = "teal_kafka_records_failed_total";
/// Enqueue to acknowledgement (histogram).
pub const KAFKA_DELIVERY_SECONDS: &str = "teal_kafka_delivery_seconds";
/// Retries after transient errors.
pub const RETRIES: &str = "teal_retries_total";
/// Errors, transient and definite.
pub const ERRORS: &str = "teal_errors_total";
/// 1 while work is pending and nothing moves.
pub const STALLED: &str = "teal_stalled";
/// 1 while streaming (or copying) and not stalled.
pub const UP: &str = "teal_up";
/// Tables `teal verify` compares.
pub const VERIFY_TABLES: &str = "teal_verify_tables";
/// Tables compared so far.
pub const VERIFY_TABLES_COMPARED: &str = "teal_verify_tables_compared_total";
/// Estimated bytes to read on blue.
pub const VERIFY_BYTES: &str = "teal_verify_bytes";
/// Of those, the compared tables'.
pub const VERIFY_BYTES_COMPARED: &str = "teal_verify_bytes_compared_total";
/// Rows compared, per side.
pub const VERIFY_ROWS_COMPARED: &str = "teal_verify_rows_compared_total";
/// Chunks summed in tables whose sums differed.
pub const VERIFY_CHUNKS: &str = "teal_verify_chunks_total";
/// Chunks whose rows were read.
pub const VERIFY_CHUNKS_DIFFERING: &str = "teal_verify_chunks_differing_total";
/// Differing rows found.
pub const VERIFY_DIFFERENCES: &str = "teal_verify_differences_total";
/// 1 green equals blue, 0 not, NaN not known yet.
pub const VERIFY_EQUAL: &str = "teal_verify_equal";
/// Seconds since the run started.
pub const VERIFY_DURATION_SECONDS: &str = "teal_verify_duration_seconds";
