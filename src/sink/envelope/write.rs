//! JSON text written straight into a buffer: the records' fixed parts are
//! byte literals, and only names and values are escaped (where they need
//! it). Each record goes through here, so it is not built through serde's
//! per-field machinery (escaping every constant key, formatting numbers
//! through `fmt`).

use super::UNAVAILABLE;
use crate::event::{Column, Relation, RowImage, Value};

/// `s` as a JSON string. Most names and values need no escaping: they
/// are copied as they are after one pass that the compiler vectorizes;
/// the others go through serde_json's escaping.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    let plain = !s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// A number (or any value serde_json writes without a map).
pub(super) fn number(out: &mut Vec<u8>, n: impl serde::Serialize) {
    // Writing into a Vec cannot fail; numbers always serialize.
    let _ = serde_json::to_writer(&mut *out, &n);
}

/// One column's value, typed where the type is unambiguous (see the
/// module documentation).
pub(super) fn value(out: &mut Vec<u8>, column: &Column, value: Value<'_>) {
    use base64::Engine;
    let text = match value {
        Value::Null => return out.extend_from_slice(b"null"),
        Value::UnchangedToast => return string(out, UNAVAILABLE),
        Value::Binary(b) => {
            out.extend_from_slice(b"{\"binary_base64\":\"");
            let encoded = base64::engine::general_purpose::STANDARD.encode(b);
            out.extend_from_slice(encoded.as_bytes());
            return out.extend_from_slice(b"\"}");
        }
        Value::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(t),
        },
    };
    match column.type_oid {
        // int2, int4, int8, oid
        21 | 23 | 20 | 26 => {
            if let Ok(n) = text.parse::<i64>() {
                return number(out, n);
            }
        }
        // bool
        16 => match text.as_ref() {
            "t" => return out.extend_from_slice(b"true"),
            "f" => return out.extend_from_slice(b"false"),
            _ => {}
        },
        // float4, float8: finite ones (NaN and Infinity are not JSON numbers)
        700 | 701 => {
            if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
                return number(out, f);
            }
        }
        // json, jsonb: nested as they are (checked, not rebuilt)
        114 | 3802 => {
            if let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(&text) {
                return out.extend_from_slice(raw.get().as_bytes());
            }
        }
        _ => {}
    }
    string(out, &text);
}

/// The columns at positions `columns` as an object keyed by name.
pub(super) fn row(
    out: &mut Vec<u8>,
    relation: &Relation,
    image: &RowImage,
    columns: impl Iterator<Item = usize>,
) {
    out.push(b'{');
    let mut first = true;
    for i in columns {
        let (Some(column), Some(v)) = (relation.columns.get(i), image.get(i)) else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        string(out, &column.name);
        out.push(b':');
        value(out, column, v);
    }
    out.push(b'}');
}

/// A row image as an object keyed by column name (`key_only`: the
/// replica identity columns only), or `null`.
pub(super) fn image(out: &mut Vec<u8>, relation: &Relation, image: Option<(&RowImage, bool)>) {
    match image {
        None => out.extend_from_slice(b"null"),
        Some((image, key_only)) => row(
            out,
            relation,
            image,
            (0..relation.columns.len()).filter(|&i| !key_only || relation.columns[i].is_key),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Strings are written exactly as serde_json writes them, whether
        /// they need escaping or not.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(s in "(\\PC|[\\x00-\\x1f\"\\\\\\x7f])*") {
            let mut out = b"x".to_vec();
            string(&mut out, &s);
            let serde = serde_json::to_string(&s).unwrap();
            proptest::prop_assert_eq!(&out[1..], serde.as_bytes());
        }
    }
}
