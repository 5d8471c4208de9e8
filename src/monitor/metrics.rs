//! `/metrics`: the Prometheus text exposition format (version 0.0.4) of a
//! [`Monitor`], every name from [`super::names`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lsn::PgTimestamp;
use crate::progress::{Bounds, Buckets, TableCopySnapshot, lock};
use crate::sink::kafka::TopicCounts;

use super::names::*;
use super::{Monitor, RunState};

impl Monitor {
    /// `/metrics` in the Prometheus text exposition format (version 0.0.4).
    pub fn metrics_text(&self) -> String {
        let now = PgTimestamp::now();
        let mut out = Metrics::default();
        let slot = [("slot", self.slot.as_str())];
        let a = &self.apply;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        for (name, help, value) in [
            (
                LAG_BYTES,
                "Blue's latest WAL end minus the end LSN green committed (0 when caught up).",
                self.lag.lag_bytes() as f64,
            ),
            (
                LAG_SECONDS,
                "Age of the oldest source commit received but not yet committed on green (0 when none is pending).",
                self.lag.lag_seconds(now),
            ),
            (
                SOURCE_WAL_END_LSN,
                "Blue's latest WAL end (from XLogData or keepalive), as a 64-bit LSN.",
                self.lag.received_wal_end().0 as f64,
            ),
            (
                APPLY_COMMITTED_LSN,
                "End LSN committed on green, as a 64-bit LSN.",
                self.lag.applied_lsn().0 as f64,
            ),
            (
                APPLY_PENDING_TRANSACTIONS,
                "Source transactions received and not yet committed on green.",
                self.lag.pending_transactions() as f64,
            ),
            (
                SOURCE_IDLE_SECONDS,
                "Time since teal last heard from blue (time spent waiting for room downstream does not count).",
                self.lag.liveness().source_idle().as_secs_f64(),
            ),
            (
                APPLY_IDLE_SECONDS,
                "Time since apply last sent changes to green or committed there.",
                self.lag.liveness().apply_idle().as_secs_f64(),
            ),
            (
                STALLED,
                "1 while streaming with work pending and nothing moving (see /readyz), 0 otherwise.",
                f64::from(u8::from(self.stalled().is_some())),
            ),
        ] {
            out.single(name, "gauge", help, &slot, value);
        }

        let l = self.lag.latency();
        out.family(APPLY_LATENCY_SECONDS, "summary", "Green commit time minus blue commit timestamp per transaction; quantiles over the last minute.");
        for (q, v) in [
            ("0.5", l.p50),
            ("0.9", l.p90),
            ("0.99", l.p99),
            ("0.999", l.p999),
            ("1", l.max),
        ] {
            out.sample(
                APPLY_LATENCY_SECONDS,
                &[("slot", &self.slot), ("quantile", q)],
                v,
            );
        }
        out.sample(&format!("{APPLY_LATENCY_SECONDS}_sum"), &slot, l.sum);
        out.sample(
            &format!("{APPLY_LATENCY_SECONDS}_count"),
            &slot,
            l.count as f64,
        );

        for (name, help, value) in [
            (
                APPLY_TRANSACTIONS,
                "Source transactions applied to green.",
                load(&a.transactions),
            ),
            (APPLY_CHANGES, "Changes applied to green.", load(&a.changes)),
            (
                APPLY_BATCHES,
                "Green transactions committed.",
                load(&a.batches),
            ),
            (
                APPLY_LEDGER_ROWS,
                "Rows this session appended to the ledger of applied changes (teal.ledger).",
                load(&a.ledger_rows),
            ),
            (
                APPLY_SKIPPED_TRANSACTIONS,
                "Source transactions skipped because green already had them.",
                load(&a.skipped_transactions),
            ),
            (
                APPLY_CONFLICTS,
                "Conflicts resolved by policy.",
                load(&a.conflicts),
            ),
            (
                APPLY_SET_BASED_ROWS,
                "Inserts, updates and deletes applied by set-based statements.",
                load(&a.set_based_rows),
            ),
            (
                APPLY_SUPERSEDED_UPDATES,
                "Updates not sent: a later update of the same row in the same green transaction overwrote every column.",
                load(&a.superseded_updates),
            ),
            (
                RETRIES,
                "Retries after a transient error: streaming attempts and replication reconnects.",
                self.retries() as f64,
            ),
            (
                ERRORS,
                "Errors (transient and definite).",
                self.errors() as f64,
            ),
            (
                SOURCE_RECONNECTS,
                "Replication sessions to blue that ended in a transient error and were reopened.",
                self.lag.liveness().source_reconnects() as f64,
            ),
            (
                SOURCE_HEARTBEATS,
                "Heartbeat messages written on blue.",
                self.slot_watch.heartbeats() as f64,
            ),
            (
                SOURCE_RECEIVED_BYTES,
                "Bytes of replication data received from blue.",
                self.lag.received_bytes() as f64,
            ),
            (
                SOURCE_SKIPPED_CHANGES,
                "Changes of tables --tables / --exclude-tables leave out (applied nowhere, produced nowhere).",
                self.lag.skipped_changes_total() as f64,
            ),
        ] {
            out.single(name, "counter", help, &slot, value);
        }
        for (name, help, value) in [
            (
                DECODE_BUSY_SECONDS,
                "Time the decoder spent decoding and assembling (not waiting for blue or for apply).",
                self.lag.decode_busy_seconds(),
            ),
            (
                APPLY_BUSY_SECONDS,
                "Time the apply stage spent applying and committing, including waiting for green (not waiting for input).",
                a.busy.seconds(),
            ),
        ] {
            out.single(name, "counter", help, &slot, value);
        }

        out.histogram(
            APPLY_BATCH_SIZE_CHANGES,
            "Changes per green transaction.",
            &self.slot,
            &a.batch_sizes,
            load(&a.changes),
        );

        out.family(
            APPLY_TABLE_CHANGES,
            "counter",
            "Changes applied to green per table and operation.",
        );
        for (table, c) in a.tables() {
            for (op, n) in [
                ("insert", c.insert),
                ("update", c.update),
                ("delete", c.delete),
                ("truncate", c.truncate),
            ] {
                out.sample(
                    APPLY_TABLE_CHANGES,
                    &[("slot", &self.slot), ("table", &table), ("operation", op)],
                    n as f64,
                );
            }
        }

        let health = self.slot_watch.health();
        // Each family's samples right after its own header.
        out.family(
            SLOT_RETAINED_WAL_BYTES,
            "gauge",
            "WAL blue keeps for the slot (current WAL LSN minus restart_lsn).",
        );
        if let Some(h) = &health {
            out.sample(SLOT_RETAINED_WAL_BYTES, &slot, h.retained_bytes as f64);
        }
        out.family(
            SLOT_SAFE_WAL_BYTES,
            "gauge",
            "safe_wal_size: bytes blue may still write before the slot is invalidated (absent without max_slot_wal_keep_size).",
        );
        if let Some(safe) = health.as_ref().and_then(|h| h.safe_wal_bytes) {
            out.sample(SLOT_SAFE_WAL_BYTES, &slot, safe as f64);
        }
        out.family(
            SLOT_INVALIDATION_ETA_SECONDS,
            "gauge",
            "When the slot would be invalidated at blue's current WAL rate (safe_wal_size / rate; absent when unbounded or idle).",
        );
        if let Some(eta) = health.as_ref().and_then(|h| h.invalidation_eta_seconds) {
            out.sample(SLOT_INVALIDATION_ETA_SECONDS, &slot, eta);
        }
        out.family(
            SLOT_WAL_STATUS,
            "gauge",
            "1 for the slot's wal_status on blue (reserved, extended, unreserved, lost).",
        );
        if let Some(status) = health.as_ref().and_then(|h| h.wal_status.as_ref()) {
            out.sample(
                SLOT_WAL_STATUS,
                &[("slot", &self.slot), ("status", status)],
                1.0,
            );
        }

        if let Some(copy) = self.copy.get() {
            let tables = copy.snapshot();
            out.single(
                COPY_PROGRESS_RATIO,
                "gauge",
                "Share of the initial copy done (0 to 1, weighted by table size).",
                &slot,
                copy.overall_fraction(&tables),
            );
            let per_table = |f: fn(&TableCopySnapshot) -> u64| {
                tables
                    .iter()
                    .map(|t| (t.table.as_str(), f(t) as f64))
                    .collect::<Vec<_>>()
            };
            for (name, kind, help, values) in [
                (
                    COPY_ROWS,
                    "counter",
                    "Rows of the initial copy committed on green, per table.",
                    per_table(|t| t.rows),
                ),
                (
                    COPY_BYTES,
                    "counter",
                    "COPY bytes of the initial copy read from blue, per table.",
                    per_table(|t| t.bytes),
                ),
                (
                    COPY_CHUNKS_DONE,
                    "counter",
                    "Chunks of the initial copy committed on green, per table.",
                    per_table(|t| t.chunks_done),
                ),
                (
                    COPY_CHUNKS_PLANNED,
                    "gauge",
                    "Chunks of the initial copy planned, per table.",
                    per_table(|t| t.chunks),
                ),
            ] {
                out.labelled(name, kind, help, &self.slot, "table", &values);
            }
        }

        let k = &self.kafka;
        if k.enabled.load(Ordering::Relaxed) {
            let acked_lsn = k.acknowledged_lsn.load(Ordering::Relaxed);
            for (name, help, value) in [
                (
                    KAFKA_ACKNOWLEDGED_LSN,
                    "End LSN up to which Kafka holds every record, as a 64-bit LSN.",
                    acked_lsn as f64,
                ),
                (
                    KAFKA_LAG_BYTES,
                    "LSN distance from what green committed to what Kafka acknowledged (0 when Kafka is ahead).",
                    self.lag.applied_lsn().0.saturating_sub(acked_lsn) as f64,
                ),
                (
                    KAFKA_DROPPED,
                    "1 once --kafka-drop-on-wal-risk dropped Kafka from the slot's watermark in this process (Kafka misses the changes after teal_kafka_acknowledged_lsn).",
                    f64::from(u8::from(k.dropped.load(Ordering::Relaxed))),
                ),
            ] {
                out.single(name, "gauge", help, &slot, value);
            }
            let topics = lock(&k.topics).clone();
            let per_topic = |f: fn(&TopicCounts) -> u64| {
                topics
                    .iter()
                    .map(|(topic, c)| (topic.as_str(), f(c) as f64))
                    .collect::<Vec<_>>()
            };
            for (name, help, values) in [
                (
                    KAFKA_RECORDS_PRODUCED,
                    "Records handed to the Kafka producer per topic (changes, tombstones, BEGIN/END).",
                    per_topic(|c| c.produced),
                ),
                (
                    KAFKA_RECORDS_ACKNOWLEDGED,
                    "Records Kafka acknowledged (acks=all) per topic.",
                    per_topic(|c| c.acknowledged),
                ),
                (
                    KAFKA_RECORDS_FAILED,
                    "Records librdkafka gave up per topic.",
                    per_topic(|c| c.failed),
                ),
            ] {
                out.labelled(name, "counter", help, &self.slot, "topic", &values);
            }
            out.histogram(
                KAFKA_DELIVERY_SECONDS,
                "Time from handing a record to the producer to Kafka's acknowledgement.",
                &self.slot,
                &k.latency,
                k.latency_sum.seconds(),
            );
        }

        // The head as a number (its first 48 bits, exact in a float), not a
        // label: a label would start a new series with every batch.
        if let Some(prefix) = lock(&a.ledger_head)
            .as_deref()
            .and_then(|h| h.get(..12))
            .and_then(|p| u64::from_str_radix(p, 16).ok())
        {
            out.single(
                APPLY_LEDGER_HEAD_PREFIX,
                "gauge",
                "The first 48 bits of the ledger's head (the SHA-256 of its last row) as a number; the whole head is in /status.",
                &slot,
                prefix as f64,
            );
        }
        out.single(
            UP,
            "gauge",
            "1 while teal is streaming and not stalled (or copying, in teal sync), 0 otherwise.",
            &slot,
            f64::from(u8::from(
                matches!(
                    self.effective_state(),
                    RunState::Streaming | RunState::Copying
                ) && self.stalled().is_none(),
            )),
        );
        out.text
    }
}

