//! What `teal sync` copies: the published tables read from blue's catalog,
//! checked against green, cut into chunks.
//!
//! ```text
//! pg_publication_tables (columns, row filters) ─┐
//! leaves (pg_partition_tree), sizes, keys ──────┼─▶ TablePlan ─▶ ctid-page chunks
//! green: table, columns, types, rows present ───┘
//! ```

use tokio_postgres::Client;

use crate::event::quote_ident;
use crate::store::SyncChunk;

use super::SyncError;

/// A column copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// `format_type` on blue.
    pub blue_type: String,
    /// A built-in type (and element type), whose binary form holds no
    /// database-specific OIDs.
    pub builtin: bool,
    /// Blue's type OID, type name and type modifier (for masking).
    pub type_oid: u32,
    /// `pg_type.typname`.
    pub type_name: String,
    /// `atttypmod`.
    pub typmod: i32,
}

/// How green finds a row again for updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A primary key or a replica identity index.
    Key,
    /// REPLICA IDENTITY FULL without a key.
    FullWithoutKey,
    /// No replica identity (DEFAULT without a primary key, or NOTHING).
    None,
}

/// One blue relation read (the table, or one of its leaf partitions).
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Quoted `schema.name`.
    pub quoted: String,
    /// Pages now (the snapshot's rows are in them; later pages are read by
    /// the open-ended last chunk).
    pub pages: u64,
    /// Rows per page, from blue's statistics (a guess when never analyzed).
    pub rows_per_page: f64,
}

/// One published table.
#[derive(Debug, Clone)]
pub struct TablePlan {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Columns copied, in blue's order.
    pub columns: Vec<Column>,
    /// The publications' row filter (OR of them), if every one has one.
    pub row_filter: Option<String>,
    /// Relations read on blue.
    pub leaves: Vec<Leaf>,
    /// Replica identity on blue.
    pub identity: Identity,
    /// Heap bytes on blue.
    pub heap_bytes: u64,
    /// Rows blue's statistics expect.
    pub estimated_rows: u64,
    /// Copy in binary: the types match on both sides and are built in
    /// (never for a masked table: masking reads COPY's text format).
    pub binary: bool,
    /// The table's masks (`--mask`), if it has any.
    pub mask: Option<crate::mask::copy::CopyMask>,
}

impl TablePlan {
    /// Quoted `schema.name`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.name` for people.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The statement reading `chunk` on blue.
    pub fn copy_out(&self, chunk: &SyncChunk) -> String {
        let mut conditions = Vec::new();
        if let Some(first) = chunk.first_page {
            conditions.push(format!("ctid >= '({first},0)'::tid"));
        }
        if let Some(last) = chunk.last_page {
            conditions.push(format!("ctid < '({last},0)'::tid"));
        }
        if let Some(filter) = &self.row_filter {
            conditions.push(format!("({filter})"));
        }
        if conditions.is_empty() {
            // A whole relation: COPY reads it directly (no executor, and,
            // as for ONLY, no child tables).
            return format!(
                "COPY {} ({}) TO STDOUT{}",
                chunk.source,
                self.column_list(),
                self.format()
            );
        }
        format!(
            "COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT{}",
            self.column_list(),
            chunk.source,
            conditions.join(" AND "),
            self.format()
        )
    }

    /// The statement writing a chunk on green.
    pub fn copy_in(&self) -> String {
        format!(
            "COPY {} ({}) FROM STDIN{}",
            self.quoted(),
            self.column_list(),
            self.format()
        )
    }

