//! Whole transactions in commit order, from pgoutput messages.
//!
//! ```text
//!  Begin .. changes .. Commit ───────────────┐
//!  Stream Start(x) .. Stream Stop (blocks,   ├─▶ buffer per transaction ──commit──▶ Begin, Changes.., Commit
//!    interleaved with other transactions)    │     (memory, spilled past --max-memory)
//!  Stream Commit(x) / Stream Abort(x, sub) ──┘
//! ```
//!
//! Invariants:
//! - a transaction is released only when its commit arrived, all at once and
//!   in commit order, so consumers never see a partial or aborted transaction;
//! - a Stream Abort drops exactly the aborted (sub)transaction's changes;
//! - memory held by buffered changes stays under `max_memory` minus what
//!   the stage channels may hold ([`AssemblerConfig::buffer_budget`]): past it the
//!   largest buffered transaction spills to a temporary file and is read back
//!   in order at commit;
//! - after a reconnect ([`Assembler::reset`]) transactions whose commit lies
//!   before the end of the last released one are dropped, so a resent
//!   transaction is never released twice.
//!
//! The assembler never talks to green or to the socket: it consumes decoded
//! messages and emits [`Event`]s into an [`EventSink`].

mod buffer;
mod catalog;
mod spill;

pub use spill::SpillError;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::AssemblerConfig;
use crate::error::Kind;
use crate::event::{
    Cell, CellKind, Change, ChangeKind, Event, LogicalMessage, OldRow, Origin, QualifiedName,
    Relation, RowImage, TxnMeta,
};
use crate::lsn::{Lsn, Xid};
use crate::pgoutput::{self, ColumnKind, Message, OldTuple, TupleData};

use buffer::TxnBuffer;
use catalog::{Catalog, View};

/// Changes per `Event::Changes` when replaying a spilled transaction.
const REPLAY_CHUNK_CHANGES: usize = buffer::SEGMENT_MAX;
/// Bytes per `Event::Changes` when replaying a spilled transaction.
const REPLAY_CHUNK_BYTES: usize = buffer::SEGMENT_MAX_BYTES;

/// The consumer of assembled events went away (teal is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the consumer of change events stopped")]
pub struct SinkClosed;

/// Where the assembler puts what it releases.
pub trait EventSink {
    /// Takes one event; may block for backpressure.
    fn emit(&mut self, event: Event) -> Result<(), SinkClosed>;
}

impl EventSink for Vec<Event> {
    fn emit(&mut self, event: Event) -> Result<(), SinkClosed> {
        self.push(event);
        Ok(())
    }
}

