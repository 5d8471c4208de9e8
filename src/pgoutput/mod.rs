//! Pure decoding of the `pgoutput` logical replication protocol, versions 1-4.
//!
//! ```text
//! XLogData payload (Bytes) ──Decoder::decode──▶ Message
//!                                   │ tuple columns are spans of the payload:
//!                                   └─ no copy, one Vec per tuple
//! ```
//!
//! Invariants:
//! - no I/O and no panics: every read is bounds-checked, lengths go through
//!   `try_from`, and every error names the frame's LSN, the byte offset and the
//!   message tag;
//! - the only state is whether a stream block is open, because inside one
//!   (between Stream Start and Stream Stop) change messages carry an xid.
//!
//! This module knows only `lsn` and `bytes`; what the messages mean for a
//! transaction is the assembler's business.

mod error;
mod message;
mod reader;
mod tuple;

pub use error::{DecodeError, DecodeErrorKind};
pub use message::{
    Begin, BeginPrepare, Commit, CommitPrepared, Delete, Insert, LogicalDecodingMessage, Message,
    OldTuple, Origin, Prepare, Relation, RelationColumn, RollbackPrepared, StreamAbort,
    StreamCommit, StreamStart, Truncate, Type, Update,
};
pub use tuple::{ColumnKind, ColumnSpan, TupleData};

use bytes::Bytes;

use crate::lsn::Lsn;
use reader::Reader;

/// Decodes a sequence of frames, tracking whether a stream block is open.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    /// A decoder outside any stream block (the state after START_REPLICATION).
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether a stream block is open.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Forgets an open stream block (after a reconnect the server starts afresh).
    pub fn reset(&mut self) {
        self.in_stream = false;
    }

    /// Decodes one pgoutput message; `lsn` is the frame's XLogData start, used in errors.
    pub fn decode(&mut self, lsn: Lsn, frame: &Bytes) -> Result<Message, DecodeError> {
        let msg = decode_message(frame, self.in_stream).map_err(|(offset, kind)| DecodeError {
            lsn,
            offset,
            tag: frame.first().copied().unwrap_or(0),
            kind,
        })?;
        match &msg {
            Message::StreamStart(_) => self.in_stream = true,
            Message::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(msg)
    }
}

/// Decodes one message given the stream state; errors carry the byte offset.
pub fn decode_message(frame: &Bytes, in_stream: bool) -> Result<Message, (usize, DecodeErrorKind)> {
    let mut r = Reader::new(frame, 0);
    let result = decode_body(&mut r, frame, in_stream).and_then(|m| r.finish().map(|()| m));
    result.map_err(|kind| (r.offset(), kind))
}

