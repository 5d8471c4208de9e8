//! The audit trail of one run: a correlation id for every log line and
//! audit row, and the `stream` session row written on green.
//!
//! ```text
//! run ──start──▶ audit(running) ──slot held──▶ older running rows: interrupted
//!     ──stop───▶ audit(stopped | failed, duration, counters) [+ schema_error row]
//! ```
//!
//! Audit writes use their own short sessions on green, never the apply
//! session, and never stop the stream: when green cannot take them they
//! are retried (the start) or logged (the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyError, MapError};
use crate::backoff::Backoff;
use crate::config::ConnInfo;
use crate::lsn::PgTimestamp;
use crate::monitor::{Monitor, RunState, new_id};
use crate::session::connect_plain;
use crate::store::{AuditRecord, Store};

/// Why an audit row could not be written (logged; never stops teal).
#[derive(Debug, thiserror::Error)]
enum AuditError {
    /// Green could not be reached.
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// The statement failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Green did not answer in time.
    #[error("green did not answer in time")]
    Timeout,
}

/// How long the final audit write may take.
const END_TIMEOUT: Duration = Duration::from_secs(10);

/// `user@host` of this process.
pub fn performed_by() -> String {
    let user = crate::config::os_user_name()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    format!("{user}@{}", host_name())
}

/// This machine's host name (`unknown` when it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// A `running` audit row of `operation` on `slot`, starting now, by this
/// user@host; source and target without passwords.
pub fn running(
    operation: &'static str,
    correlation_id: &str,
    slot: &str,
    source: &ConnInfo,
    target: &ConnInfo,
    details: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        operation_id: new_id(),
        correlation_id: correlation_id.to_owned(),
        operation,
        status: "running",
        slot: Some(slot.to_owned()),
        started_at: PgTimestamp::now(),
        ended_at: None,
        duration_ms: None,
        // Display leaves the password out.
        source: Some(source.to_string()),
        target: Some(target.to_string()),
        performed_by: performed_by(),
        details,
    }
}

/// Ends `record` now with `status` and `details` (started at `started`).
pub fn finish(
    record: &mut AuditRecord,
    status: &'static str,
    started: Instant,
    details: serde_json::Value,
) {
    record.status = status;
    record.ended_at = Some(PgTimestamp::now());
    record.duration_ms = Some(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX));
    record.details = details;
}

/// The audit row of one `teal stream` session.
pub struct StreamAudit {
    store: Store,
    target: ConnInfo,
    record: AuditRecord,
    started: Instant,
}

impl StreamAudit {
    /// A session of `slot` from `source` to `target` in run `correlation_id`.
    pub fn new(
        store: Store,
        correlation_id: &str,
        slot: &str,
        source: &ConnInfo,
        target: &ConnInfo,
    ) -> StreamAudit {
        StreamAudit {
            store,
            target: target.clone(),
            record: running(
                "stream",
                correlation_id,
                slot,
                source,
                target,
                serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }),
            ),
            started: Instant::now(),
        }
    }

    async fn write(&self, record: &AuditRecord, migrate: bool) -> Result<(), AuditError> {
        let mut client = connect_plain(&self.target, "teal audit").await?;
        if migrate {
            self.store.migrate(&mut client).await?;
        }
        Ok(self.store.audit(&client, record).await?)
    }

    /// Records the start (retrying until green takes it or `stop`), then,
    /// once the stream holds the slot, marks this slot's sessions that
    /// never recorded an end as interrupted.
    pub async fn start(self: Arc<Self>, monitor: Arc<Monitor>, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.write(&self.record, true).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %crate::error::Report(&e), "cannot record the session start in teal's audit trail yet; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        while monitor.state() != RunState::Streaming {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let slot = self.record.slot.as_deref().unwrap_or_default();
        let marked = async {
            let client = connect_plain(&self.target, "teal audit").await?;
            Ok::<_, AuditError>(
                self.store
                    .audit_interrupted(&client, "stream", slot, &self.record.correlation_id)
                    .await?,
            )
        };
        let marked = tokio::time::timeout(END_TIMEOUT, marked)
            .await
            .unwrap_or(Err(AuditError::Timeout));
        match marked {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sessions = n,
                "earlier sessions of this slot ended without a record: marked interrupted"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::error::Report(&e), "cannot mark interrupted sessions in teal's audit trail")
            }
        }
    }

    /// Records the end: `stopped` or `failed`, counters and the error; a
    /// schema error gets its own `schema_error` row too.
    pub async fn end(&self, monitor: &Monitor, error: Option<&crate::ops::stream::StreamError>) {
        use std::sync::atomic::Ordering::Relaxed;
        let a = &monitor.apply;
        let mut record = self.record.clone();
        let status = if error.is_some() { "failed" } else { "stopped" };
        finish(
            &mut record,
            status,
            self.started,
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "transactions": a.transactions.load(Relaxed),
                "changes": a.changes.load(Relaxed),
                "batches": a.batches.load(Relaxed),
                "conflicts": a.conflicts.load(Relaxed),
                "retries": monitor.retries(),
                "applied_lsn": monitor.lag.applied_lsn().to_string(),
                "error": error.map(|e| crate::error::Report(e).to_string()),
            }),
        );
        let mut records = vec![record];
        if let Some(e) = error.filter(|e| is_schema_error(e)) {
            let now = PgTimestamp::now();
            records.push(AuditRecord {
                operation_id: new_id(),
                operation: "schema_error",
                status: "failed",
                started_at: now,
                ended_at: Some(now),
                duration_ms: Some(0),
                details: serde_json::json!({ "error": e.to_string() }),
                ..self.record.clone()
            });
        }
        for r in &records {
            match tokio::time::timeout(END_TIMEOUT, self.write(r, false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(operation = r.operation, error = %crate::error::Report(&e), "cannot record the end in teal's audit trail")
                }
                Err(_) => tracing::warn!(
                    operation = r.operation,
                    "recording the end in teal's audit trail timed out"
                ),
            }
        }
    }
}

/// Whether the stream stopped because green's tables do not fit blue's.
fn is_schema_error(e: &crate::ops::stream::StreamError) -> bool {
    matches!(
        e,
        crate::ops::stream::StreamError::Apply(ApplyError::Map(MapError::Drift(_)))
    )
}