/// The message stream does not make sense as transactions.
#[derive(Debug, thiserror::Error)]
pub enum AssemblerError {
    /// A change names a relation blue never described.
    #[error(
        "change at LSN {lsn} refers to relation OID {rel_id}, which blue has not described with a Relation message"
    )]
    UnknownRelation {
        /// Frame LSN.
        lsn: Lsn,
        /// Relation OID on blue.
        rel_id: u32,
    },
    /// A tuple's column count differs from its relation's.
    #[error(
        "change to {relation} at LSN {lsn} has {got} columns, but its Relation message listed {expected}"
    )]
    ColumnCount {
        /// Frame LSN.
        lsn: Lsn,
        /// The table.
        relation: QualifiedName,
        /// Columns in the Relation message.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
    /// Messages arrived in an order pgoutput never produces.
    #[error("protocol violation at LSN {lsn}: {what}")]
    Protocol {
        /// Frame LSN.
        lsn: Lsn,
        /// What was out of order.
        what: String,
    },
    /// Two-phase messages, which teal never asks for.
    #[error(
        "two-phase message for transaction {gid:?} at LSN {lsn}: teal does not enable two_phase on its slots; recreate the slot without two_phase"
    )]
    TwoPhase {
        /// Frame LSN.
        lsn: Lsn,
        /// Global transaction id.
        gid: String,
    },
    /// Writing or reading a spill file failed.
    #[error(transparent)]
    Spill(#[from] SpillError),
    /// The consumer is gone.
    #[error(transparent)]
    SinkClosed(#[from] SinkClosed),
}

impl AssemblerError {
    /// What kind of failure it is (see [`crate::error::policy`]): blue's
    /// stream made no sense, or the spill directory failed; retrying would
    /// meet the same.
    pub fn kind(&self) -> Kind {
        match self {
            AssemblerError::Spill(_) | AssemblerError::SinkClosed(_) => Kind::Setup,
            _ => Kind::Protocol,
        }
    }
}

/// Counters for tests, logs and (later) metrics.
#[derive(Debug, Default)]
pub struct AssemblerStats {
    /// Transactions released.
    pub transactions: AtomicU64,
    /// Changes released.
    pub changes: AtomicU64,
    /// Transactions dropped because they were released before a reconnect.
    pub skipped_transactions: AtomicU64,
    /// Changes of tables `--tables` / `--exclude-tables` leave out, as
    /// received (a transaction blue sends again after a reconnect counts
    /// again).
    pub skipped_changes: AtomicU64,
    /// Changes of transactions whose origin is one of
    /// [`AssemblerConfig::skip_origins`] (what teal applied to this side),
    /// left out so that they do not echo back.
    pub echoed_changes: AtomicU64,
    /// Changes written to spill files.
    pub spilled_changes: AtomicU64,
    /// Bytes written to spill files.
    pub spilled_bytes: AtomicU64,
    /// Spill files created.
    pub spill_files: AtomicU64,
    /// Bytes of buffered changes in memory now.
    pub memory_bytes: AtomicU64,
    /// Highest `memory_bytes` seen.
    pub peak_memory_bytes: AtomicU64,
}

struct OpenTxn {
    begin: pgoutput::Begin,
    origin: Option<Origin>,
    buffer: TxnBuffer,
}

struct StreamTxn {
    origin: Option<Origin>,
    buffer: TxnBuffer,
    catalog: Catalog,
}

/// Turns decoded messages into whole transactions, in commit order.
pub struct Assembler {
    config: AssemblerConfig,
    catalog: Catalog,
    open: Option<OpenTxn>,
    streams: rustc_hash::FxHashMap<Xid, StreamTxn>,
    current_stream: Option<Xid>,
    memory: usize,
    /// [`AssemblerConfig::buffer_budget`].
    budget: usize,
    last_end_lsn: Lsn,
    last_idle: Lsn,
    stats: Arc<AssemblerStats>,
}

impl Assembler {
    /// A fresh assembler.
    pub fn new(config: AssemblerConfig) -> Assembler {
        Assembler {
            budget: usize::try_from(config.buffer_budget()).unwrap_or(usize::MAX),
            config,
            catalog: Catalog::default(),
            open: None,
            streams: Default::default(),
            current_stream: None,
            memory: 0,
            last_end_lsn: Lsn::ZERO,
            last_idle: Lsn::ZERO,
            stats: Arc::default(),
        }
    }

    /// Shared counters.
    pub fn stats(&self) -> Arc<AssemblerStats> {
        Arc::clone(&self.stats)
    }

    /// Forgets every transaction in flight: the connection was lost and blue
    /// will send them again from the start.
    pub fn reset(&mut self) {
        self.open = None;
        self.streams.clear();
        self.current_stream = None;
        self.set_memory(0);
    }

    /// Blue's keepalive reported `wal_end`: when nothing is in flight, tell
    /// consumers they may confirm it (an idle slot must not pin WAL).
    pub fn keepalive(&mut self, wal_end: Lsn, sink: &mut dyn EventSink) -> Result<(), SinkClosed> {
        let idle = self.open.is_none() && self.streams.is_empty() && self.current_stream.is_none();
        if idle && wal_end > self.last_idle && wal_end >= self.last_end_lsn {
            self.last_idle = wal_end;
            sink.emit(Event::Idle { wal_end })?;
        }
        Ok(())
    }

    /// Handles one message from the frame starting at `lsn`.
    pub fn handle(
        &mut self,
        lsn: Lsn,
        msg: Message,
        sink: &mut dyn EventSink,
    ) -> Result<(), AssemblerError> {
        let protocol = |what: &str| AssemblerError::Protocol {
            lsn,
            what: what.to_owned(),
        };
        match msg {
            Message::Begin(begin) => {
                if self.open.is_some() || self.current_stream.is_some() {
                    return Err(protocol("Begin while another transaction is open"));
                }
                self.open = Some(OpenTxn {
                    begin,
                    origin: None,
                    buffer: TxnBuffer::default(),
                });
            }
            Message::Commit(commit) => {
                let open = self
                    .open
                    .take()
                    .ok_or_else(|| protocol("Commit without Begin"))?;
                if commit.commit_lsn != open.begin.final_lsn {
                    return Err(protocol(&format!(
                        "Commit LSN {} differs from the final_lsn {} announced by Begin",
                        commit.commit_lsn, open.begin.final_lsn
                    )));
                }
                let meta = TxnMeta {
                    xid: open.begin.xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_ts: commit.commit_ts,
                    origin: open.origin,
                    streamed: false,
                    change_count: 0,
                };
                self.release(meta, open.buffer, sink)?;
            }
            Message::Origin(o) => {
                let origin = Some(Origin {
                    name: o.name,
                    lsn: o.commit_lsn,
                });
                if let Some(top) = self.current_stream {
                    if let Some(s) = self.streams.get_mut(&top) {
                        s.origin = origin;
                    }
                } else if let Some(open) = self.open.as_mut() {
                    open.origin = origin;
                } else {
                    return Err(protocol("Origin outside a transaction"));
                }
            }
            Message::Relation(rel) => {
                let rel_id = rel.rel_id;
                let stream = self
                    .current_stream
                    .and_then(|top| self.streams.get_mut(&top));
                let view = View {
                    shared: &self.catalog,
                    local: stream.as_deref().map(|s| &s.catalog),
                };
                let relation = Arc::new(view.build_relation(rel).ok_or_else(|| {
                    protocol(&format!(
                        "Relation {rel_id} has an unknown replica identity"
                    ))
                })?);
                match stream {
                    Some(s) => s.catalog.insert_relation(relation),
                    None => self.catalog.insert_relation(relation),
                }
            }
            Message::Type(ty) => match self.stream_catalog_mut() {
                Some(local) => local.define_type(ty),
                None => self.catalog.define_type(ty),
            },
            Message::Insert(m) => self.add_change(lsn, m.xid, |v| {
                let relation = relation(v, m.rel_id, lsn)?;
                let new = row(&relation, m.new, lsn)?;
                Ok(ChangeKind::Insert { relation, new })
            })?,
            Message::Update(m) => self.add_change(lsn, m.xid, |v| {
                let relation = relation(v, m.rel_id, lsn)?;
                let old = m.old.map(|o| old_row(&relation, o, lsn)).transpose()?;
                let new = row(&relation, m.new, lsn)?;
                Ok(ChangeKind::Update { relation, old, new })
            })?,
            Message::Delete(m) => self.add_change(lsn, m.xid, |v| {
                let relation = relation(v, m.rel_id, lsn)?;
                let old = old_row(&relation, m.old, lsn)?;
                Ok(ChangeKind::Delete { relation, old })
            })?,
            Message::Truncate(m) => {
                let (cascade, restart_identity) = (m.cascade(), m.restart_identity());
                self.add_change(lsn, m.xid, |v| {
                    let relations = m
                        .rel_ids
                        .iter()
                        .map(|&id| relation(v, id, lsn))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(ChangeKind::Truncate {
                        relations,
                        cascade,
                        restart_identity,
                    })
                })?
            }
            Message::Message(m) => {
                let transactional = m.transactional();
                let message = LogicalMessage {
                    transactional,
                    lsn: m.lsn,
                    prefix: m.prefix,
                    content: m.content,
                };
                if transactional {
                    self.add_change(lsn, m.xid, |_| Ok(ChangeKind::Message(message)))?;
                } else {
                    sink.emit(Event::Message(message))?;
                }
            }
            Message::StreamStart(s) => {
                if self.open.is_some() {
                    return Err(protocol("Stream Start inside a non-streamed transaction"));
                }
                if s.first_segment {
                    if self.streams.contains_key(&s.xid) {
                        return Err(protocol(&format!(
                            "first stream segment of transaction {} arrived twice",
                            s.xid
                        )));
                    }
                    self.streams.insert(
                        s.xid,
                        StreamTxn {
                            origin: None,
                            buffer: TxnBuffer::default(),
                            catalog: Catalog::default(),
                        },
                    );
                } else if !self.streams.contains_key(&s.xid) {
                    return Err(protocol(&format!(
                        "stream of transaction {} continued without its first segment",
                        s.xid
                    )));
                }
                self.current_stream = Some(s.xid);
            }
            Message::StreamStop => self.current_stream = None,
            Message::StreamCommit(c) => {
                if self.current_stream.is_some() {
                    return Err(protocol("Stream Commit inside a stream block"));
                }
                let stream = self.streams.remove(&c.xid).ok_or_else(|| {
                    protocol(&format!("Stream Commit for unknown transaction {}", c.xid))
                })?;
                self.catalog.absorb(stream.catalog);
                let meta = TxnMeta {
                    xid: c.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_ts: c.commit_ts,
                    origin: stream.origin,
                    streamed: true,
                    change_count: 0,
                };
                self.release(meta, stream.buffer, sink)?;
            }
            Message::StreamAbort(a) => {
                if a.xid == a.subxid {
                    if let Some(stream) = self.streams.remove(&a.xid) {
                        let memory = self.memory - stream.buffer.memory_bytes();
                        self.set_memory(memory);
                    }
                } else if let Some(stream) = self.streams.get_mut(&a.xid) {
                    let freed = stream.buffer.abort_subxact(a.subxid)?;
                    let memory = self.memory - freed;
                    self.set_memory(memory);
                }
            }
            Message::BeginPrepare(p) => return Err(AssemblerError::TwoPhase { lsn, gid: p.gid }),
            Message::Prepare(p) | Message::StreamPrepare(p) => {
                return Err(AssemblerError::TwoPhase { lsn, gid: p.gid });
            }
            Message::CommitPrepared(p) => return Err(AssemblerError::TwoPhase { lsn, gid: p.gid }),
            Message::RollbackPrepared(p) => {
                return Err(AssemblerError::TwoPhase { lsn, gid: p.gid });
            }
        }
        Ok(())
    }

    fn stream_catalog_mut(&mut self) -> Option<&mut Catalog> {
        let top = self.current_stream?;
        self.streams.get_mut(&top).map(|s| &mut s.catalog)
    }

    fn add_change(
        &mut self,
        lsn: Lsn,
        xid: Option<Xid>,
        build: impl FnOnce(&View<'_>) -> Result<ChangeKind, AssemblerError>,
    ) -> Result<(), AssemblerError> {
        let (buffer, local, top, origin) = if let Some(top) = self.current_stream {
            let stream = self.streams.get_mut(&top).ok_or(AssemblerError::Protocol {
                lsn,
                what: format!("change for stream {top}, which was never started"),
            })?;
            (
                &mut stream.buffer,
                Some(&stream.catalog),
                top,
                stream.origin.as_ref(),
            )
        } else if let Some(open) = self.open.as_mut() {
            (&mut open.buffer, None, open.begin.xid, open.origin.as_ref())
        } else {
            return Err(AssemblerError::Protocol {
                lsn,
                what: "change outside a transaction".into(),
            });
        };
        if origin.is_some_and(|o| self.config.skip_origins.contains(&o.name)) {
            self.stats.echoed_changes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let view = View {
            shared: &self.catalog,
            local,
        };
        let mut kind = build(&view)?;
        if !self.config.tables.is_all() || self.config.own_schema.is_some() {
            let tables = &self.config.tables;
            let own = self.config.own_schema.as_deref();
            let selects = |name: &crate::event::QualifiedName| {
                tables.selects(name) && own != Some(name.namespace.as_str())
            };
            let keep = match &mut kind {
                ChangeKind::Insert { relation, .. }
                | ChangeKind::Update { relation, .. }
                | ChangeKind::Delete { relation, .. } => selects(&relation.name),
                ChangeKind::Truncate { relations, .. } => {
                    relations.retain(|r| selects(&r.name));
                    !relations.is_empty()
                }
                ChangeKind::Message(_) => true,
            };
            if !keep {
                self.stats.skipped_changes.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let size = buffer.push(top, xid.unwrap_or(top), Change { lsn, kind });
        let memory = self.memory + size;
        self.set_memory(memory);
        if self.memory > self.budget {
            self.spill_until_under_bound()?;
        }
        Ok(())
    }

    fn spill_until_under_bound(&mut self) -> Result<(), AssemblerError> {
        while self.memory > self.budget {
            let largest = self
                .open
                .as_mut()
                .map(|o| &mut o.buffer)
                .into_iter()
                .chain(self.streams.values_mut().map(|s| &mut s.buffer))
                .max_by_key(|b| b.memory_bytes());
            let Some(buffer) = largest.filter(|b| b.memory_bytes() > 0) else {
                break;
            };
            let spilled = buffer.spill(&self.config.spill_dir)?;
            self.stats
                .spilled_changes
                .fetch_add(spilled.changes, Ordering::Relaxed);
            self.stats
                .spilled_bytes
                .fetch_add(spilled.bytes, Ordering::Relaxed);
            if spilled.new_file {
                self.stats.spill_files.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(
                changes = spilled.changes,
                bytes = spilled.bytes,
                "spilled buffered changes to disk"
            );
            let memory = self.memory - spilled.freed;
            self.set_memory(memory);
        }
        Ok(())
    }

    fn set_memory(&mut self, memory: usize) {
        self.memory = memory;
        self.stats
            .memory_bytes
            .store(memory as u64, Ordering::Relaxed);
        self.stats
            .peak_memory_bytes
            .fetch_max(memory as u64, Ordering::Relaxed);
    }

    /// Emits a committed transaction, unless it was released before a reconnect.
    fn release(
        &mut self,
        mut meta: TxnMeta,
        buffer: TxnBuffer,
        sink: &mut dyn EventSink,
    ) -> Result<(), AssemblerError> {
        let memory = self.memory - buffer.memory_bytes();
        self.set_memory(memory);
        // Blue skips a transaction whose commit record starts before the start
        // position; a resent one therefore starts before the end of the last one
        // released, and a new one at or after it.
        if meta.commit_lsn < self.last_end_lsn {
            self.stats
                .skipped_transactions
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        meta.change_count = buffer.len();
        let meta = Arc::new(meta);
        sink.emit(Event::Begin(Arc::clone(&meta)))?;
        let replay = buffer.into_replay()?;
        if let Some(mut reader) = replay.spilled {
            let mut chunk = Vec::with_capacity(REPLAY_CHUNK_CHANGES);
            let mut chunk_bytes = 0;
            while let Some(change) = reader.next_change()? {
                chunk_bytes += change.memory_size();
                chunk.push(change);
                if chunk.len() >= REPLAY_CHUNK_CHANGES || chunk_bytes >= REPLAY_CHUNK_BYTES {
                    sink.emit(Event::Changes(std::mem::take(&mut chunk)))?;
                    chunk_bytes = 0;
                }
            }
            if !chunk.is_empty() {
                sink.emit(Event::Changes(chunk))?;
            }
        }
        for segment in replay.memory {
            sink.emit(Event::Changes(segment))?;
        }
        sink.emit(Event::Commit(Arc::clone(&meta)))?;
        self.last_end_lsn = self.last_end_lsn.max(meta.end_lsn);
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .changes
            .fetch_add(meta.change_count, Ordering::Relaxed);
        Ok(())
    }
}

fn relation(view: &View<'_>, rel_id: u32, lsn: Lsn) -> Result<Arc<Relation>, AssemblerError> {
    view.relation(rel_id)
        .cloned()
        .ok_or(AssemblerError::UnknownRelation { lsn, rel_id })
}

fn old_row(rel: &Relation, old: OldTuple, lsn: Lsn) -> Result<OldRow, AssemblerError> {
    Ok(match old {
        OldTuple::Key(t) => OldRow::Key(row(rel, t, lsn)?),
        OldTuple::Full(t) => OldRow::Full(row(rel, t, lsn)?),
    })
}

/// Re-labels the decoder's spans as event cells (same layout: the Vec is reused).
fn row(rel: &Relation, tuple: TupleData, lsn: Lsn) -> Result<RowImage, AssemblerError> {
    let (frame, spans) = tuple.into_parts();
    if spans.len() != rel.columns.len() {
        return Err(AssemblerError::ColumnCount {
            lsn,
            relation: rel.name.clone(),
            expected: rel.columns.len(),
            got: spans.len(),
        });
    }
    let cells = spans
        .into_iter()
        .map(|s| Cell {
            kind: match s.kind {
                ColumnKind::Null => CellKind::Null,
                ColumnKind::UnchangedToast => CellKind::UnchangedToast,
                ColumnKind::Text => CellKind::Text,
                ColumnKind::Binary => CellKind::Binary,
            },
            start: s.start,
            len: s.len,
        })
        .collect();
    RowImage::from_parts(frame, cells).map_err(|e| AssemblerError::Protocol {
        lsn,
        what: e.to_string(),
    })
}
