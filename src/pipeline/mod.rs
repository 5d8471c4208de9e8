//! Wiring: bounded channels between the stages, and how they stop; the
//! fan-out to several consumers ([`fan_out`]) and where a stream resumes
//! ([`resume`]).
//!
//! ```text
//! source (own thread) ──Vec<SourceEvent>, cap 8──▶ decode+assemble (thread) ──Vec<Event>, cap 16──▶ consumer
//!        ▲                                                                                            │
//!        └──────────────────────────── flush LSN watch (progress) ◀──── Consumer::confirm ◀──────────┘
//! ```
//!
//! Stopping: on shutdown the source stops reading and closes its channel; the
//! assembler drains it and closes the consumer channel; the consumer finishes,
//! confirms, and drops its progress handle; then the source sends the final
//! status update. A decode or assembly error closes the assembler's input, so
//! the source stops cleanly too; [`CaptureHandle::wait`] reports the error.
//!
//! Memory: `max_memory` covers all change data. The channels hold at most 8
//! socket reads (up to 4 MiB each, the read pacer's largest budget) and 16
//! event batches of about 1 MiB (`EVENT_BATCH_BYTES`; one change more at
//! most), [`AssemblerConfig::IN_FLIGHT_BYTES`] in all; the assembler spills
//! past the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::assembler::{Assembler, AssemblerError, AssemblerStats, EventSink, SinkClosed};
use crate::config::{AssemblerConfig, SourceConfig};
use crate::error::Kind;
use crate::event::{Change, Event};
use crate::lsn::Lsn;
use crate::pgoutput::{DecodeError, Decoder};
use crate::progress::{FlushLsn, Lag};
use crate::source::{self, SessionInfo, SourceError, SourceEvent};

mod fan_out;
pub mod resume;

pub use fan_out::{Acknowledged, ApplyInput, Hold, KafkaInput, fan_out};

const SOURCE_CHANNEL_BATCHES: usize = 4;
const EVENT_CHANNEL_BATCHES: usize = 4;
/// Changes gathered before a batch goes to the consumer mid-transaction.
const EVENT_BATCH_CHANGES: usize = 8192;
/// Bytes of events (with what their changes hold) gathered before a batch
/// goes to the consumer.
const EVENT_BATCH_BYTES: usize = 1024 * 1024;

/// Why the capture pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Talking to blue failed for good.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A frame did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The messages did not form transactions.
    #[error(transparent)]
    Assemble(#[from] AssemblerError),
    /// A masked table's change could not be masked (a rule that does not
    /// fit the table as blue sends it); nothing of it went on.
    #[error(transparent)]
    Mask(#[from] crate::mask::MaskError),
    /// A stage panicked (a bug: please report it with the log).
    #[error("the {0} stage panicked")]
    Panicked(&'static str),
    /// Green holds progress behind what blue's slot already confirmed: the
    /// changes in between are gone from the slot.
    #[error(
        "green's progress for slot {slot:?} is at {green}, but the slot on blue already confirmed {slot_lsn}: green was restored from an older backup or its progress row was changed. The changes in between cannot be streamed again; resynchronize green (teal sync)"
    )]
    GreenBehind {
        /// The slot.
        slot: String,
        /// Green's applied end LSN.
        green: Lsn,
        /// The slot's confirmed flush LSN.
        slot_lsn: Lsn,
    },
}

impl PipelineError {
    /// What kind of failure it is (see [`crate::error::policy`]).
    pub fn kind(&self) -> Kind {
        match self {
            PipelineError::Source(e) => e.kind(),
            PipelineError::Decode(_) => Kind::Protocol,
            PipelineError::Assemble(e) => e.kind(),
            PipelineError::Mask(_) => Kind::Setup,
            PipelineError::Panicked(_) => Kind::Bug,
            PipelineError::GreenBehind { .. } => Kind::GreenBehind,
        }
    }
}

/// The running source and assembler.
pub struct CaptureHandle {
    source: std::thread::JoinHandle<Result<(), SourceError>>,
    assembler: std::thread::JoinHandle<Result<(), PipelineError>>,
    stats: Arc<AssemblerStats>,
    session: watch::Receiver<Option<Arc<SessionInfo>>>,
}