fn decode_body(
    r: &mut Reader<'_>,
    frame: &Bytes,
    in_stream: bool,
) -> Result<Message, DecodeErrorKind> {
    let tag = r.u8("message type").map_err(|_| DecodeErrorKind::Empty)?;
    let stream_xid = |r: &mut Reader<'_>| -> Result<_, DecodeErrorKind> {
        if in_stream {
            r.xid("xid").map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.valid_lsn("final_lsn")?,
            commit_ts: r.timestamp("commit timestamp")?,
            xid: r.xid("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: zero_flags(r, "commit flags")?,
            commit_lsn: r.valid_lsn("commit_lsn")?,
            end_lsn: r.valid_lsn("end_lsn")?,
            commit_ts: r.timestamp("commit timestamp")?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.lsn("origin commit_lsn")?,
            name: r.string("origin name")?,
        }),
        b'R' => {
            let xid = stream_xid(r)?;
            Message::Relation(read_relation(r, xid)?)
        }
        b'Y' => Message::Type(Type {
            xid: stream_xid(r)?,
            type_oid: r.u32("type oid")?,
            namespace: namespace(r.string("type namespace")?),
            name: r.string("type name")?,
        }),
        b'I' => {
            let xid = stream_xid(r)?;
            let rel_id = r.u32("relation id")?;
            expect_marker(r, b"N", "'N' (new tuple)")?;
            Message::Insert(Insert {
                xid,
                rel_id,
                new: TupleData::read(r, frame)?,
            })
        }
        b'U' => {
            let xid = stream_xid(r)?;
            let rel_id = r.u32("relation id")?;
            let marker = expect_marker(r, b"KON", "'K', 'O' or 'N'")?;
            let old = match marker {
                b'K' => Some(OldTuple::Key(TupleData::read(r, frame)?)),
                b'O' => Some(OldTuple::Full(TupleData::read(r, frame)?)),
                _ => None,
            };
            if old.is_some() {
                expect_marker(r, b"N", "'N' (new tuple)")?;
            }
            Message::Update(Update {
                xid,
                rel_id,
                old,
                new: TupleData::read(r, frame)?,
            })
        }
        b'D' => {
            let xid = stream_xid(r)?;
            let rel_id = r.u32("relation id")?;
            let old = match expect_marker(r, b"KO", "'K' or 'O'")? {
                b'K' => OldTuple::Key(TupleData::read(r, frame)?),
                _ => OldTuple::Full(TupleData::read(r, frame)?),
            };
            Message::Delete(Delete { xid, rel_id, old })
        }
        b'T' => {
            let xid = stream_xid(r)?;
            let count = r.u32("relation count")?;
            let options = r.u8("truncate options")?;
            if options & !0b11 != 0 {
                return Err(DecodeErrorKind::UnknownFlags {
                    field: "truncate options",
                    value: options,
                });
            }
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count > r.remaining() / 4 {
                return Err(DecodeErrorKind::Truncated {
                    field: "truncated relation ids",
                    needed: count.saturating_mul(4),
                    remaining: r.remaining(),
                });
            }
            let rel_ids = (0..count)
                .map(|_| r.u32("relation id"))
                .collect::<Result<Vec<_>, _>>()?;
            Message::Truncate(Truncate {
                xid,
                options,
                rel_ids,
            })
        }
        b'M' => {
            let xid = stream_xid(r)?;
            let flags = r.u8("message flags")?;
            if flags & !1 != 0 {
                return Err(DecodeErrorKind::UnknownFlags {
                    field: "message flags",
                    value: flags,
                });
            }
            let lsn = r.lsn("message lsn")?;
            let prefix = r.string("message prefix")?;
            let len = r.i32("message length")?;
            let len = usize::try_from(len).map_err(|_| DecodeErrorKind::OutOfRange {
                field: "message length",
                value: i64::from(len),
            })?;
            Message::Message(LogicalDecodingMessage {
                xid,
                flags,
                lsn,
                prefix,
                content: r.slice(frame, len, "message content")?,
            })
        }
        b'S' => {
            if in_stream {
                return Err(DecodeErrorKind::StreamState(
                    "Stream Start while a stream block is already open",
                ));
            }
            let xid = r.xid("xid")?;
            let first = r.u8("first_segment")?;
            if first > 1 {
                return Err(DecodeErrorKind::UnknownFlags {
                    field: "first_segment",
                    value: first,
                });
            }
            Message::StreamStart(StreamStart {
                xid,
                first_segment: first == 1,
            })
        }
        b'E' => {
            if !in_stream {
                return Err(DecodeErrorKind::StreamState(
                    "Stream Stop without an open stream block",
                ));
            }
            Message::StreamStop
        }
        b'c' => Message::StreamCommit(StreamCommit {
            xid: r.xid("xid")?,
            flags: zero_flags(r, "stream commit flags")?,
            commit_lsn: r.valid_lsn("commit_lsn")?,
            end_lsn: r.valid_lsn("end_lsn")?,
            commit_ts: r.timestamp("commit timestamp")?,
        }),
        b'A' => {
            let xid = r.xid("xid")?;
            let subxid = r.xid("subxid")?;
            // Protocol 4 adds the abort LSN and time, but only with streaming = parallel
            // (pgoutput's write_abort_info): the frame length tells which form arrived.
            let (abort_lsn, abort_ts) = if r.remaining() > 0 {
                (
                    Some(r.lsn("abort_lsn")?),
                    Some(r.timestamp("abort timestamp")?),
                )
            } else {
                (None, None)
            };
            Message::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort_lsn,
                abort_ts,
            })
        }
        b'b' => Message::BeginPrepare(BeginPrepare {
            prepare_lsn: r.valid_lsn("prepare_lsn")?,
            end_lsn: r.valid_lsn("end_lsn")?,
            prepare_ts: r.timestamp("prepare timestamp")?,
            xid: r.xid("xid")?,
            gid: r.string("gid")?,
        }),
        b'P' => Message::Prepare(read_prepare(r)?),
        b'p' => Message::StreamPrepare(read_prepare(r)?),
        b'K' => Message::CommitPrepared(CommitPrepared {
            flags: zero_flags(r, "commit prepared flags")?,
            commit_lsn: r.valid_lsn("commit_lsn")?,
            end_lsn: r.valid_lsn("end_lsn")?,
            commit_ts: r.timestamp("commit timestamp")?,
            xid: r.xid("xid")?,
            gid: r.string("gid")?,
        }),
        b'r' => Message::RollbackPrepared(RollbackPrepared {
            flags: zero_flags(r, "rollback prepared flags")?,
            prepare_end_lsn: r.valid_lsn("prepare_end_lsn")?,
            rollback_end_lsn: r.valid_lsn("rollback_end_lsn")?,
            prepare_ts: r.timestamp("prepare timestamp")?,
            rollback_ts: r.timestamp("rollback timestamp")?,
            xid: r.xid("xid")?,
            gid: r.string("gid")?,
        }),
        _ => return Err(DecodeErrorKind::UnknownMessage),
    })
}