    fn format(&self) -> &'static str {
        if self.binary { " (FORMAT binary)" } else { "" }
    }

    /// Cuts the leaves into chunks of about `chunk_rows` rows: page ranges
    /// read by TID range scans (PostgreSQL 14+; older servers would scan the
    /// whole table per chunk, so there one chunk per leaf). The last chunk
    /// of a leaf has no upper bound.
    pub fn chunks(&self, chunk_rows: u64, tid_range_scans: bool) -> Vec<SyncChunk> {
        let mut out = Vec::new();
        for leaf in &self.leaves {
            let pages_per_chunk = if tid_range_scans {
                ((chunk_rows as f64 / leaf.rows_per_page.max(1.0)) as u64).max(1)
            } else {
                u64::MAX
            };
            let mut first = 0u64;
            loop {
                let last = first.saturating_add(pages_per_chunk);
                let open = last >= leaf.pages;
                out.push(SyncChunk {
                    table: self.quoted(),
                    chunk: out.len() as i32,
                    source: leaf.quoted.clone(),
                    first_page: (first > 0).then_some(first as i64),
                    last_page: (!open).then_some(last as i64),
                });
                if open {
                    break;
                }
                first = last;
            }
        }
        out
    }
}

/// One row of pg_publication_tables, merged over the publications.
struct Published {
    schema: String,
    name: String,
    /// Column list (`None`: all columns).
    columns: Option<Vec<String>>,
    /// Row filters (`None`: some publication has none).
    filters: Option<Vec<String>>,
}

/// Rows per page assumed for a table blue never analyzed.
const GUESSED_ROWS_PER_PAGE: f64 = 60.0;

