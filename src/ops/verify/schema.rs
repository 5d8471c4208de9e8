//! `teal verify`'s schema comparison: for each published table, what green
//! must have for apply to work and for a cutover to be safe, each
//! difference with the statement that fixes green.
//!
//! ```text
//! blue's published tables (--tables/--exclude-tables) ──catalog of both sides──▶
//!   table missing, column missing / of another type / NOT NULL only on green,
//!   green's extra NOT NULL column without default, green's unique index blue lacks
//!                                                     (break apply: listed first)
//!   primary key missing or different, replica identity, blue's unique index green
//!   lacks, green's extra nullable column, sequence behind blue  (the rest)
//! ```
//!
//! Column types compare as `format_type` text (the same session settings
//! on both sides), so `varchar(10)` and `varchar(20)` differ; a user type
//! compares by its name (schema-qualified outside the search path).

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::TableSelection;
use crate::event::{QualifiedName, quote_ident};

/// One schema difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaDifference {
    /// `schema.table` (unquoted).
    pub table: String,
    /// What differs.
    pub difference: String,
    /// Whether it makes apply fail (or lose data) as soon as a change
    /// meets it.
    pub breaks_apply: bool,
    /// Expected while teal streams (a sequence behind blue's: sequences
    /// are not replicated), to fix before a cutover; it does not make
    /// green unequal.
    pub note: bool,
    /// SQL that makes green fit, when one statement does.
    pub fix: Option<String>,
}

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    type_sql: String,
    not_null: bool,
    has_default: bool,
    generated: bool,
}

/// What the comparison reads of one table on one side.
#[derive(Debug, Clone, Default)]
struct TableShape {
    columns: Vec<Column>,
    primary_key: Vec<String>,
    /// `d` default, `f` full, `i` index, `n` nothing.
    replica_identity: String,
    /// Column sets of unique indexes other than the primary key (immediate,
    /// no predicate or expression), sorted.
    unique: Vec<Vec<String>>,
    /// Sequences the table owns (serial or identity): name -> last value.
    sequences: BTreeMap<String, Option<i64>>,
}

/// Blue's published tables (with the selection, never teal's own schema
/// `own_schema`, which a `FOR ALL TABLES` publication of a side teal once
/// applied to publishes too), in name order.
pub async fn published_tables(
    blue: &Client,
    publications: &[String],
    selection: &TableSelection,
    own_schema: &str,
) -> Result<Vec<QualifiedName>, tokio_postgres::Error> {
    let mut tables = crate::session::published_tables(blue, publications).await?;
    tables.retain(|t| selection.selects(t) && t.namespace != own_schema);
    Ok(tables)
}

/// Reads `table`'s shape; `None` when the side has no such table.
async fn shape(
    client: &Client,
    table: &QualifiedName,
) -> Result<Option<TableShape>, tokio_postgres::Error> {
    let Some(oid) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.namespace, &table.name],
        )
        .await?
    else {
        return Ok(None);
    };
    let (oid, replica_identity): (u32, String) = (oid.get(0), oid.get(1));
    let columns = client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull, a.atthasdef, a.attgenerated <> '' \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_sql: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
            generated: r.get(4),
        })
        .collect();
    let mut primary_key = Vec::new();
    let mut unique = Vec::new();
    for r in client
        .query(
            "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.n) \
             FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indpred IS NULL \
               AND i.indexprs IS NULL AND k.n <= i.indnkeyatts \
             GROUP BY i.indexrelid, i.indisprimary",
            &[&oid],
        )
        .await?
    {
        let cols: Vec<String> = r.get(1);
        if r.get::<_, bool>(0) {
            primary_key = cols;
        } else {
            let mut sorted = cols;
            sorted.sort();
            unique.push(sorted);
        }
    }
    unique.sort();
    unique.dedup();
    let sequences = client
        .query(
            "SELECT pg_catalog.quote_ident(sn.nspname) || '.' || pg_catalog.quote_ident(s.relname), \
                    pg_catalog.pg_sequence_last_value(s.oid) \
             FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace \
             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = $1 \
               AND d.deptype IN ('a', 'i')",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Some(TableShape {
        columns,
        primary_key,
        replica_identity,
        unique,
        sequences,
    }))
}

