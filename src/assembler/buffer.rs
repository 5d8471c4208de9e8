//! One transaction's buffered changes: a spilled prefix on disk, the rest in
//! memory, and where each subtransaction's changes begin.
//!
//! ```text
//! index:  0 ............ spilled-1 | spilled ........... spilled+mem-1
//!         [ spill file, in order ] [ in-memory segments, in order ]
//! ```
//!
//! The in-memory part is a list of segments of at most [`SEGMENT_MAX`]
//! changes (growing from [`SEGMENT_MIN`]), not one vector: a vector doubles
//! its allocation when it fills, which on a big transaction would jump past
//! `--max-memory` by megabytes at once (and copy them). Segment allocations
//! are counted in full when made.
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

/// Capacity of the first segment (a small transaction allocates little).
const SEGMENT_MIN: usize = 16;
/// Largest segment capacity; also the most changes one replayed event carries.
pub(crate) const SEGMENT_MAX: usize = 4096;
/// A segment holding this many bytes of changes is closed even if it has
/// room (wide rows): one released event stays about this size.
pub(crate) const SEGMENT_MAX_BYTES: usize = 1024 * 1024;

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
    memory: Vec<Vec<Change>>,
    memory_len: usize,
    memory_bytes: usize,
    /// Heap bytes of the changes in the last segment.
    segment_bytes: usize,
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
        self.spilled + self.memory_len as u64
    }

    /// Bytes held in memory.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Appends a change made by `xid` (a subtransaction when it differs from
    /// `top`); returns the memory it added: its heap size, plus a new
    /// segment's whole allocation when it needed one.
    pub(crate) fn push(&mut self, top: Xid, xid: Xid, change: Change) -> usize {
        if xid != top && !self.subxacts.iter().any(|s| s.xid == xid) {
            self.subxacts.push(SubxactStart {
                xid,
                index: self.len(),
                file_offset: None,
            });
        }
        let heap = change.heap_size();
        let mut size = heap;
        let segment = match self.memory.last_mut() {
            Some(s) if s.len() < s.capacity() && self.segment_bytes < SEGMENT_MAX_BYTES => s,
            _ => {
                let capacity = self.memory_len.clamp(SEGMENT_MIN, SEGMENT_MAX);
                size += capacity * std::mem::size_of::<Change>();
                self.segment_bytes = 0;
                self.memory.push(Vec::with_capacity(capacity));
                self.memory.last_mut().expect("just pushed")
            }
        };
        self.segment_bytes += heap;
        segment.push(change);
        self.memory_len += 1;
        self.memory_bytes += size;
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
        for (i, change) in self.memory.iter().flatten().enumerate() {
            let index = first + i as u64;
            while let Some(s) = pending.next_if(|s| s.index == index) {
                s.file_offset = Some(file.len());
            }
            file.append(change)?;
        }
        let written = Spilled {
            changes: self.memory_len as u64,
            bytes: file.len() - start_len,
            freed: self.memory_bytes,
            new_file,
        };
        self.spilled += self.memory_len as u64;
        self.clear_memory();
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
            freed = self.truncate_memory((index - self.spilled) as usize);
        } else {
            freed = self.memory_bytes;
            self.clear_memory();
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

    /// Drops the in-memory changes; the caller accounts for the bytes.
    fn clear_memory(&mut self) {
        self.memory = Vec::new();
        self.memory_len = 0;
        self.segment_bytes = 0;
    }

    /// Keeps the first `keep` in-memory changes; returns the memory freed
    /// (the cut changes' heap and the segments no longer used).
    fn truncate_memory(&mut self, keep: usize) -> usize {
        let mut freed = 0;
        let mut before = 0;
        let mut segments = 0;
        for segment in &mut self.memory {
            if before + segment.len() <= keep {
                before += segment.len();
                segments += 1;
                continue;
            }
            // Segments before this one summed to at most `keep`.
            let cut = keep - before;
            freed += segment[cut..].iter().map(Change::heap_size).sum::<usize>();
            segment.truncate(cut);
            if cut > 0 {
                segments += 1;
            }
            before = keep;
        }
        for dropped in self.memory.drain(segments..) {
            freed += dropped.capacity() * std::mem::size_of::<Change>();
        }
        self.memory_len = keep;
        // Whatever the last segment now holds, it may take more.
        self.segment_bytes = 0;
        freed
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
    /// The in-memory tail, in segments of at most [`SEGMENT_MAX`] changes.
    pub(crate) memory: Vec<Vec<Change>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ChangeKind, LogicalMessage};
    use crate::lsn::Lsn;

    fn message(i: u64) -> Change {
        Change {
            lsn: Lsn(i),
            kind: ChangeKind::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(i),
                prefix: "p".into(),
                content: bytes::Bytes::from(vec![0u8; (i % 7) as usize]),
            }),
        }
    }

    /// What the buffer's in-memory part holds, counted from scratch.
    fn recount(b: &TxnBuffer) -> usize {
        b.memory
            .iter()
            .map(|s| {
                s.capacity() * std::mem::size_of::<Change>()
                    + s.iter().map(Change::heap_size).sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn segments_stay_bounded_and_cuts_account_exactly() {
        let (top, sub) = (Xid(1), Xid(2));
        let mut b = TxnBuffer::default();
        let mut added = 0;
        for i in 0..10_000u64 {
            let xid = if i < 5_000 { top } else { sub };
            let size = b.push(top, xid, message(i));
            assert!(
                size <= SEGMENT_MAX * std::mem::size_of::<Change>() + 64,
                "one push never allocates more than a segment"
            );
            added += size;
        }
        assert_eq!(added, b.memory_bytes());
        assert_eq!(b.memory_bytes(), recount(&b));
        assert!(b.memory.iter().all(|s| s.capacity() <= SEGMENT_MAX));

        // Cutting mid-segment keeps exactly the first 5,000 changes.
        let freed = b.abort_subxact(sub).unwrap();
        assert_eq!(b.len(), 5_000);
        assert_eq!(added - freed, b.memory_bytes());
        assert_eq!(b.memory_bytes(), recount(&b));
        let replay = b.into_replay().unwrap();
        let lsns: Vec<u64> = replay.memory.iter().flatten().map(|c| c.lsn.0).collect();
        assert_eq!(lsns, (0..5_000).collect::<Vec<_>>());
    }
}