/// Reads the published tables from blue (server version `version`, as
/// `server_version_num`), with `--tables` / `--exclude-tables` applied.
pub async fn published_tables(
    blue: &Client,
    publications: &[String],
    selection: &crate::config::TableSelection,
    version: i32,
    mask: Option<&crate::mask::MaskConfig>,
) -> Result<Vec<TablePlan>, SyncError> {
    let found: Vec<String> = blue
        .query(
            "SELECT pubname::text FROM pg_publication WHERE pubname = ANY($1)",
            &[&publications],
        )
        .await
        .map_err(SyncError::blue("reading blue's publications"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(missing) = publications.iter().find(|p| !found.contains(p)) {
        return Err(SyncError::Setup(format!(
            "publication {missing:?} does not exist on blue: create it there, e.g. CREATE PUBLICATION {} FOR ALL TABLES",
            quote_ident(missing)
        )));
    }
    // Column lists and row filters exist from PostgreSQL 15.
    let query = if version >= 150000 {
        "SELECT schemaname::text, tablename::text, attnames::text[], rowfilter \
         FROM pg_publication_tables WHERE pubname = ANY($1) ORDER BY 1, 2"
    } else {
        "SELECT schemaname::text, tablename::text, NULL::text[], NULL::text \
         FROM pg_publication_tables WHERE pubname = ANY($1) ORDER BY 1, 2"
    };
    let rows = blue
        .query(query, &[&publications])
        .await
        .map_err(SyncError::blue("reading the published tables"))?;
    let mut tables: Vec<Published> = Vec::new();
    for r in &rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let columns: Option<Vec<String>> = r.get(2);
        let filter: Option<String> = r.get(3);
        let selected = selection.selects(&crate::event::QualifiedName {
            namespace: schema.clone(),
            name: name.clone(),
        });
        if !selected {
            continue;
        }
        match tables
            .iter_mut()
            .find(|t| t.schema == schema && t.name == name)
        {
            // Published more than once: the union of the column lists, and
            // the OR of the filters (none if one publication has none).
            Some(t) => {
                t.columns = match (t.columns.take(), columns) {
                    (Some(mut have), Some(more)) => {
                        for c in more {
                            if !have.contains(&c) {
                                have.push(c);
                            }
                        }
                        Some(have)
                    }
                    _ => None,
                };
                t.filters = match (t.filters.take(), filter) {
                    (Some(mut have), Some(more)) => {
                        have.push(more);
                        Some(have)
                    }
                    _ => None,
                };
            }
            None => tables.push(Published {
                schema,
                name,
                columns,
                filters: filter.map(|f| vec![f]),
            }),
        }
    }
    // Against everything published (an entry may be excluded too).
    let published: Vec<crate::event::QualifiedName> = rows
        .iter()
        .map(|r| crate::event::QualifiedName {
            namespace: r.get(0),
            name: r.get(1),
        })
        .collect();
    if let Some(wanted) = selection.unmatched(&published) {
        return Err(SyncError::Setup(format!(
            "--tables names {wanted:?}, which the publication(s) {} do not publish",
            publications.join(",")
        )));
    }
    let mut plans = Vec::new();
    for Published {
        schema,
        name,
        columns: attnames,
        filters,
    } in tables
    {
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let columns = blue
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                 t.oid < 16384 AND (t.typelem = 0 OR t.typelem < 16384), \
                 a.atttypid::oid, t.typname::text, a.atttypmod \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                 AND a.attgenerated = '' ORDER BY a.attnum",
                &[&quoted],
            )
            .await
            .map_err(SyncError::blue(format!("reading the columns of {quoted}")))?
            .iter()
            .map(|r| Column {
                name: r.get(0),
                blue_type: r.get(1),
                builtin: r.get(2),
                type_oid: r.get(3),
                type_name: r.get(4),
                typmod: r.get(5),
            })
            .filter(|c| attnames.as_ref().is_none_or(|a| a.contains(&c.name)))
            .collect::<Vec<Column>>();
        let copy_mask = match mask {
            None => None,
            Some(m) => crate::mask::copy::CopyMask::new(
                m,
                &crate::event::QualifiedName {
                    namespace: schema.clone(),
                    name: name.clone(),
                },
                &columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_oid, c.type_name.clone(), c.typmod))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| SyncError::Setup(e.to_string()))?,
        };
        let identity_row = blue
            .query_one(
                "SELECT c.relreplident::text, \
                 EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)) \
                 FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&quoted],
            )
            .await
            .map_err(SyncError::blue(format!("reading the replica identity of {quoted}")))?;
        let (replident, keyed): (String, bool) = (identity_row.get(0), identity_row.get(1));
        let identity = match (replident.as_str(), keyed) {
            ("n", _) => Identity::None,
            ("f", false) => Identity::FullWithoutKey,
            (_, true) => Identity::Key,
            _ => Identity::None,
        };
        let leaf_rows = blue
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname), \
                 (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint, \
                 c.relpages::bigint, c.reltuples::float8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE isleaf) \
                 OR (c.oid = $1::text::regclass AND c.relkind <> 'p') ORDER BY 1",
                &[&quoted],
            )
            .await
            .map_err(SyncError::blue(format!(
                "reading the partitions of {quoted}"
            )))?;
        let mut leaves = Vec::new();
        let (mut heap_bytes, mut estimated_rows) = (0u64, 0u64);
        for r in &leaf_rows {
            let pages = r.get::<_, i64>(1).max(0) as u64;
            let (relpages, reltuples): (i64, f64) = (r.get(2), r.get(3));
            let rows_per_page = if relpages > 0 && reltuples > 0.0 {
                reltuples / relpages as f64
            } else {
                GUESSED_ROWS_PER_PAGE
            };
            heap_bytes += pages * 8192;
            estimated_rows += (pages as f64 * rows_per_page) as u64;
            leaves.push(Leaf {
                quoted: r.get(0),
                pages,
                rows_per_page,
            });
        }
        plans.push(TablePlan {
            schema,
            name,
            columns,
            row_filter: filters.map(|f| f.join(") OR (")),
            leaves,
            identity,
            heap_bytes,
            estimated_rows,
            binary: false,
            mask: copy_mask,
        });
    }
    Ok(plans)
}

/// A green table's state before the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreenTable {
    /// It holds rows.
    pub has_rows: bool,
}

