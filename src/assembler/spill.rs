//! Spill files: buffered changes written to an anonymous temporary file and
//! read back in order.
//!
//! One file per buffered transaction, created with `tempfile` (unlinked at
//! once, so even `kill -9` leaves nothing behind). Record format, big-endian:
//!
//! ```text
//! u32 record length (after this field) | u64 change LSN | u8 op | body
//! insert:   u32 relation slot, row
//! update:   u32 relation slot, u8 old kind (0 none, 1 key, 2 full), [row], row
//! delete:   u32 relation slot, u8 old kind, row
//! truncate: u8 options, u32 n, n x u32 relation slot
//! message:  u8 transactional, u64 lsn, u32 len, prefix, u32 len, content
//! row:      u16 columns, columns x (u8 kind, u32 len), then the values back to back
//! ```
//!
//! Relations are written as slots into a table kept in memory beside the file
//! (a relation is shared by many changes; its Arc is kept, not re-serialized).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::event::{
    Cell, CellKind, Change, ChangeKind, LogicalMessage, OldRow, Relation, RowImage,
};
use crate::lsn::Lsn;

/// Why a spill file could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The file system refused (disk full, permissions, ...).
    #[error("spill file I/O failed in {dir}")]
    Io {
        /// The spill directory.
        dir: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A record read back does not parse: the file was damaged.
    #[error("spill file is corrupt at byte {offset}: {what}")]
    Corrupt {
        /// Offset of the bad record.
        offset: u64,
        /// What did not parse.
        what: &'static str,
    },
}

const OP_INSERT: u8 = 1;
const OP_UPDATE: u8 = 2;
const OP_DELETE: u8 = 3;
const OP_TRUNCATE: u8 = 4;
const OP_MESSAGE: u8 = 5;

/// An append-only file of changes plus the relations they reference.
pub(crate) struct SpillFile {
    writer: BufWriter<File>,
    dir: String,
    relations: Vec<Arc<Relation>>,
    /// Relation slot by the address of its Arc (shared Arcs are one relation version).
    slots: HashMap<u64, u32>,
    /// Bytes written so far (logical end of file).
    len: u64,
    scratch: Vec<u8>,
}

impl SpillFile {
    pub(crate) fn create(dir: &Path) -> Result<SpillFile, SpillError> {
        let dir_name = dir.display().to_string();
        let file = tempfile::tempfile_in(dir).map_err(|source| SpillError::Io {
            dir: dir_name.clone(),
            source,
        })?;
        Ok(SpillFile {
            writer: BufWriter::with_capacity(256 * 1024, file),
            dir: dir_name,
            relations: Vec::new(),
            slots: HashMap::new(),
            len: 0,
            scratch: Vec::with_capacity(4096),
        })
    }