impl CaptureHandle {
    /// The assembler's counters (spills, transactions, memory).
    pub fn stats(&self) -> Arc<AssemblerStats> {
        Arc::clone(&self.stats)
    }

    /// The current replication session, once connected.
    pub fn session(&self) -> watch::Receiver<Option<Arc<SessionInfo>>> {
        self.session.clone()
    }

    /// Waits for both stages to end; the first error wins (the assembler's,
    /// since a source error is often only its consequence).
    pub async fn wait(self) -> Result<(), PipelineError> {
        let assembler = self.assembler;
        let assembled = tokio::task::spawn_blocking(move || assembler.join())
            .await
            .map_err(|_| PipelineError::Panicked("assembler"))?
            .map_err(|_| PipelineError::Panicked("assembler"))?;
        let source = self.source;
        let sourced = tokio::task::spawn_blocking(move || source.join())
            .await
            .map_err(|_| PipelineError::Panicked("source"))?
            .map_err(|_| PipelineError::Panicked("source"))?;
        assembled?;
        sourced.map_err(PipelineError::from)
    }
}

/// Starts reading the slot. Consumers read transactions from the returned
/// receiver and confirm what they made durable through the [`FlushLsn`]
/// consumers registered before this call (this takes the `FlushLsn` itself,
/// so that the source sees the flush watch close when they are all done).
/// `lag` learns blue's WAL end and each commit received.
pub fn start_capture(
    source_config: SourceConfig,
    assembler_config: AssemblerConfig,
    progress: FlushLsn,
    lag: Arc<Lag>,
    shutdown: CancellationToken,
) -> Result<(mpsc::Receiver<Vec<Event>>, CaptureHandle), PipelineError> {
    let (source_tx, source_rx) = mpsc::channel(SOURCE_CHANNEL_BATCHES);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_BATCHES);
    let (session_tx, session_rx) = watch::channel(None);
    let liveness = Arc::clone(lag.liveness());
    let masker = assembler_config.mask.clone().map(crate::mask::Masker::new);
    let assembler = Assembler::new(assembler_config);
    let stats = assembler.stats();
    // The threads log inside the caller's span (the run's correlation id).
    let span = tracing::Span::current();
    let assembler_span = span.clone();
    let thread = std::thread::Builder::new()
        .name("teal-assembler".into())
        .spawn(move || {
            let _in_run = assembler_span.enter();
            let result = assemble(assembler, masker, source_rx, event_tx, session_tx, lag);
            if let Err(e) = &result {
                tracing::debug!(error = %crate::error::Report(e), "decoding stopped");
            }
            result
        })
        .map_err(|e| {
            PipelineError::Source(SourceError::Setup(format!(
                "cannot start the assembler thread: {e}"
            )))
        })?;
    let flush = progress.subscribe();
    drop(progress);
    // The source owns a thread and a single-threaded runtime: it may sleep
    // outside epoll between reads (see source::stream) without delaying
    // anything else.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            PipelineError::Source(SourceError::Setup(format!(
                "cannot start the source runtime: {e}"
            )))
        })?;
    let source = std::thread::Builder::new()
        .name("teal-source".into())
        .spawn(move || {
            let _in_run = span.enter();
            runtime.block_on(source::run(
                source_config,
                source_tx,
                flush,
                shutdown,
                liveness,
            ))
        })
        .map_err(|e| {
            PipelineError::Source(SourceError::Setup(format!(
                "cannot start the source thread: {e}"
            )))
        })?;
    Ok((
        event_rx,
        CaptureHandle {
            source,
            assembler: thread,
            stats,
            session: session_rx,
        },
    ))
}

