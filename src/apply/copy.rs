//! Insert runs streamed into green by COPY.
//!
//! ```text
//! insert run reaches 16 rows, all text (or all binary) ──▶ COPY t (cols) FROM STDIN
//!   ──▶ rows encoded as they arrive, sent in chunks of about 256 KiB
//!   ──▶ finished (CopyDone) when anything else comes: another table, another
//!       operation, a row in the other format, a flush
//! ```
//!
//! Invariant: while a COPY is open the session carries nothing else; the
//! driver would queue any statement behind the COPY, whose end green keeps
//! waiting for (see [`super::writer`]). Encoding is pure; sending is I/O.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink, Statement};

use crate::event::{CellKind, ChangeKind, RowImage, Value};
use crate::lsn::Lsn;

use super::ApplyError;
use super::run::Run;
use super::sql;
use super::target::Mapping;

/// Shorter insert runs use pipelined INSERTs (COPY costs an extra round trip).
pub(super) const COPY_MIN_ROWS: usize = 16;
/// COPY data is sent in chunks of about this size.
const COPY_CHUNK: usize = 256 * 1024;

/// COPY data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CopyFormat {
    Text,
    Binary,
}

/// The format a row can travel in by COPY, if any (not a mix of text and
/// binary values, nothing unchanged).
pub(super) fn copy_format(row: &RowImage) -> Option<CopyFormat> {
    let (mut text, mut binary) = (false, false);
    for c in row.cells() {
        match c.kind {
            CellKind::Text => text = true,
            CellKind::Binary => binary = true,
            CellKind::Null => {}
            CellKind::UnchangedToast => return None,
        }
    }
    match (text, binary) {
        (_, false) => Some(CopyFormat::Text),
        (false, true) => Some(CopyFormat::Binary),
        (true, true) => None,
    }
}

/// The format every insert of `run` can travel in by COPY, if there is one.
pub(super) fn run_format(run: &Run) -> Option<CopyFormat> {
    let mut formats = run.changes.iter().map(|(c, _)| match &c.kind {
        ChangeKind::Insert { new, .. } => copy_format(new),
        _ => None,
    });
    let first = formats.next()??;
    formats.all(|f| f == Some(first)).then_some(first)
}

/// An insert run being streamed into green through COPY.
pub(super) struct Copying {
    pub(super) mapping: Arc<Mapping>,
    pub(super) format: CopyFormat,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    buf: Vec<u8>,
    rows: u64,
    /// Commit LSN of the last transaction with rows in this COPY.
    through: Lsn,
}

impl Copying {
    /// Opens the COPY (`statement`, prepared for `format`) and encodes `run`'s rows.
    pub(super) async fn open(
        client: &Client,
        statement: &Statement,
        format: CopyFormat,
        run: Run,
    ) -> Result<Copying, ApplyError> {
        let through = run.through().unwrap_or(Lsn::ZERO);
        let sink = client
            .copy_in::<_, Bytes>(statement)
            .await
            .map_err(|e| copy_error(&run.mapping, 0, through, e))?;
        let mut copying = Copying {
            mapping: Arc::clone(&run.mapping),
            format,
            sink: Box::pin(sink),
            buf: Vec::with_capacity(COPY_CHUNK + 64 * 1024),
            rows: 0,
            through,
        };
        if format == CopyFormat::Binary {
            copying.buf.extend_from_slice(sql::COPY_BINARY_HEADER);
        }
        for (change, _) in &run.changes {
            if let ChangeKind::Insert { new, .. } = &change.kind {
                copying.encode(new);
            }
        }
        Ok(copying)
    }

    /// Whether an insert of `mapping` with row `new` joins this COPY.
    pub(super) fn takes(&self, mapping: &Arc<Mapping>, new: &RowImage) -> bool {
        Arc::ptr_eq(&self.mapping, mapping) && copy_format(new) == Some(self.format)
    }