/// `/metrics` of a `teal verify` run (`teal_verify_*`, labelled with the
/// slot): counts, never a key or a value.
pub fn verify_metrics_text(slot: &str, progress: &crate::progress::VerifyProgress) -> String {
    let s = progress.snapshot();
    let mut out = Metrics::default();
    let labels = [("slot", slot)];
    for (name, kind, help, value) in [
        (
            VERIFY_TABLES,
            "gauge",
            "Tables teal verify compares.",
            s.tables_total,
        ),
        (
            VERIFY_TABLES_COMPARED,
            "counter",
            "Tables compared so far.",
            s.tables_done,
        ),
        (
            VERIFY_BYTES,
            "gauge",
            "Estimated bytes to read on blue (heap and TOAST of the compared tables).",
            s.bytes_total,
        ),
        (
            VERIFY_BYTES_COMPARED,
            "counter",
            "Estimated bytes of the tables compared so far.",
            s.bytes_done,
        ),
        (
            VERIFY_CHUNKS,
            "counter",
            "Chunks summed in tables whose sums differed.",
            s.chunks,
        ),
        (
            VERIFY_CHUNKS_DIFFERING,
            "counter",
            "Chunks whose rows were read and compared one by one.",
            s.chunks_differing,
        ),
        (
            VERIFY_DIFFERENCES,
            "counter",
            "Differing rows found (missing, extra or different on green).",
            s.differences,
        ),
    ] {
        out.single(name, kind, help, &labels, value as f64);
    }
    out.family(VERIFY_ROWS_COMPARED, "counter", "Rows compared, per side.");
    for (side, rows) in [("blue", s.rows_blue), ("green", s.rows_green)] {
        out.sample(
            VERIFY_ROWS_COMPARED,
            &[("slot", slot), ("side", side)],
            rows as f64,
        );
    }
    out.single(
        VERIFY_EQUAL,
        "gauge",
        "1 green equals blue at the verified LSN, 0 it does not, NaN not known yet.",
        &labels,
        s.equal.map_or(f64::NAN, |e| f64::from(u8::from(e))),
    );
    out.single(
        VERIFY_DURATION_SECONDS,
        "gauge",
        "Seconds since the run started.",
        &labels,
        s.elapsed_seconds,
    );
    out.text
}

/// Builds the exposition text: a family header, then its samples.
#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A histogram of one series (per slot); `_count` is the `+Inf` bucket.
    fn histogram<B: Bounds>(
        &mut self,
        name: &str,
        help: &str,
        slot: &str,
        buckets: &Buckets<B>,
        sum: f64,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let cumulative = buckets.cumulative();
        let bounds = buckets.bounds().iter().map(ToString::to_string);
        for (le, count) in bounds.chain(["+Inf".to_owned()]).zip(&cumulative) {
            self.sample(&bucket, &[("slot", slot), ("le", &le)], *count as f64);
        }
        self.sample(&format!("{name}_sum"), &[("slot", slot)], sum);
        self.sample(
            &format!("{name}_count"),
            &[("slot", slot)],
            cumulative.last().copied().unwrap_or(0) as f64,
        );
    }

    /// A family with one sample per value of `label` (per slot).
    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        slot: &str,
        label: &str,
        values: &[(&str, f64)],
    ) {
        self.family(name, kind, help);
        for (value_of_label, v) in values {
            self.sample(name, &[("slot", slot), (label, value_of_label)], *v);
        }
    }

    /// A family of one sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}
