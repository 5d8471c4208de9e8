//! Masking `teal sync`'s rows: COPY's text format, one row per CopyData
//! message from blue (columns separated by tabs, `\N` for NULL, backslash
//! escapes), masked columns decoded, masked and encoded again; the others
//! passed through as they are.

use crate::event::QualifiedName;

use super::{ColumnMask, MaskError, MaskKey};

/// The masks of a copied table's columns, in the copy's column order.
#[derive(Debug, Clone)]
pub struct CopyMask {
    table: QualifiedName,
    columns: Vec<(String, Option<ColumnMask>)>,
    key: MaskKey,
}

impl CopyMask {
    /// Masks for `columns` (name, type OID, type name, typmod) of `table`
    /// under `config`; `None` when the table has no rules.
    pub fn new(
        config: &super::MaskConfig,
        table: &QualifiedName,
        columns: &[(String, u32, String, i32)],
    ) -> Result<Option<CopyMask>, MaskError> {
        let Some(rules) = config.table(table) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(columns.len());
        for (name, type_oid, type_name, typmod) in columns {
            let mask = match rules.get(name) {
                None => None,
                Some(rule) => Some(ColumnMask::new(
                    table,
                    name,
                    rule,
                    super::TypeClass::of(*type_oid, Some(type_name)),
                    *typmod,
                    *type_oid,
                )?),
            };
            out.push((name.clone(), mask));
        }
        if let Some(missing) = rules.keys().find(|c| !out.iter().any(|(n, _)| n == *c)) {
            return Err(MaskError {
                table: table.to_string(),
                column: missing.clone(),
                reason: "the copy has no such column".into(),
            });
        }
        Ok(Some(CopyMask {
            table: table.clone(),
            columns: out,
            key: config.key().clone(),
        }))
    }

    /// A row of `n` fields is one of this table's.
    fn check_width(&self, n: usize) -> Result<(), MaskError> {
        if n == self.columns.len() {
            return Ok(());
        }
        Err(MaskError {
            table: self.table.to_string(),
            column: String::new(),
            reason: format!(
                "a copied row has {n} fields where {} columns were asked for",
                self.columns.len()
            ),
        })
    }

    /// Masks one text-format row (with its trailing newline) into `out`.
    pub fn mask_row(&self, row: &[u8], out: &mut Vec<u8>) -> Result<(), MaskError> {
        let row = row.strip_suffix(b"\n").unwrap_or(row);
        let fields: Vec<&[u8]> = row.split(|&b| b == b'\t').collect();
        self.check_width(fields.len())?;
        for (i, (field, (name, mask))) in fields.iter().zip(&self.columns).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match mask {
                Some(m) if *field != b"\\N" => {
                    match m.apply(&self.key, &self.table, name, &unescape(field))? {
                        Some(v) => escape(&v, out),
                        None => out.extend_from_slice(b"\\N"),
                    }
                }
                _ => out.extend_from_slice(field),
            }
        }
        out.push(b'\n');
        Ok(())
    }
}

impl CopyMask {
    /// One text-format row's values after masking (`None`: NULL), for
    /// comparing with what green holds ([`fields`] of green's row).
    pub fn masked_fields(&self, row: &[u8]) -> Result<Vec<Option<Vec<u8>>>, MaskError> {
        let raw = fields(row);
        self.check_width(raw.len())?;
        raw.into_iter()
            .zip(&self.columns)
            .map(|(value, (name, mask))| match (value, mask) {
                (Some(v), Some(m)) => m.apply(&self.key, &self.table, name, &v),
                (value, _) => Ok(value),
            })
            .collect()
    }
}

/// One text-format row's values, decoded (`None`: NULL).
pub fn fields(row: &[u8]) -> Vec<Option<Vec<u8>>> {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    row.split(|&b| b == b'\t')
        .map(|f| (f != b"\\N").then(|| unescape(f)))
        .collect()
}

/// COPY text escapes decoded (`\t`, `\n`, `\\`, `\r`, `\b`, `\f`, `\v`,
/// octal `\NNN` and hex `\xHH`).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

/// A value written as a COPY text field.
fn escape(value: &[u8], out: &mut Vec<u8>) {
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let value = b"a\tb\nc\\d\re";
        let mut field = Vec::new();
        escape(value, &mut field);
        assert!(!field.contains(&b'\t') && !field.contains(&b'\n'));
        assert_eq!(unescape(&field), value);
        assert_eq!(unescape(b"\\101\\x42\\\\N"), b"AB\\N");
    }

    #[test]
    fn only_masked_columns_change_and_nulls_stay() {
        let key = MaskKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let config = super::super::MaskConfig::parse(
            &["public.c.email=hash".into(), "public.c.note=null".into()],
            key,
        )
        .unwrap();
        let table = QualifiedName {
            namespace: "public".into(),
            name: "c".into(),
        };
        let columns = vec![
            ("id".to_owned(), 23, "int4".to_owned(), -1),
            ("email".to_owned(), 25, "text".to_owned(), -1),
            ("note".to_owned(), 25, "text".to_owned(), -1),
        ];
        let mask = CopyMask::new(&config, &table, &columns).unwrap().unwrap();
        let mut out = Vec::new();
        mask.mask_row(b"7\ta\\tb@x.org\tsecret\n", &mut out)
            .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let fields: Vec<&str> = text.trim_end().split('\t').collect();
        assert_eq!(fields[0], "7");
        assert_eq!(fields[1].len(), 32);
        assert_eq!(fields[2], "\\N");
        out.clear();
        mask.mask_row(b"8\t\\N\t\\N\n", &mut out).unwrap();
        assert_eq!(out, b"8\t\\N\t\\N\n");
        let e = mask.mask_row(b"8\tx\n", &mut out).unwrap_err();
        assert!(e.reason.contains("2 fields"));
        let masked = mask.masked_fields(b"7\ta\\tb@x.org\tsecret\n").unwrap();
        assert_eq!(masked[0].as_deref(), Some(&b"7"[..]));
        assert_eq!(masked[1].as_ref().map(Vec::len), Some(32));
        assert_eq!(masked[2], None);
        assert_eq!(
            super::fields(b"1\t\\N\ta\\tb\n"),
            vec![Some(b"1".to_vec()), None, Some(b"a\tb".to_vec())]
        );
        let missing = CopyMask::new(&config, &table, &columns[..2]).unwrap_err();
        assert_eq!(missing.column, "note");
    }
}