    /// Adds a row of a transaction committed at `through`; sends a chunk
    /// once enough is buffered.
    pub(super) async fn add(&mut self, row: &RowImage, through: Lsn) -> Result<(), ApplyError> {
        self.encode(row);
        self.through = through;
        if self.buf.len() >= COPY_CHUNK {
            self.send_chunk().await.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn encode(&mut self, row: &RowImage) {
        match self.format {
            CopyFormat::Text => {
                for (i, v) in row.values().enumerate() {
                    if i > 0 {
                        self.buf.push(b'\t');
                    }
                    sql::copy_text_value(
                        &mut self.buf,
                        match v {
                            Value::Text(t) => Some(t),
                            _ => None,
                        },
                    );
                }
                self.buf.push(b'\n');
            }
            CopyFormat::Binary => {
                self.buf
                    .extend_from_slice(&(row.len() as i16).to_be_bytes());
                for v in row.values() {
                    match v {
                        Value::Binary(b) => {
                            self.buf.extend_from_slice(&(b.len() as i32).to_be_bytes());
                            self.buf.extend_from_slice(b);
                        }
                        _ => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
            }
        }
        self.rows += 1;
    }

    async fn send_chunk(&mut self) -> Result<(), tokio_postgres::Error> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(COPY_CHUNK + 64 * 1024));
        self.sink.send(Bytes::from(chunk)).await
    }

    fn error(&self, e: tokio_postgres::Error) -> ApplyError {
        copy_error(&self.mapping, self.rows, self.through, e)
    }

    /// Sends the rest and ends the COPY.
    pub(super) async fn finish(mut self) -> Result<u64, ApplyError> {
        if self.format == CopyFormat::Binary {
            self.buf.extend_from_slice(sql::COPY_BINARY_TRAILER);
        }
        if !self.buf.is_empty() {
            self.send_chunk().await.map_err(|e| self.error(e))?;
        }
        let finished = self.sink.as_mut().finish().await;
        finished.map_err(|e| self.error(e))
    }
}

/// A failed insert: a unique violation asks for a careful replay.
pub(super) fn copy_error(
    mapping: &Mapping,
    rows: u64,
    through: Lsn,
    source: tokio_postgres::Error,
) -> ApplyError {
    if super::writer::is_unique_violation(&source) {
        ApplyError::Replay { through }
    } else {
        ApplyError::Sql {
            context: format!(
                "inserting {rows} rows into {} (transactions up to {through})",
                mapping.name()
            ),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{V, insert, keyed, row, txn};
    use super::super::run::RunOp;
    use super::*;

    #[test]
    fn rows_travel_in_one_format_and_never_with_unsent_toast() {
        assert_eq!(
            copy_format(&row(&[V::T("1"), V::N])),
            Some(CopyFormat::Text)
        );
        assert_eq!(copy_format(&row(&[V::N, V::N])), Some(CopyFormat::Text));
        assert_eq!(
            copy_format(&row(&[V::B(b"\x01"), V::N])),
            Some(CopyFormat::Binary)
        );
        assert_eq!(copy_format(&row(&[V::T("1"), V::B(b"\x01")])), None);
        assert_eq!(copy_format(&row(&[V::T("1"), V::U])), None);
    }

    #[test]
    fn a_run_goes_by_copy_only_when_all_its_rows_share_a_format() {
        let m = keyed("t", 2);
        let t = txn(1);
        let mut run = Run::new(Arc::clone(&m), RunOp::Insert);
        for k in 0..16 {
            run.push(insert(&m, &[V::T(&k.to_string()), V::N]), &t);
        }
        assert_eq!(run_format(&run), Some(CopyFormat::Text));
        run.push(insert(&m, &[V::B(b"\x00"), V::N]), &t);
        assert_eq!(run_format(&run), None);
        assert_eq!(run_format(&Run::new(m, RunOp::Insert)), None);
    }
}