fn read_relation(
    r: &mut Reader<'_>,
    xid: Option<crate::lsn::Xid>,
) -> Result<Relation, DecodeErrorKind> {
    let rel_id = r.u32("relation id")?;
    let namespace = namespace(r.string("relation namespace")?);
    let name = r.string("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    if !b"dnfi".contains(&replica_identity) {
        return Err(DecodeErrorKind::UnknownReplicaIdentity(replica_identity));
    }
    let n = usize::from(r.u16("column count")?);
    // A column needs at least 10 bytes (flags, empty name, oid, typmod).
    if n > r.remaining() / 10 {
        return Err(DecodeErrorKind::Truncated {
            field: "relation columns",
            needed: n * 10,
            remaining: r.remaining(),
        });
    }
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        let flags = r.u8("column flags")?;
        if flags & !1 != 0 {
            return Err(DecodeErrorKind::UnknownFlags {
                field: "column flags",
                value: flags,
            });
        }
        columns.push(RelationColumn {
            flags,
            name: r.string("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        rel_id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn read_prepare(r: &mut Reader<'_>) -> Result<Prepare, DecodeErrorKind> {
    Ok(Prepare {
        flags: zero_flags(r, "prepare flags")?,
        prepare_lsn: r.valid_lsn("prepare_lsn")?,
        end_lsn: r.valid_lsn("end_lsn")?,
        prepare_ts: r.timestamp("prepare timestamp")?,
        xid: r.xid("xid")?,
        gid: r.string("gid")?,
    })
}

/// pgoutput writes an empty namespace for `pg_catalog` to save space.
fn namespace(s: String) -> String {
    if s.is_empty() {
        "pg_catalog".to_owned()
    } else {
        s
    }
}

/// A flags byte that is unused in every protocol version so far: must be 0.
fn zero_flags(r: &mut Reader<'_>, field: &'static str) -> Result<u8, DecodeErrorKind> {
    match r.u8(field)? {
        0 => Ok(0),
        value => Err(DecodeErrorKind::UnknownFlags { field, value }),
    }
}

fn expect_marker(
    r: &mut Reader<'_>,
    allowed: &[u8],
    expected: &'static str,
) -> Result<u8, DecodeErrorKind> {
    let found = r.u8("tuple marker")?;
    if allowed.contains(&found) {
        Ok(found)
    } else {
        Err(DecodeErrorKind::UnexpectedMarker { expected, found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn insert_decodes_zero_copy() {
        let f = frame(&[
            b"I",
            &16385u32.to_be_bytes(),
            b"N",
            &3u16.to_be_bytes(),
            b"t",
            &2i32.to_be_bytes(),
            b"42",
            b"n",
            b"u",
        ]);
        let msg = Decoder::new().decode(Lsn(1), &f).unwrap();
        let Message::Insert(ins) = msg else {
            panic!("expected insert, got {msg:?}")
        };
        assert_eq!(ins.rel_id, 16385);
        assert_eq!(ins.new.value(0), Some(&b"42"[..]));
        let kinds: Vec<_> = ins.new.columns().iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ColumnKind::Text,
                ColumnKind::Null,
                ColumnKind::UnchangedToast
            ]
        );
        let (buf, _) = ins.new.into_parts();
        assert_eq!(buf.as_ptr(), f.as_ptr(), "tuple must share the frame");
    }

    #[test]
    fn truncated_frame_names_lsn_offset_and_tag() {
        let f = frame(&[
            b"I",
            &16385u32.to_be_bytes(),
            b"N",
            &1u16.to_be_bytes(),
            b"t",
            &9i32.to_be_bytes(),
            b"abc",
        ]);
        let err = Decoder::new()
            .decode("0/16B3748".parse().unwrap(), &f)
            .unwrap_err();
        assert_eq!(err.offset, 13);
        assert_eq!(err.tag, b'I');
        let text = err.to_string();
        assert!(text.contains("0/16B3748"), "{text}");
        assert!(text.contains("byte 13"), "{text}");
        assert!(text.contains("Insert"), "{text}");
    }

    #[test]
    fn stream_state_controls_xid_fields() {
        let mut d = Decoder::new();
        let start = frame(&[b"S", &7u32.to_be_bytes(), &[1]]);
        d.decode(Lsn(1), &start).unwrap();
        assert!(d.in_stream());
        let ins = frame(&[
            b"I",
            &9u32.to_be_bytes(),
            &5u32.to_be_bytes(),
            b"N",
            &0u16.to_be_bytes(),
        ]);
        match d.decode(Lsn(1), &ins).unwrap() {
            Message::Insert(i) => {
                assert_eq!(i.xid, Some(crate::lsn::Xid(9)));
                assert_eq!(i.rel_id, 5);
            }
            other => panic!("{other:?}"),
        }
        d.decode(Lsn(1), &Bytes::from_static(b"E")).unwrap();
        assert!(!d.in_stream());
        assert!(d.decode(Lsn(1), &Bytes::from_static(b"E")).is_err());
    }

    #[test]
    fn stream_abort_with_and_without_abort_info() {
        let short = frame(&[b"A", &7u32.to_be_bytes(), &8u32.to_be_bytes()]);
        let long = frame(&[
            b"A",
            &7u32.to_be_bytes(),
            &8u32.to_be_bytes(),
            &99u64.to_be_bytes(),
            &5u64.to_be_bytes(),
        ]);
        let odd = frame(&[
            b"A",
            &7u32.to_be_bytes(),
            &8u32.to_be_bytes(),
            &99u64.to_be_bytes(),
        ]);
        let mut d = Decoder::new();
        assert!(matches!(
            d.decode(Lsn(1), &short),
            Ok(Message::StreamAbort(StreamAbort {
                abort_lsn: None,
                ..
            }))
        ));
        assert!(matches!(
            d.decode(Lsn(1), &long),
            Ok(Message::StreamAbort(StreamAbort {
                abort_lsn: Some(Lsn(99)),
                ..
            }))
        ));
        assert!(d.decode(Lsn(1), &odd).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let f = frame(&[b"E", b"x"]);
        let mut d = Decoder::new();
        d.decode(Lsn(1), &frame(&[b"S", &7u32.to_be_bytes(), &[0]]))
            .unwrap();
        let err = d.decode(Lsn(1), &f).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::TrailingBytes(1));
    }
}