/// `CREATE TABLE` for green from blue's shape (columns, NOT NULL, primary key).
fn create_table(table: &QualifiedName, blue: &TableShape) -> String {
    let mut parts: Vec<String> = blue
        .columns
        .iter()
        .filter(|c| !c.generated)
        .map(|c| {
            format!(
                "{} {}{}",
                quote_ident(&c.name),
                c.type_sql,
                if c.not_null { " NOT NULL" } else { "" }
            )
        })
        .collect();
    if !blue.primary_key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", idents(&blue.primary_key)));
    }
    format!("CREATE TABLE {} ({})", table.quoted(), parts.join(", "))
}

fn idents(cols: &[String]) -> String {
    cols.iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The differences of one table, those that break apply first.
fn diff_table(
    table: &QualifiedName,
    blue: &TableShape,
    green: &TableShape,
) -> Vec<SchemaDifference> {
    let name = table.to_string();
    let quoted = table.quoted();
    let mut out = Vec::new();
    let mut add = |difference: String, breaks_apply: bool, fix: Option<String>| {
        out.push(SchemaDifference {
            table: name.clone(),
            note: difference.starts_with("sequence ")
                && difference.contains(" on blue (after a cutover"),
            difference,
            breaks_apply,
            fix,
        });
    };
    // Generated columns on blue are not sent (before PostgreSQL 18); green
    // computes its own.
    for b in blue.columns.iter().filter(|c| !c.generated) {
        let col = quote_ident(&b.name);
        match green.columns.iter().find(|g| g.name == b.name) {
            None => add(
                format!("column {} ({}) is missing on green", b.name, b.type_sql),
                true,
                Some(format!(
                    "ALTER TABLE {quoted} ADD COLUMN {col} {}",
                    b.type_sql
                )),
            ),
            Some(g) if g.generated => add(
                format!(
                    "column {} is generated on green, but blue sends its values",
                    b.name
                ),
                true,
                Some(format!(
                    "ALTER TABLE {quoted} ALTER COLUMN {col} DROP EXPRESSION"
                )),
            ),
            Some(g) => {
                if g.type_sql != b.type_sql {
                    add(
                        format!(
                            "column {} is {} on blue, {} on green",
                            b.name, b.type_sql, g.type_sql
                        ),
                        true,
                        Some(format!(
                            "ALTER TABLE {quoted} ALTER COLUMN {col} TYPE {} USING {col}::{}",
                            b.type_sql, b.type_sql
                        )),
                    );
                }
                if g.not_null && !b.not_null {
                    add(
                        format!(
                            "column {} is NOT NULL on green only: a NULL from blue fails",
                            b.name
                        ),
                        true,
                        Some(format!(
                            "ALTER TABLE {quoted} ALTER COLUMN {col} DROP NOT NULL"
                        )),
                    );
                }
            }
        }
    }
    for g in &green.columns {
        if blue
            .columns
            .iter()
            .any(|b| b.name == g.name && !b.generated)
        {
            continue;
        }
        let col = quote_ident(&g.name);
        if g.not_null && !g.has_default && !g.generated {
            add(
                format!(
                    "column {} exists on green only, NOT NULL without a default: every insert from blue fails",
                    g.name
                ),
                true,
                Some(format!(
                    "ALTER TABLE {quoted} ALTER COLUMN {col} DROP NOT NULL"
                )),
            );
        } else if !g.generated && !blue.columns.iter().any(|b| b.name == g.name) {
            add(
                format!(
                    "column {} exists on green only (filled by its default)",
                    g.name
                ),
                false,
                None,
            );
        }
    }
    for u in &green.unique {
        if !blue.unique.contains(u) && *u != sorted(&blue.primary_key) {
            add(
                format!(
                    "a unique index on ({}) exists on green only: rows blue holds twice fail there",
                    u.join(", ")
                ),
                true,
                None,
            );
        }
    }
    if blue.primary_key != green.primary_key {
        let difference = match (blue.primary_key.is_empty(), green.primary_key.is_empty()) {
            (false, true) => format!(
                "green has no primary key (blue's: {}): updates and deletes compare whole rows",
                blue.primary_key.join(", ")
            ),
            (true, false) => format!(
                "green has a primary key ({}) blue does not have",
                green.primary_key.join(", ")
            ),
            _ => format!(
                "the primary key is ({}) on blue, ({}) on green",
                blue.primary_key.join(", "),
                green.primary_key.join(", ")
            ),
        };
        let fix = (!blue.primary_key.is_empty() && green.primary_key.is_empty()).then(|| {
            format!(
                "ALTER TABLE {quoted} ADD PRIMARY KEY ({})",
                idents(&blue.primary_key)
            )
        });
        // A key green has and blue lacks may reject rows blue holds twice.
        let breaks = blue.primary_key.is_empty() || !green.primary_key.is_empty();
        add(difference, breaks, fix);
    }
    if blue.replica_identity != green.replica_identity {
        let label = |r: &str| match r {
            "d" => "default",
            "f" => "full",
            "i" => "index",
            _ => "nothing",
        };
        add(
            format!(
                "replica identity is {} on blue, {} on green (it matters once green streams back, after a cutover)",
                label(&blue.replica_identity),
                label(&green.replica_identity)
            ),
            false,
            match blue.replica_identity.as_str() {
                "f" => Some(format!("ALTER TABLE {quoted} REPLICA IDENTITY FULL")),
                "d" => Some(format!("ALTER TABLE {quoted} REPLICA IDENTITY DEFAULT")),
                _ => None,
            },
        );
    }
    for u in &blue.unique {
        if !green.unique.contains(u) && *u != sorted(&green.primary_key) {
            add(
                format!(
                    "blue's unique index on ({}) is missing on green",
                    u.join(", ")
                ),
                false,
                Some(format!("CREATE UNIQUE INDEX ON {quoted} ({})", idents(u))),
            );
        }
    }
    for (seq, blue_value) in &blue.sequences {
        let green_value = green.sequences.get(seq).copied().flatten();
        match (blue_value, green.sequences.contains_key(seq)) {
            (_, false) => add(format!("sequence {seq} is missing on green"), false, None),
            (Some(b), true) if green_value.is_none_or(|g| g < *b) => add(
                format!(
                    "sequence {seq} is at {} on green, {b} on blue (after a cutover, new rows would reuse values)",
                    green_value.map_or_else(|| "its start".to_owned(), |g| g.to_string())
                ),
                false,
                Some(format!(
                    "SELECT pg_catalog.setval('{}', {b})",
                    seq.replace('\'', "''")
                )),
            ),
            _ => {}
        }
    }
    out
}

fn sorted(cols: &[String]) -> Vec<String> {
    let mut s = cols.to_vec();
    s.sort();
    s
}

/// Every difference between blue's published tables and green's, those
/// that break apply first (then by table).
pub async fn compare(
    blue: &Client,
    green: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<SchemaDifference>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for table in tables {
        let Some(b) = shape(blue, table).await? else {
            continue;
        };
        match shape(green, table).await? {
            None => out.push(SchemaDifference {
                table: table.to_string(),
                difference: "the table is missing on green".into(),
                breaks_apply: true,
                note: false,
                fix: Some(create_table(table, &b)),
            }),
            Some(g) => out.extend(diff_table(table, &b, &g)),
        }
    }
    // Stable: within each group, the tables' order.
    out.sort_by_key(|d| !d.breaks_apply);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            type_sql: ty.into(),
            not_null,
            has_default: false,
            generated: false,
        }
    }

    #[test]
    fn differences_that_break_apply_come_with_their_fix() {
        let t = QualifiedName {
            namespace: "public".into(),
            name: "acct".into(),
        };
        let blue = TableShape {
            columns: vec![col("id", "integer", true), col("v", "numeric(10,2)", false)],
            primary_key: vec!["id".into()],
            replica_identity: "d".into(),
            ..TableShape::default()
        };
        let green = TableShape {
            columns: vec![col("id", "bigint", true), col("extra", "text", true)],
            primary_key: vec![],
            replica_identity: "d".into(),
            ..TableShape::default()
        };
        let d = diff_table(&t, &blue, &green);
        let text: Vec<&str> = d.iter().map(|d| d.difference.as_str()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("column id is integer on blue, bigint on green")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("column v (numeric(10,2)) is missing")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("column extra exists on green only, NOT NULL")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("green has no primary key")),
            "{text:?}"
        );
        let add = d.iter().find(|d| d.difference.contains("missing")).unwrap();
        assert_eq!(
            add.fix.as_deref(),
            Some("ALTER TABLE \"public\".\"acct\" ADD COLUMN \"v\" numeric(10,2)")
        );
        assert_eq!(
            create_table(&t, &blue),
            "CREATE TABLE \"public\".\"acct\" (\"id\" integer NOT NULL, \"v\" numeric(10,2), PRIMARY KEY (\"id\"))"
        );
        assert!(diff_table(&t, &blue, &blue).is_empty());
    }
}