    fn io(&self, source: io::Error) -> SpillError {
        SpillError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Logical size: where the next record starts.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn slot(&mut self, rel: &Arc<Relation>) -> u32 {
        let key = rel.version;
        if let Some(&slot) = self.slots.get(&key) {
            return slot;
        }
        let slot = self.relations.len() as u32;
        self.relations.push(Arc::clone(rel));
        self.slots.insert(key, slot);
        slot
    }

    /// Appends one change; returns the bytes written.
    pub(crate) fn append(&mut self, change: &Change) -> Result<u64, SpillError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&change.lsn.0.to_be_bytes());
        match &change.kind {
            ChangeKind::Insert { relation, new } => {
                buf.push(OP_INSERT);
                buf.extend_from_slice(&self.slot(relation).to_be_bytes());
                put_row(&mut buf, new);
            }
            ChangeKind::Update { relation, old, new } => {
                buf.push(OP_UPDATE);
                buf.extend_from_slice(&self.slot(relation).to_be_bytes());
                put_old(&mut buf, old.as_ref());
                put_row(&mut buf, new);
            }
            ChangeKind::Delete { relation, old } => {
                buf.push(OP_DELETE);
                buf.extend_from_slice(&self.slot(relation).to_be_bytes());
                put_old(&mut buf, Some(old));
            }
            ChangeKind::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                buf.push(OP_TRUNCATE);
                buf.push(u8::from(*cascade) | (u8::from(*restart_identity) << 1));
                buf.extend_from_slice(&(relations.len() as u32).to_be_bytes());
                for rel in relations {
                    buf.extend_from_slice(&self.slot(rel).to_be_bytes());
                }
            }
            ChangeKind::Message(m) => {
                buf.push(OP_MESSAGE);
                buf.push(u8::from(m.transactional));
                buf.extend_from_slice(&m.lsn.0.to_be_bytes());
                buf.extend_from_slice(&(m.prefix.len() as u32).to_be_bytes());
                buf.extend_from_slice(m.prefix.as_bytes());
                buf.extend_from_slice(&(m.content.len() as u32).to_be_bytes());
                buf.extend_from_slice(&m.content);
            }
        }
        let body_len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&body_len.to_be_bytes());
        let result = self.writer.write_all(&buf);
        let written = buf.len() as u64;
        self.scratch = buf;
        result.map_err(|e| self.io(e))?;
        self.len += written;
        Ok(written)
    }

    /// Drops every record at or after `offset` (a subtransaction abort).
    pub(crate) fn truncate(&mut self, offset: u64) -> Result<(), SpillError> {
        self.writer.flush().map_err(|e| self.io(e))?;
        let file = self.writer.get_mut();
        let result = file
            .set_len(offset)
            .and_then(|()| file.seek(SeekFrom::Start(offset)).map(|_| ()));
        result.map_err(|e| self.io(e))?;
        self.len = offset;
        Ok(())
    }

    /// Flushes and rewinds for reading the records back in order.
    pub(crate) fn into_reader(self) -> Result<SpillReader, SpillError> {
        let dir = self.dir.clone();
        let io_err = |source| SpillError::Io {
            dir: dir.clone(),
            source,
        };
        let mut file = self
            .writer
            .into_inner()
            .map_err(|e| io_err(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        Ok(SpillReader {
            reader: BufReader::with_capacity(256 * 1024, file),
            dir: self.dir,
            relations: self.relations,
            remaining: self.len,
            offset: 0,
        })
    }
}

fn put_old(buf: &mut Vec<u8>, old: Option<&OldRow>) {
    match old {
        None => buf.push(0),
        Some(OldRow::Key(r)) => {
            buf.push(1);
            put_row(buf, r);
        }
        Some(OldRow::Full(r)) => {
            buf.push(2);
            put_row(buf, r);
        }
    }
}

fn put_row(buf: &mut Vec<u8>, row: &RowImage) {
    buf.extend_from_slice(&(row.len() as u16).to_be_bytes());
    for cell in row.cells() {
        buf.push(cell.kind as u8);
        buf.extend_from_slice(&cell.len.to_be_bytes());
    }
    let data = row.buffer();
    for cell in row.cells() {
        let start = cell.start as usize;
        // Cells are in bounds by RowImage's construction.
        if let Some(value) = data.get(start..start + cell.len as usize) {
            buf.extend_from_slice(value);
        }
    }
}

/// Reads a spill file's records back, in the order they were written.
pub(crate) struct SpillReader {
    reader: BufReader<File>,
    dir: String,
    relations: Vec<Arc<Relation>>,
    remaining: u64,
    offset: u64,
}

impl SpillReader {
    /// The next change, or `None` at the logical end of the file.
    pub(crate) fn next_change(&mut self) -> Result<Option<Change>, SpillError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len as u64 + 4 > self.remaining {
            return Err(self.corrupt("record length runs past the end"));
        }
        let mut body = vec![0u8; len];
        self.read_exact(&mut body)?;
        let at = self.offset;
        self.offset += 4 + len as u64;
        self.remaining -= 4 + len as u64;
        let body = Bytes::from(body);
        let mut p = Parser { buf: &body, pos: 0 };
        parse_change(&mut p, &body, &self.relations)
            .ok_or(SpillError::Corrupt {
                offset: at,
                what: "record does not parse",
            })
            .map(Some)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SpillError> {
        self.reader
            .read_exact(buf)
            .map_err(|source| SpillError::Io {
                dir: self.dir.clone(),
                source,
            })
    }

    fn corrupt(&self, what: &'static str) -> SpillError {
        SpillError::Corrupt {
            offset: self.offset,
            what,
        }
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

fn parse_change(p: &mut Parser<'_>, body: &Bytes, rels: &[Arc<Relation>]) -> Option<Change> {
    let lsn = Lsn(p.u64()?);
    let rel = |p: &mut Parser<'_>| rels.get(p.u32()? as usize).cloned();
    let kind = match p.u8()? {
        OP_INSERT => ChangeKind::Insert {
            relation: rel(p)?,
            new: parse_row(p, body)?,
        },
        OP_UPDATE => ChangeKind::Update {
            relation: rel(p)?,
            old: parse_old(p, body)?,
            new: parse_row(p, body)?,
        },
        OP_DELETE => ChangeKind::Delete {
            relation: rel(p)?,
            old: parse_old(p, body)??,
        },
        OP_TRUNCATE => {
            let options = p.u8()?;
            let n = p.u32()? as usize;
            let relations = (0..n).map(|_| rel(p)).collect::<Option<Vec<_>>>()?;
            ChangeKind::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        OP_MESSAGE => {
            let transactional = p.u8()? != 0;
            let lsn = Lsn(p.u64()?);
            let prefix_len = p.u32()? as usize;
            let prefix = String::from_utf8(p.take(prefix_len)?.to_vec()).ok()?;
            let len = p.u32()? as usize;
            let start = p.pos;
            p.take(len)?;
            ChangeKind::Message(LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: body.slice(start..start + len),
            })
        }
        _ => return None,
    };
    (p.pos == p.buf.len()).then_some(Change { lsn, kind })
}

/// `Some(None)` for "no old row", `None` for a parse failure.
fn parse_old(p: &mut Parser<'_>, body: &Bytes) -> Option<Option<OldRow>> {
    Some(match p.u8()? {
        0 => None,
        1 => Some(OldRow::Key(parse_row(p, body)?)),
        2 => Some(OldRow::Full(parse_row(p, body)?)),
        _ => return None,
    })
}

fn parse_row(p: &mut Parser<'_>, body: &Bytes) -> Option<RowImage> {
    let n = usize::from(p.u16()?);
    let mut cells = Vec::with_capacity(n);
    let mut total: u64 = 0;
    for _ in 0..n {
        let kind = match p.u8()? {
            0 => CellKind::Null,
            1 => CellKind::UnchangedToast,
            2 => CellKind::Text,
            3 => CellKind::Binary,
            _ => return None,
        };
        let len = p.u32()?;
        cells.push(Cell {
            kind,
            start: 0,
            len,
        });
        total += u64::from(len);
    }
    let mut start = u32::try_from(p.pos).ok()?;
    p.take(usize::try_from(total).ok()?)?;
    for cell in &mut cells {
        cell.start = start;
        start = start.checked_add(cell.len)?;
    }
    RowImage::from_parts(body.clone(), cells).ok()
}
