//! Column values as statement parameters, in the format blue sent them.
//!
//! Text values travel in text format and are converted by green's input
//! function of whatever type the statement gives the parameter; binary values
//! (pgoutput `binary` mode) in binary format. Nothing is parsed or re-encoded
//! on the way (DESIGN rule 5).

use bytes::BytesMut;
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};

use crate::event::Value;

/// One parameter value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    /// SQL NULL.
    Null,
    /// The type's text output.
    Text(&'a [u8]),
    /// The type's binary send format.
    Binary(&'a [u8]),
}

impl<'a> Param<'a> {
    /// A row value as a parameter; unchanged TOAST has no value to send.
    pub(crate) fn from_value(v: Value<'a>) -> Option<Param<'a>> {
        match v {
            Value::Null => Some(Param::Null),
            Value::Text(t) => Some(Param::Text(t)),
            Value::Binary(b) => Some(Param::Binary(b)),
            Value::UnchangedToast => None,
        }
    }
}

/// `text` in `pg_type`.
const TEXT_OID: u32 = 25;

/// A one-dimensional `text[]` in binary format (`array_recv`): `None` is NULL.
/// Binary needs no quoting or escaping of the elements, whatever they hold.
pub(crate) fn text_array<'v>(
    values: impl ExactSizeIterator<Item = Option<&'v [u8]>> + Clone,
) -> Vec<u8> {
    typed_array(TEXT_OID, values)
}

/// A one-dimensional array of the type `element` in binary format, its
/// elements each that type's binary send format (`None` is NULL).
pub(crate) fn typed_array<'v>(
    element: u32,
    values: impl ExactSizeIterator<Item = Option<&'v [u8]>> + Clone,
) -> Vec<u8> {
    let len = values.len();
    let has_null = values.clone().any(|v| v.is_none());
    let bytes: usize = values.clone().map(|v| v.map_or(0, <[u8]>::len)).sum();
    let mut out = Vec::with_capacity(20 + 4 * len + bytes);
    out.extend_from_slice(&1i32.to_be_bytes()); // dimensions
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&element.to_be_bytes());
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    for v in values {
        match v {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(v) | Param::Binary(v) => {
                out.extend_from_slice(v);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Param::Binary(_) => Format::Binary,
            Param::Null | Param::Text(_) => Format::Text,
        }
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_array_is_array_recv_format() {
        let values: [Option<&[u8]>; 3] = [Some(b"a\"{,}"), None, Some(b"")];
        let mut expected = Vec::new();
        for word in [1i32, 1, 25, 3, 1, 5] {
            expected.extend_from_slice(&word.to_be_bytes());
        }
        expected.extend_from_slice(b"a\"{,}");
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(text_array(values.iter().copied()), expected);
        // No NULL: the flag is clear.
        assert_eq!(
            text_array([Some(&b"x"[..])].into_iter())[4..8],
            [0, 0, 0, 0]
        );
    }
}
