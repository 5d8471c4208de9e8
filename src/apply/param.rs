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
