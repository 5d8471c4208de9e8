//! TupleData: the column values of one row, as spans of the frame.
//!
//! Wire format (`logicalrep_write_tuple`): `Int16` column count, then per
//! column a kind byte — `n` null, `u` unchanged TOAST (value not sent), `t`
//! text or `b` binary followed by `Int32` length and the bytes. Columns are
//! the relation's published columns in attribute order; dropped and generated
//! columns are not sent.

use bytes::Bytes;

use super::error::DecodeErrorKind;
use super::reader::Reader;

/// How a column arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ColumnKind {
    /// `n`: SQL NULL.
    Null,
    /// `u`: unchanged TOASTed value, not sent.
    UnchangedToast,
    /// `t`: text output of the type.
    Text,
    /// `b`: binary send format of the type.
    Binary,
}

/// Where one column's value lies in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpan {
    /// How the column arrived.
    pub kind: ColumnKind,
    /// Offset of the value in the frame.
    pub start: u32,
    /// Length of the value (0 for `n` and `u`).
    pub len: u32,
}

/// One row of a change message, borrowing the frame it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    frame: Bytes,
    columns: Vec<ColumnSpan>,
}

impl TupleData {
    /// The columns, in the relation's column order.
    pub fn columns(&self) -> &[ColumnSpan] {
        &self.columns
    }

    /// The frame the spans point into, and the spans.
    pub fn into_parts(self) -> (Bytes, Vec<ColumnSpan>) {
        (self.frame, self.columns)
    }

    /// The bytes of column `i` (empty for null and unchanged TOAST).
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        let c = self.columns.get(i)?;
        let start = c.start as usize;
        self.frame.get(start..start + c.len as usize)
    }

    /// Reads one TupleData from `r`, whose buffer is `frame`.
    #[inline]
    pub(super) fn read(r: &mut Reader<'_>, frame: &Bytes) -> Result<TupleData, DecodeErrorKind> {
        let n = usize::from(r.u16("tuple column count")?);
        // Each column needs at least its kind byte: refuse counts the frame cannot hold
        // before reserving memory for them.
        if n > r.remaining() {
            return Err(DecodeErrorKind::Truncated {
                field: "tuple columns",
                needed: n,
                remaining: r.remaining(),
            });
        }
        let mut columns = Vec::with_capacity(n);
        for column in 0..n {
            let kind = r.u8("column kind")?;
            let span = match kind {
                b'n' => ColumnSpan {
                    kind: ColumnKind::Null,
                    start: 0,
                    len: 0,
                },
                b'u' => ColumnSpan {
                    kind: ColumnKind::UnchangedToast,
                    start: 0,
                    len: 0,
                },
                b't' | b'b' => {
                    let len = r.i32("column length")?;
                    let ulen = u32::try_from(len)
                        .map_err(|_| DecodeErrorKind::NegativeLength { column, len })?;
                    let start = r.skip(ulen as usize, "column value")?;
                    ColumnSpan {
                        kind: if kind == b't' {
                            ColumnKind::Text
                        } else {
                            ColumnKind::Binary
                        },
                        // Frames are at most 1 GiB (PostgreSQL's MaxAllocSize), so offsets fit.
                        start: u32::try_from(start).map_err(|_| DecodeErrorKind::OutOfRange {
                            field: "column offset",
                            value: start as i64,
                        })?,
                        len: ulen,
                    }
                }
                other => {
                    return Err(DecodeErrorKind::UnknownColumnKind {
                        column,
                        kind: other,
                    });
                }
            };
            columns.push(span);
        }
        Ok(TupleData {
            frame: frame.clone(),
            columns,
        })
    }
}