/// Checks `plan` against green: the table and every column exist and take
/// values; decides binary or text. Errors name the table and column and
/// what to run.
pub async fn check_green(green: &Client, plan: &mut TablePlan) -> Result<GreenTable, SyncError> {
    let quoted = plan.quoted();
    let exists: Option<String> = green
        .query_one("SELECT to_regclass($1)::text", &[&quoted])
        .await
        .map_err(SyncError::green(format!("looking up {quoted}")))?
        .get(0);
    if exists.is_none() {
        return Err(SyncError::Setup(format!(
            "table {} is published on blue but does not exist on green: create it there first (e.g. pg_dump --schema-only -t '{}' BLUE | psql GREEN), then run teal sync again",
            plan.display(),
            quoted
        )));
    }
    let rows = green
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
             t.oid < 16384 AND (t.typelem = 0 OR t.typelem < 16384), a.attgenerated <> '' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&quoted],
        )
        .await
        .map_err(SyncError::green(format!("reading the columns of {quoted}")))?;
    let mut binary = true;
    for c in &plan.columns {
        let Some(g) = rows.iter().find(|r| r.get::<_, String>(0) == c.name) else {
            return Err(SyncError::Setup(format!(
                "column {:?} of {} exists on blue ({}) but not on green: run ALTER TABLE {} ADD COLUMN {} {} on green, then teal sync again",
                c.name,
                plan.display(),
                c.blue_type,
                quoted,
                quote_ident(&c.name),
                c.blue_type
            )));
        };
        if g.get::<_, bool>(3) {
            return Err(SyncError::Setup(format!(
                "column {:?} of {} is generated on green but a stored column on blue: make it an ordinary column on green (or generated on both)",
                c.name,
                plan.display()
            )));
        }
        let green_type: String = g.get(1);
        binary &= c.builtin && g.get::<_, bool>(2) && green_type == c.blue_type;
    }
    plan.binary = binary && plan.mask.is_none();
    let has_rows: bool = green
        .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {quoted})"), &[])
        .await
        .map_err(SyncError::green(format!("looking for rows in {quoted}")))?
        .get(0);
    Ok(GreenTable { has_rows })
}

/// Sequences owned by (or identity of) `plan`'s columns on blue: (column, sequence).
pub async fn owned_sequences(
    client: &Client,
    table_quoted: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, pg_get_serial_sequence($1, a.attname) FROM pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             AND pg_get_serial_sequence($1, a.attname) IS NOT NULL ORDER BY a.attnum",
            &[&table_quoted],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(pages: u64, rows_per_page: f64) -> TablePlan {
        TablePlan {
            schema: "Shop".into(),
            name: "order lines".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    blue_type: "integer".into(),
                    builtin: true,
                    type_oid: 23,
                    type_name: "int4".into(),
                    typmod: -1,
                },
                Column {
                    name: "Note".into(),
                    blue_type: "text".into(),
                    builtin: true,
                    type_oid: 25,
                    type_name: "text".into(),
                    typmod: -1,
                },
            ],
            row_filter: Some("id > 0".into()),
            leaves: vec![Leaf {
                quoted: "\"Shop\".\"order lines\"".into(),
                pages,
                rows_per_page,
            }],
            identity: Identity::Key,
            heap_bytes: pages * 8192,
            estimated_rows: 0,
            binary: true,
            mask: None,
        }
    }

    #[test]
    fn chunks_cover_every_page_once_and_the_last_is_open() {
        let p = plan(25, 100.0);
        let chunks = p.chunks(1000, true);
        let bounds: Vec<_> = chunks.iter().map(|c| (c.first_page, c.last_page)).collect();
        assert_eq!(
            bounds,
            vec![(None, Some(10)), (Some(10), Some(20)), (Some(20), None)]
        );
        assert_eq!(
            chunks.iter().map(|c| c.chunk).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // Empty table, or a server without TID range scans: one open chunk.
        assert_eq!(plan(0, 100.0).chunks(1000, true).len(), 1);
        assert_eq!(plan(25, 100.0).chunks(1000, false).len(), 1);
        assert_eq!(plan(25, 100.0).chunks(1000, false)[0].last_page, None);
    }

    #[test]
    fn statements_are_exact() {
        let p = plan(25, 100.0);
        let chunks = p.chunks(1000, true);
        assert_eq!(
            p.copy_out(&chunks[1]),
            "COPY (SELECT \"id\", \"Note\" FROM ONLY \"Shop\".\"order lines\" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid AND (id > 0)) TO STDOUT (FORMAT binary)"
        );
        let mut whole = p.clone();
        whole.row_filter = None;
        assert_eq!(
            whole.copy_out(&whole.chunks(1000, false)[0]),
            "COPY \"Shop\".\"order lines\" (\"id\", \"Note\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            p.copy_in(),
            "COPY \"Shop\".\"order lines\" (\"id\", \"Note\") FROM STDIN (FORMAT binary)"
        );
    }
}
