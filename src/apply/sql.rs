//! SQL text for applying changes: pure builders, one per statement shape.
//!
//! Parameters are numbered in the order the caller binds them: new values
//! first (in column order), then key values. Identifiers arrive quoted.

use std::fmt::Write;

/// How a key value is compared in a WHERE clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Match {
    /// `col = $n::type` (primary keys and replica identities). The cast
    /// gives the parameter the column's own type: left to inference, a
    /// composite's `=` (`record = record`) would make it an anonymous
    /// `record`, which has no input function.
    Equal,
    /// `col::text = $n::text` (whole-row identity: works for every type,
    /// including those without an equality operator, like json or point).
    Text,
    /// `col IS NULL` (no parameter).
    Null,
}

/// What an INSERT says when green has an identity column GENERATED
/// ALWAYS: blue's values go in as they are, as PostgreSQL's own subscriber
/// writes them.
fn overriding(overriding: bool) -> &'static str {
    if overriding {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    }
}

/// `INSERT INTO t (a, b) VALUES ($1, $2)`, optionally `ON CONFLICT DO NOTHING`
/// (and `OVERRIDING SYSTEM VALUE` before `VALUES` with `override_identity`).
pub(crate) fn insert(
    table: &str,
    cols: &[&str],
    skip_conflicts: bool,
    override_identity: bool,
) -> String {
    let mut s = format!(
        "INSERT INTO {table} ({}){} VALUES (",
        cols.join(", "),
        overriding(override_identity)
    );
    for i in 0..cols.len() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "${}", i + 1);
    }
    s.push(')');
    if skip_conflicts {
        s.push_str(" ON CONFLICT DO NOTHING");
    }
    s
}

/// `COPY t (a, b) FROM STDIN`, text or binary format.
pub(crate) fn copy_in(table: &str, cols: &[&str], binary: bool) -> String {
    format!(
        "COPY {table} ({}) FROM STDIN{}",
        cols.join(", "),
        if binary { " (FORMAT binary)" } else { "" }
    )
}

/// A key column in a WHERE clause: quoted name, green's type, the match.
pub(crate) type KeyColumn<'a> = (&'a str, &'a str, Match);

