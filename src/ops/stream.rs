//! `teal stream`: keep green an exact, transactionally consistent copy of
//! blue's published tables.
//!
//! ```text
//! ┌─▶ green: migrate teal's schema, read progress(slot) ─▶ capture from there ─▶ apply
//! │        │ transient error (green or blue gone): back off           │
//! │        │ conflict in a batch: replay it change by change           │
//! └────────┴───────────────────────────────────────────────────────────┘
//! ```
//!
//! Restarting from green's progress is what makes any failure safe: the
//! open batch was never committed, so it is streamed and applied again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, ApplyConfig, ApplyError, ApplyStats};
use crate::backoff::Backoff;
use crate::config::{AssemblerConfig, SourceConfig};
use crate::error::ErrorClass;
use crate::lsn::Lsn;
use crate::pipeline::{PipelineError, start_capture};
use crate::progress::Progress;

/// Why `teal stream` stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Applying to green failed for good.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Capturing from blue failed for good.
    #[error(transparent)]
    Capture(#[from] PipelineError),
}

/// Everything `teal stream` needs.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Blue and the slot.
    pub source: SourceConfig,
    /// Buffering of large transactions.
    pub assembler: AssemblerConfig,
    /// Green, batching, conflicts.
    pub apply: ApplyConfig,
}

/// Streams until `shutdown`, restarting from green's progress after
/// transient failures. Returns the apply counters.
pub async fn run(
    config: StreamConfig,
    shutdown: CancellationToken,
) -> Result<Arc<ApplyStats>, StreamError> {
    let stats = Arc::new(ApplyStats::default());
    let mut backoff = Backoff::new(
        config.source.reconnect_min_delay,
        config.source.reconnect_max_delay,
    );
    let mut careful_through: Option<Lsn> = None;
    let mut may_create_slot = config.source.create_slot;
    loop {
        if shutdown.is_cancelled() {
            return Ok(stats);
        }
        let result = attempt(
            &config,
            &shutdown,
            &stats,
            careful_through,
            &mut may_create_slot,
        )
        .await;
        match result {
            Ok(()) => return Ok(stats),
            Err(StreamError::Apply(ApplyError::Replay { through })) => {
                tracing::warn!(through = %through, "conflict in a batch; replaying it change by change");
                careful_through = careful_through.max(Some(through));
            }
            Err(e) if is_transient(&e) && !shutdown.is_cancelled() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "streaming interrupted; resuming from green's progress");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(stats),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &StreamError) -> bool {
    match e {
        StreamError::Apply(e) => e.class() == ErrorClass::Transient,
        StreamError::Capture(e) => e.class() == ErrorClass::Transient,
    }
}

/// One run of capture + apply, from green's progress.
async fn attempt(
    config: &StreamConfig,
    shutdown: &CancellationToken,
    stats: &Arc<ApplyStats>,
    careful_through: Option<Lsn>,
    may_create_slot: &mut bool,
) -> Result<(), StreamError> {
    let progress = Progress::new();
    let consumer = progress.register();
    let mut applier = Applier::connect(config.apply.clone(), consumer, Arc::clone(stats)).await?;
    applier.set_careful_through(careful_through);
    let applied = applier.applied();
    let mut source = config.source.clone();
    if let Some(a) = applied {
        source.start_lsn = source.start_lsn.max(Some(a.end_lsn));
    }
    // A slot created while green already holds progress would start after
    // changes green never saw: only create it for a green that starts empty.
    source.create_slot = *may_create_slot && applied.is_none();
    let run = shutdown.child_token();
    let (events, capture) = start_capture(source, config.assembler.clone(), progress, run.clone())?;
    let mut session = capture.session();
    let applying = async {
        // Before applying anything: is green behind what the slot already confirmed?
        if let Some(a) = applied {
            let connected = tokio::select! {
                r = session.wait_for(Option::is_some) => r.ok().and_then(|s| s.clone()),
                () = run.cancelled() => None,
            };
            if let Some(info) = connected {
                if let Some(slot_lsn) = info.slot_confirmed_flush_lsn.filter(|l| *l > a.end_lsn) {
                    return Err(ApplyError::Behind {
                        slot: config.apply.slot.clone(),
                        green: a.end_lsn,
                        slot_lsn,
                    });
                }
            }
        }
        applier.run(events).await
    };
    let applied_result = applying.await;
    if let Err(e) = &applied_result {
        applier.abandon(e).await;
        run.cancel();
    }
    drop(applier);
    let captured = capture.wait().await;
    if session.borrow().is_some() {
        *may_create_slot = false;
    }
    applied_result?;
    captured?;
    Ok(())
}
