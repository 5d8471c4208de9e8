//! One transaction's buffered changes: a spilled prefix on disk, the rest in
//! memory, and where each subtransaction's changes begin.
//!
//! ```text
//! index:  0 ............ spilled-1 | spilled ........... spilled+mem-1
//!         [ spill file, in order ] [ in-memory Vec<Change>, in order ]
//! ```
//!
//! Invariant used by subtransaction aborts: once a subtransaction has made its
//! first change, every later change of the same top-level transaction belongs
//! to it or to its children until its abort arrives (subtransactions nest, and
//! blue streams changes in WAL order). So aborting it means cutting the buffer
//! at its first change, exactly as PostgreSQL's own subscriber truncates its
//! stream file (`apply_handle_stream_abort`).

use std::path::Path;

use crate::event::Change;
use crate::lsn::Xid;

use super::spill::{SpillError, SpillFile, SpillReader};

/// Where a subtransaction's first change sits.
struct SubxactStart {
    xid: Xid,
    index: u64,
    /// Set once the change at `index` has been written to the spill file.
    file_offset: Option<u64>,
}

/// Buffered changes of one transaction.
#[derive(Default)]
pub(crate) struct TxnBuffer {
    memory: Vec<Change>,
    memory_bytes: usize,
    spill: Option<SpillFile>,
    spilled: u64,
    subxacts: Vec<SubxactStart>,
}

/// What spilling wrote.
pub(crate) struct Spilled {
    pub(crate) changes: u64,
    pub(crate) bytes: u64,
    pub(crate) freed: usize,
    pub(crate) new_file: bool,
}

impl TxnBuffer {
    /// Total changes buffered (spilled and in memory).
    pub(crate) fn len(&self) -> u64 {
        self.spilled + self.memory.len() as u64
    }

    /// Bytes held in memory.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Appends a change made by `xid` (a subtransaction when it differs from
    /// `top`); returns its memory size.
    pub(crate) fn push(&mut self, top: Xid, xid: Xid, change: Change) -> usize {
        if xid != top && !self.subxacts.iter().any(|s| s.xid == xid) {
            self.subxacts.push(SubxactStart {
                xid,
                index: self.len(),
                file_offset: None,
            });
        }
        let size = change.memory_size();
        self.memory_bytes += size;
        self.memory.push(change);
        size
    }

    /// Writes all in-memory changes to the spill file.
    pub(crate) fn spill(&mut self, dir: &Path) -> Result<Spilled, SpillError> {
        let new_file = self.spill.is_none();
        let file = match self.spill.take() {
            Some(file) => file,
            None => SpillFile::create(dir)?,
        };
        let file = self.spill.insert(file);
        let start_len = file.len();
        let first = self.spilled;
        // Subxact starts are in index order; the ones inside this batch get offsets.
        let mut pending = self
            .subxacts
            .iter_mut()
            .filter(|s| s.index >= first && s.file_offset.is_none())
            .peekable();
        for (i, change) in self.memory.iter().enumerate() {
            let index = first + i as u64;
            while let Some(s) = pending.next_if(|s| s.index == index) {
                s.file_offset = Some(file.len());
            }
            file.append(change)?;
        }
        let written = Spilled {
            changes: self.memory.len() as u64,
            bytes: file.len() - start_len,
            freed: self.memory_bytes,
            new_file,
        };
        self.spilled += self.memory.len() as u64;
        self.memory = Vec::new();
        self.memory_bytes = 0;
        Ok(written)
    }

    /// Drops the changes of subtransaction `xid` and of everything after it;
    /// returns the memory freed. Unknown `xid`s (no changes seen) drop nothing.
    pub(crate) fn abort_subxact(&mut self, xid: Xid) -> Result<usize, SpillError> {
        let Some(pos) = self.subxacts.iter().position(|s| s.xid == xid) else {
            return Ok(0);
        };
        let start = &self.subxacts[pos];
        let (index, file_offset) = (start.index, start.file_offset);
        self.subxacts.truncate(pos);
        let freed;
        if index >= self.spilled {
            let keep = (index - self.spilled) as usize;
            freed = self.memory[keep..].iter().map(Change::memory_size).sum();
            self.memory.truncate(keep);
        } else {
            freed = self.memory_bytes;
            self.memory.clear();
            match (self.spill.as_mut(), file_offset) {
                (Some(file), Some(offset)) => file.truncate(offset)?,
                _ => {
                    return Err(SpillError::Corrupt {
                        offset: 0,
                        what: "a spilled subtransaction start has no file offset",
                    });
                }
            }
            self.spilled = index;
        }
        self.memory_bytes -= freed;
        Ok(freed)
    }

    /// Takes the buffered changes for replay, spilled ones first.
    pub(crate) fn into_replay(self) -> Result<Replay, SpillError> {
        Ok(Replay {
            spilled: self.spill.map(SpillFile::into_reader).transpose()?,
            memory: self.memory,
        })
    }
}

/// The changes of a committed transaction, ready to be emitted in order.
pub(crate) struct Replay {
    /// Changes read back from disk, in order (read lazily, so memory stays bounded).
    pub(crate) spilled: Option<SpillReader>,
    /// The in-memory tail.
    pub(crate) memory: Vec<Change>,
}