fn where_clause(s: &mut String, key: &[KeyColumn<'_>], mut next: usize) {
    for (i, (col, ty, m)) in key.iter().enumerate() {
        s.push_str(if i == 0 { " WHERE " } else { " AND " });
        match m {
            Match::Equal => {
                let _ = write!(s, "{col} = ${next}::{ty}");
                next += 1;
            }
            Match::Text => {
                let _ = write!(s, "{col}::text = ${next}::text");
                next += 1;
            }
            Match::Null => {
                let _ = write!(s, "{col} IS NULL");
            }
        }
    }
}

/// The row to act on: by key, or (whole-row identity) one matching row by ctid.
fn target(s: &mut String, table: &str, key: &[KeyColumn<'_>], first: usize, one_row: bool) {
    if one_row {
        let _ = write!(s, " WHERE ctid = (SELECT ctid FROM {table}");
        where_clause(s, key, first);
        s.push_str(" LIMIT 1)");
    } else {
        where_clause(s, key, first);
    }
}

/// A column of an UPDATE's new values: its quoted name, and green's type
/// when it is an identity column GENERATED ALWAYS, which no UPDATE may set
/// (only to DEFAULT): its new value is matched instead (`AND col = $n::type`),
/// so an update that changed it finds no row and is a conflict, never a
/// silent difference.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SetColumn<'a> {
    /// Quoted name.
    pub(crate) name: &'a str,
    /// Green's type, for a GENERATED ALWAYS identity column.
    pub(crate) always: Option<&'a str>,
}

/// `UPDATE t SET a = $1, b = $2 WHERE k = $3` (identity columns GENERATED
/// ALWAYS matched, not set; see [`SetColumn`]). `noop` is a column the
/// statement may set to itself when nothing else is left to set.
pub(crate) fn update(
    table: &str,
    set: &[SetColumn<'_>],
    key: &[KeyColumn<'_>],
    one_row: bool,
    noop: &str,
) -> String {
    let mut s = format!("UPDATE {table} SET ");
    let mut first = true;
    for (i, col) in set.iter().enumerate() {
        if col.always.is_none() {
            if !first {
                s.push_str(", ");
            }
            first = false;
            let _ = write!(s, "{} = ${}", col.name, i + 1);
        }
    }
    if first {
        let _ = write!(s, "{noop} = {noop}");
    }
    target(&mut s, table, key, set.len() + 1, one_row);
    for (i, col) in set.iter().enumerate() {
        if let Some(ty) = col.always {
            let _ = write!(s, " AND {} = ${}::{ty}", col.name, i + 1);
        }
    }
    s
}

/// `DELETE FROM t WHERE k = $1`.
pub(crate) fn delete(table: &str, key: &[KeyColumn<'_>], one_row: bool) -> String {
    let mut s = format!("DELETE FROM {table}");
    target(&mut s, table, key, 1, one_row);
    s
}

/// Set-based statements take one `text[]` parameter per column, element `i`
/// holding row `i`'s value; green's input function of each column's type
/// converts the elements (`__v.cN::type`). With `binary` values, one array
/// of each column's own type instead (`$1::bigint[]`; the cast is then the
/// identity).
fn unnest_columns(s: &mut String, cols: &[(&str, &str)], binary: bool) {
    let n = cols.len();
    s.push_str("unnest(");
    for (i, (_, ty)) in cols.iter().enumerate() {
        let i = i + 1;
        if i > 1 {
            s.push_str(", ");
        }
        if binary {
            let _ = write!(s, "${i}::{ty}[]");
        } else {
            let _ = write!(s, "${i}::pg_catalog.text[]");
        }
    }
    s.push_str(") AS __v(");
    for i in 1..=n {
        if i > 1 {
            s.push_str(", ");
        }
        let _ = write!(s, "c{i}");
    }
    s.push(')');
}

/// `__t.k = __v.cN::type AND ...`, `key` indexing into the parameter columns.
fn unnest_match(s: &mut String, cols: &[(&str, &str)], key: &[usize]) {
    for (n, &k) in key.iter().enumerate() {
        s.push_str(if n == 0 { " WHERE " } else { " AND " });
        let (col, ty) = cols[k];
        let _ = write!(s, "__t.{col} = __v.c{}::{ty}", k + 1);
    }
}

/// Updates of many rows, found by key, in one statement:
/// `UPDATE t AS __t SET a = __v.c1::int4, b = __v.c2::text FROM unnest($1::text[], $2::text[]) AS __v(c1, c2) WHERE __t.a = __v.c1::int4`.
/// `set` holds (column, type) pairs; `key` indexes into it.
/// Columns in `fixed` (identity columns GENERATED ALWAYS, which no UPDATE
/// may set; key columns, so matched by the key, whose values a stretch
/// never changes) are left out of SET; at least one column must be left.
pub(crate) fn update_many(
    table: &str,
    set: &[(&str, &str)],
    key: &[usize],
    fixed: &[usize],
    binary: bool,
) -> String {
    let mut s = format!("UPDATE {table} AS __t SET ");
    let mut first = true;
    for (i, (col, ty)) in set.iter().enumerate() {
        if fixed.contains(&i) {
            continue;
        }
        if !first {
            s.push_str(", ");
        }
        first = false;
        let _ = write!(s, "{col} = __v.c{}::{ty}", i + 1);
    }
    s.push_str(" FROM ");
    unnest_columns(&mut s, set, binary);
    unnest_match(&mut s, set, key);
    s
}

/// Inserts of many rows in one statement:
/// `INSERT INTO t (a, b) SELECT __v.c1::int4, __v.c2::text FROM unnest($1::text[], $2::text[]) AS __v(c1, c2)`.
pub(crate) fn insert_many(table: &str, cols: &[(&str, &str)], override_identity: bool) -> String {
    let names: Vec<&str> = cols.iter().map(|(col, _)| *col).collect();
    let values: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("__v.c{}::{ty}", i + 1))
        .collect();
    let mut s = format!(
        "INSERT INTO {table} ({}){} SELECT {} FROM ",
        names.join(", "),
        overriding(override_identity),
        values.join(", ")
    );
    unnest_columns(&mut s, cols, false);
    s
}

/// Deletes of many rows, found by key, in one statement:
/// `DELETE FROM t AS __t USING unnest($1::text[]) AS __v(c1) WHERE __t.k = __v.c1::int4`.
pub(crate) fn delete_many(table: &str, key: &[(&str, &str)], binary: bool) -> String {
    let mut s = format!("DELETE FROM {table} AS __t USING ");
    unnest_columns(&mut s, key, binary);
    let all: Vec<usize> = (0..key.len()).collect();
    unnest_match(&mut s, key, &all);
    s
}

/// The row as JSON, for the conflict log.
pub(crate) fn select_json(table: &str, key: &[KeyColumn<'_>]) -> String {
    let mut s = format!("SELECT row_to_json(t.*)::text FROM {table} t");
    let qualified: Vec<(String, &str, Match)> = key
        .iter()
        .map(|(c, ty, m)| (format!("t.{c}"), *ty, *m))
        .collect();
    let refs: Vec<KeyColumn<'_>> = qualified
        .iter()
        .map(|(c, ty, m)| (c.as_str(), *ty, *m))
        .collect();
    where_clause(&mut s, &refs, 1);
    s.push_str(" LIMIT 1");
    s
}

/// `TRUNCATE a, b [RESTART IDENTITY] [CASCADE]`.
pub(crate) fn truncate(tables: &[&str], restart_identity: bool, cascade: bool) -> String {
    format!(
        "TRUNCATE {}{}{}",
        tables.join(", "),
        if restart_identity {
            " RESTART IDENTITY"
        } else {
            ""
        },
        if cascade { " CASCADE" } else { "" }
    )
}

/// Appends one value to a COPY text-format row (`\N` for NULL; backslash,
/// newline, carriage return and tab escaped).
pub(crate) fn copy_text_value(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(mut v) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    // Most values need no escaping: find special bytes with SIMD scans.
    loop {
        let next = match (
            memchr::memchr3(b'\\', b'\n', b'\t', v),
            memchr::memchr(b'\r', v),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(i) = next else {
            out.extend_from_slice(v);
            return;
        };
        out.extend_from_slice(&v[..i]);
        out.extend_from_slice(match v[i] {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => b"\\t",
        });
        v = &v[i + 1..];
    }
}

/// The 19-byte header of a binary COPY stream.
pub(crate) const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The trailer of a binary COPY stream.
pub(crate) const COPY_BINARY_TRAILER: &[u8] = &[0xff, 0xff];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_exact() {
        let t = "\"public\".\"Ledger\"";
        let set = |name| SetColumn { name, always: None };
        assert_eq!(
            insert(t, &["\"id\"", "\"memo\""], false, false),
            "INSERT INTO \"public\".\"Ledger\" (\"id\", \"memo\") VALUES ($1, $2)"
        );
        assert_eq!(
            insert(t, &["\"id\""], true, false),
            "INSERT INTO \"public\".\"Ledger\" (\"id\") VALUES ($1) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            insert(t, &["\"id\""], true, true),
            "INSERT INTO \"public\".\"Ledger\" (\"id\") OVERRIDING SYSTEM VALUE VALUES ($1) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            copy_in(t, &["\"id\"", "\"memo\""], false),
            "COPY \"public\".\"Ledger\" (\"id\", \"memo\") FROM STDIN"
        );
        assert_eq!(
            copy_in(t, &["\"id\""], true),
            "COPY \"public\".\"Ledger\" (\"id\") FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            update(
                t,
                &[set("\"memo\"")],
                &[("\"id\"", "integer", Match::Equal)],
                false,
                "\"memo\""
            ),
            "UPDATE \"public\".\"Ledger\" SET \"memo\" = $1 WHERE \"id\" = $2::integer"
        );
        // An identity column GENERATED ALWAYS is matched, not set; with
        // nothing else to set, a column is set to itself.
        let always = SetColumn {
            name: "\"id\"",
            always: Some("integer"),
        };
        assert_eq!(
            update(
                t,
                &[always, set("\"memo\"")],
                &[("\"id\"", "integer", Match::Equal)],
                false,
                "\"memo\""
            ),
            "UPDATE \"public\".\"Ledger\" SET \"memo\" = $2 WHERE \"id\" = $3::integer AND \"id\" = $1::integer"
        );
        assert_eq!(
            update(
                t,
                &[always],
                &[("\"id\"", "integer", Match::Equal)],
                false,
                "\"memo\""
            ),
            "UPDATE \"public\".\"Ledger\" SET \"memo\" = \"memo\" WHERE \"id\" = $2::integer AND \"id\" = $1::integer"
        );
        assert_eq!(
            update(
                t,
                &[set("\"a\""), set("\"b\"")],
                &[
                    ("\"a\"", "integer", Match::Text),
                    ("\"b\"", "text", Match::Null),
                    ("\"c\"", "\"s\".\"comp\"", Match::Text)
                ],
                true,
                "\"a\""
            ),
            "UPDATE \"public\".\"Ledger\" SET \"a\" = $1, \"b\" = $2 WHERE ctid = (SELECT ctid FROM \"public\".\"Ledger\" \
             WHERE \"a\"::text = $3::text AND \"b\" IS NULL AND \"c\"::text = $4::text LIMIT 1)"
        );
        assert_eq!(
            delete(
                t,
                &[
                    ("\"k1\"", "\"s\".\"comp\"", Match::Equal),
                    ("\"k2\"", "\"bit\"", Match::Equal)
                ],
                false
            ),
            "DELETE FROM \"public\".\"Ledger\" WHERE \"k1\" = $1::\"s\".\"comp\" AND \"k2\" = $2::\"bit\""
        );
        assert_eq!(
            delete(t, &[("\"v\"", "text", Match::Null)], true),
            "DELETE FROM \"public\".\"Ledger\" WHERE ctid = (SELECT ctid FROM \"public\".\"Ledger\" WHERE \"v\" IS NULL LIMIT 1)"
        );
        assert_eq!(
            update_many(
                t,
                &[
                    ("\"Id\"", "integer"),
                    ("\"memo\"", "text"),
                    ("\"k2\"", "\"s\".\"e\"")
                ],
                &[0, 2],
                &[],
                false
            ),
            "UPDATE \"public\".\"Ledger\" AS __t SET \"Id\" = __v.c1::integer, \"memo\" = __v.c2::text, \"k2\" = __v.c3::\"s\".\"e\" \
             FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[], $3::pg_catalog.text[]) AS __v(c1, c2, c3) \
             WHERE __t.\"Id\" = __v.c1::integer AND __t.\"k2\" = __v.c3::\"s\".\"e\""
        );
        assert_eq!(
            update_many(
                t,
                &[("\"Id\"", "integer"), ("\"memo\"", "text")],
                &[0],
                &[0],
                false
            ),
            "UPDATE \"public\".\"Ledger\" AS __t SET \"memo\" = __v.c2::text \
             FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[]) AS __v(c1, c2) \
             WHERE __t.\"Id\" = __v.c1::integer"
        );
        assert_eq!(
            insert_many(t, &[("\"Id\"", "integer"), ("\"memo\"", "text")], false),
            "INSERT INTO \"public\".\"Ledger\" (\"Id\", \"memo\") SELECT __v.c1::integer, __v.c2::text \
             FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[]) AS __v(c1, c2)"
        );
        assert_eq!(
            insert_many(t, &[("\"Id\"", "integer")], true),
            "INSERT INTO \"public\".\"Ledger\" (\"Id\") OVERRIDING SYSTEM VALUE SELECT __v.c1::integer \
             FROM unnest($1::pg_catalog.text[]) AS __v(c1)"
        );
        assert_eq!(
            delete_many(t, &[("\"id\"", "bigint")], false),
            "DELETE FROM \"public\".\"Ledger\" AS __t USING unnest($1::pg_catalog.text[]) AS __v(c1) \
             WHERE __t.\"id\" = __v.c1::bigint"
        );
        // Binary values: arrays of the columns' own types.
        assert_eq!(
            delete_many(t, &[("\"id\"", "bigint")], true),
            "DELETE FROM \"public\".\"Ledger\" AS __t USING unnest($1::bigint[]) AS __v(c1) \
             WHERE __t.\"id\" = __v.c1::bigint"
        );
        assert_eq!(
            update_many(
                t,
                &[
                    ("\"Id\"", "integer"),
                    ("\"at\"", "timestamp with time zone")
                ],
                &[0],
                &[],
                true
            ),
            "UPDATE \"public\".\"Ledger\" AS __t SET \"Id\" = __v.c1::integer, \"at\" = __v.c2::timestamp with time zone \
             FROM unnest($1::integer[], $2::timestamp with time zone[]) AS __v(c1, c2) \
             WHERE __t.\"Id\" = __v.c1::integer"
        );
        assert_eq!(
            select_json(t, &[("\"id\"", "bigint", Match::Equal)]),
            "SELECT row_to_json(t.*)::text FROM \"public\".\"Ledger\" t WHERE t.\"id\" = $1::bigint LIMIT 1"
        );
        assert_eq!(
            truncate(&["\"public\".\"a\"", "\"public\".\"b\""], true, true),
            "TRUNCATE \"public\".\"a\", \"public\".\"b\" RESTART IDENTITY CASCADE"
        );
    }

    #[test]
    fn copy_text_escapes_exactly_what_copy_needs() {
        let mut out = Vec::new();
        copy_text_value(&mut out, Some(b"a\\b\tc\nd\re"));
        out.push(b'\t');
        copy_text_value(&mut out, None);
        out.push(b'\t');
        copy_text_value(&mut out, Some("grüße ✓ {x,\"y\"}".as_bytes()));
        assert_eq!(out, "a\\\\b\\tc\\nd\\re\t\\N\tgrüße ✓ {x,\"y\"}".as_bytes());
    }
}