/// Decodes and assembles until the source channel closes.
fn assemble(
    mut assembler: Assembler,
    masker: Option<crate::mask::Masker>,
    mut input: mpsc::Receiver<Vec<SourceEvent>>,
    output: mpsc::Sender<Vec<Event>>,
    session: watch::Sender<Option<Arc<SessionInfo>>>,
    lag: Arc<Lag>,
) -> Result<(), PipelineError> {
    let mut decoder = Decoder::new();
    let mut sink = ChannelSink {
        tx: output,
        pending: Vec::new(),
        pending_changes: 0,
        pending_bytes: 0,
        lag: Arc::clone(&lag),
        blocked: Duration::ZERO,
        masker,
        failed: None,
    };
    let stats = assembler.stats();
    let mut skipped_reported = 0;
    while let Some(batch) = input.blocking_recv() {
        let started = Instant::now();
        // Blue's WAL end and the bytes received go to `lag` once per batch.
        let (mut wal_end, mut bytes) = (Lsn::ZERO, 0u64);
        for event in batch {
            match event {
                SourceEvent::Connected(info) => {
                    decoder.reset();
                    assembler.reset();
                    lag.restart();
                    session.send_replace(Some(info));
                }
                SourceEvent::XLogData {
                    wal_start,
                    wal_end: end,
                    data,
                    ..
                } => {
                    wal_end = wal_end.max(end);
                    bytes += data.len() as u64;
                    let msg = decoder.decode(wal_start, &data)?;
                    tracing::trace!(lsn = %wal_start, tag = %char::from(data.first().copied().unwrap_or(b'?')), "decoded message");
                    match assembler.handle(wal_start, msg, &mut sink) {
                        Err(AssemblerError::SinkClosed(_)) => {
                            return sink.failed.take().map_or(Ok(()), |e| Err(e.into()));
                        }
                        other => other?,
                    }
                }
                SourceEvent::Keepalive { wal_end: end, .. } => {
                    wal_end = wal_end.max(end);
                    if assembler.keepalive(end, &mut sink).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        lag.received(wal_end, bytes);
        let skipped = stats
            .skipped_changes
            .load(std::sync::atomic::Ordering::Relaxed);
        if skipped > skipped_reported {
            lag.skipped_changes(skipped - skipped_reported);
            skipped_reported = skipped;
        }
        let flushed = sink.flush();
        // Busy time leaves out waiting for the consumer (backpressure).
        lag.decode_busy(
            started
                .elapsed()
                .saturating_sub(std::mem::take(&mut sink.blocked)),
        );
        if flushed.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Gathers events into batches for the consumer channel.
struct ChannelSink {
    tx: mpsc::Sender<Vec<Event>>,
    pending: Vec<Event>,
    pending_changes: usize,
    pending_bytes: usize,
    lag: Arc<Lag>,
    /// Time spent waiting for room in the consumer channel.
    blocked: Duration,
    /// Masks changes of masked tables before they go on.
    masker: Option<crate::mask::Masker>,
    /// Why masking stopped the stream (reported as a closed sink).
    failed: Option<crate::mask::MaskError>,
}

impl ChannelSink {
    fn flush(&mut self) -> Result<(), SinkClosed> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending_changes = 0;
        self.pending_bytes = 0;
        let started = Instant::now();
        let sent = self
            .tx
            .blocking_send(std::mem::take(&mut self.pending))
            .map_err(|_| SinkClosed);
        self.blocked += started.elapsed();
        sent
    }
}

impl EventSink for ChannelSink {
    fn emit(&mut self, mut event: Event) -> Result<(), SinkClosed> {
        if let (Some(masker), Event::Changes(changes)) = (self.masker.as_mut(), &mut event) {
            for change in changes.iter_mut() {
                if let Err(e) = masker.mask_change(change) {
                    self.failed = Some(e);
                    return Err(SinkClosed);
                }
            }
        }
        // Counted as held: the event and each change's own struct too (on
        // narrow rows in small transactions they outweigh the values).
        self.pending_bytes += std::mem::size_of::<Event>();
        match &event {
            Event::Changes(changes) => {
                self.pending_changes += changes.len();
                self.pending_bytes += changes.iter().map(Change::memory_size).sum::<usize>();
            }
            Event::Commit(meta) => self.lag.commit_received(meta.end_lsn, meta.commit_ts),
            _ => {}
        }
        self.pending.push(event);
        if self.pending_changes >= EVENT_BATCH_CHANGES || self.pending_bytes >= EVENT_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }
}
