//! A bounds-checked big-endian reader over one frame.
//!
//! Every read checks the bytes left and reports the field it was reading, so a
//! truncated or hostile frame becomes a [`DecodeErrorKind`], never a panic.

use bytes::Bytes;

use super::error::DecodeErrorKind;
use crate::lsn::{Lsn, PgTimestamp, Xid};

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, DecodeErrorKind>;

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    pub(super) fn offset(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        match self.buf.get(self.pos..self.pos + N) {
            Some(s) => {
                self.pos += N;
                // The slice has exactly N bytes.
                Ok(s.try_into().unwrap_or([0; N]))
            }
            None => Err(DecodeErrorKind::Truncated {
                field,
                needed: N,
                remaining: self.remaining(),
            }),
        }
    }

    #[inline]
    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.take::<1>(field)?[0])
    }

    #[inline]
    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(field)?))
    }

    #[inline]
    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(field)?))
    }

    #[inline]
    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(field)?))
    }

    #[inline]
    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(field)?))
    }

    pub(super) fn xid(&mut self, field: &'static str) -> Result<Xid> {
        self.u32(field).map(Xid)
    }

    pub(super) fn lsn(&mut self, field: &'static str) -> Result<Lsn> {
        self.u64(field).map(Lsn)
    }

    /// An LSN PostgreSQL never sends as 0/0 (it checks the same on its side).
    pub(super) fn valid_lsn(&mut self, field: &'static str) -> Result<Lsn> {
        let lsn = self.lsn(field)?;
        if lsn.is_zero() {
            return Err(DecodeErrorKind::InvalidLsn { field });
        }
        Ok(lsn)
    }

    pub(super) fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp> {
        self.u64(field).map(|v| PgTimestamp(v as i64))
    }

    /// A NUL-terminated UTF-8 string.
    pub(super) fn string(&mut self, field: &'static str) -> Result<String> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeErrorKind::UnterminatedString { field })?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| DecodeErrorKind::InvalidUtf8 { field })?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    /// Skips `n` bytes after checking they are there; returns where they start.
    #[inline]
    pub(super) fn skip(&mut self, n: usize, field: &'static str) -> Result<usize> {
        if n > self.remaining() {
            return Err(DecodeErrorKind::Truncated {
                field,
                needed: n,
                remaining: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    /// `n` bytes as a zero-copy slice of `frame` (the buffer this reader reads).
    pub(super) fn slice(&mut self, frame: &Bytes, n: usize, field: &'static str) -> Result<Bytes> {
        let start = self.skip(n, field)?;
        Ok(frame.slice(start..start + n))
    }

    pub(super) fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeErrorKind::TrailingBytes(n)),
        }
    }
}
