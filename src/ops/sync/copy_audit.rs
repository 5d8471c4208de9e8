//! The `snapshot` row a copy leaves in teal's audit trail on green.

use std::time::Instant;

use crate::monitor::Monitor;
use crate::ops::audit;
use crate::store::{AuditRecord, Store};

use super::{CopySummary, SyncConfig, SyncError};

/// The `snapshot` audit row of a copy.
pub(super) struct SyncAudit {
    record: Option<AuditRecord>,
    store: Store,
}

impl SyncAudit {
    pub(super) async fn start(
        store: &Store,
        green: &tokio_postgres::Client,
        monitor: &Monitor,
        config: &SyncConfig,
    ) -> SyncAudit {
        let record = audit::running(
            "snapshot",
            &monitor.correlation_id,
            &config.stream.source.slot,
            &config.stream.source.conninfo,
            &config.stream.apply.target,
            serde_json::json!({ "copy_workers": config.copy_workers, "chunk_rows": config.chunk_rows }),
        );
        if let Err(e) = store.audit(green, &record).await {
            tracing::warn!(error = %crate::error::Report(&e), "could not write the copy's audit row");
        }
        SyncAudit {
            record: Some(record),
            store: store.clone(),
        }
    }

    pub(super) async fn end(
        &mut self,
        green: &tokio_postgres::Client,
        summary: &CopySummary,
        started: Instant,
        result: &Result<bool, SyncError>,
    ) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        let status = match result {
            Ok(true) => "succeeded",
            Ok(false) => "stopped",
            Err(_) => "failed",
        };
        audit::finish(
            &mut record,
            status,
            started,
            serde_json::json!({
                "consistent_point": summary.consistent_point.to_string(),
                "tables": summary.tables,
                "chunks": summary.chunks,
                "rows": summary.rows,
                "bytes": summary.bytes,
                "error": result.as_ref().err().map(|e| crate::error::Report(e).to_string()),
            }),
        );
        if let Err(e) = self.store.audit(green, &record).await {
            tracing::warn!(error = %crate::error::Report(&e), "could not write the copy's audit row");
        }
    }
}
