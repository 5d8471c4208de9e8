//! Decode errors: every one names the frame's LSN, the byte offset inside the
//! pgoutput message and the message tag, so an operator can find the record
//! with `pg_waldump` and a developer can reproduce the frame.

use std::fmt;

use crate::lsn::Lsn;

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput frame at LSN {lsn}, byte {offset} of {} message: {kind}", TagName(*.tag))]
pub struct DecodeError {
    /// Start LSN of the XLogData frame.
    pub lsn: Lsn,
    /// Offset in the pgoutput message where decoding stopped.
    pub offset: usize,
    /// The message's first byte (0 for an empty frame).
    pub tag: u8,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The frame has no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The first byte is not a pgoutput message type.
    #[error("unknown message type")]
    UnknownMessage,
    /// A field runs past the end of the frame.
    #[error("truncated: {needed} more bytes needed for {field}, {remaining} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the frame.
        remaining: usize,
    },
    /// A C string has no terminating NUL before the end of the frame.
    #[error("{field} is not NUL-terminated")]
    UnterminatedString {
        /// The field being read.
        field: &'static str,
    },
    /// A name is not valid UTF-8 (teal connects with client_encoding=UTF8).
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A column value has a negative length.
    #[error("column {column} has negative length {len}")]
    NegativeLength {
        /// Index of the column in the tuple.
        column: usize,
        /// The length sent.
        len: i32,
    },
    /// A tuple column starts with a byte other than `n`, `u`, `t`, `b`.
    #[error("column {column} has unknown kind byte 0x{kind:02x}")]
    UnknownColumnKind {
        /// Index of the column in the tuple.
        column: usize,
        /// The byte sent.
        kind: u8,
    },
    /// A tuple marker other than the expected ones (`N`, `K`, `O`).
    #[error("expected {expected}, found byte 0x{found:02x}")]
    UnexpectedMarker {
        /// Which markers would have been valid.
        expected: &'static str,
        /// The byte sent.
        found: u8,
    },
    /// A replica identity byte other than `d`, `n`, `f`, `i`.
    #[error("unknown replica identity 0x{0:02x}")]
    UnknownReplicaIdentity(u8),
    /// A flags field with bits this protocol version does not define.
    #[error("unknown flags 0x{value:02x} in {field}")]
    UnknownFlags {
        /// The field being read.
        field: &'static str,
        /// The flags sent.
        value: u8,
    },
    /// An LSN that PostgreSQL never sends as 0/0.
    #[error("{field} is 0/0")]
    InvalidLsn {
        /// The field being read.
        field: &'static str,
    },
    /// A field has a value outside its domain.
    #[error("{field} is {value}, which is out of range")]
    OutOfRange {
        /// The field being read.
        field: &'static str,
        /// The value sent.
        value: i64,
    },
    /// Bytes left over after the last field.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// Stream Start while a stream block is open, or Stream Stop outside one.
    #[error("{0}")]
    StreamState(&'static str),
}

/// Prints a message tag with its protocol name.
struct TagName(u8);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            b'B' => "Begin",
            b'C' => "Commit",
            b'O' => "Origin",
            b'R' => "Relation",
            b'Y' => "Type",
            b'I' => "Insert",
            b'U' => "Update",
            b'D' => "Delete",
            b'T' => "Truncate",
            b'M' => "Message",
            b'S' => "Stream Start",
            b'E' => "Stream Stop",
            b'c' => "Stream Commit",
            b'A' => "Stream Abort",
            b'b' => "Begin Prepare",
            b'P' => "Prepare",
            b'K' => "Commit Prepared",
            b'r' => "Rollback Prepared",
            b'p' => "Stream Prepare",
            0 => return f.write_str("an empty"),
            other => return write!(f, "an unknown (0x{other:02x})"),
        };
        write!(f, "a {name} ('{}')", char::from(self.0))
    }
}
