//! Green's tables, and how each blue relation maps onto one.
//!
//! ```text
//! blue Relation (columns by name, replica identity) ──map──▶ green table (by schema.name)
//!      every blue column must exist on green, not generated, with a compatible type;
//!      green may have extra columns (their defaults apply) and extra generated columns
//! ```
//!
//! Type compatibility: the same type (same built-in OID, or the same
//! schema-qualified name for user types; domains compare by their base type),
//! or another type of the same category (`int4` -> `int8`, `varchar` -> `text`,
//! `timestamp` -> `timestamptz`): values travel as text, so widening works and
//! is logged once. Anything else stops teal before a row is written.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::event::{QualifiedName, Relation, ReplicaIdentity, quote_ident};

/// Built-in type OIDs are below this on every server (`FirstNormalObjectId`).
pub(crate) const FIRST_NORMAL_OID: u32 = 16384;

/// A blue relation does not fit green.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriftError {
    /// Green lacks the table.
    #[error(
        "green has no table {table}, which blue publishes; create it on green (for example from blue: pg_dump --schema-only -t '{table}' | psql <green>) and restart teal"
    )]
    MissingTable {
        /// The table.
        table: QualifiedName,
    },
    /// Green lacks a column blue sends.
    #[error(
        "green table {table} has no column {column:?}, which blue sends; run on green: ALTER TABLE {quoted} ADD COLUMN {column_quoted} {type_sql}; then restart teal"
    )]
    MissingColumn {
        /// The table.
        table: QualifiedName,
        /// Quoted table name.
        quoted: String,
        /// The column.
        column: String,
        /// Quoted column name.
        column_quoted: String,
        /// Blue's type, as SQL.
        type_sql: String,
    },
    /// A column is generated on green but blue sends values for it.
    #[error(
        "column {column:?} of green table {table} is generated, but blue sends values for it; make it an ordinary column on green or leave it out of blue's publication (column list)"
    )]
    GeneratedColumn {
        /// The table.
        table: QualifiedName,
        /// The column.
        column: String,
    },
    /// Green's column type cannot take blue's values.
    #[error(
        "column {column:?} of {table} is {green_type} on green but {blue_type} on blue; change green's column type (ALTER TABLE ... ALTER COLUMN ... TYPE {blue_type}) and restart teal"
    )]
    TypeMismatch {
        /// The table.
        table: QualifiedName,
        /// The column.
        column: String,
        /// Blue's type.
        blue_type: String,
        /// Green's type.
        green_type: String,
    },
}

/// How rows of a table are found on green for updates and deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// Equality on these blue columns (the replica identity, or green's
    /// primary key when blue sends whole old rows).
    Columns(Vec<usize>),
    /// No usable key (REPLICA IDENTITY FULL, no primary key on green): the
    /// whole old row identifies one matching row.
    FullRow,
    /// Blue cannot identify rows of this table (REPLICA IDENTITY NOTHING, or
    /// DEFAULT without a primary key).
    None,
}

/// A blue relation mapped onto its green table.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    /// Blue's definition this mapping was made for.
    pub(crate) relation: Arc<Relation>,
    /// `"schema"."table"`.
    pub(crate) table: String,
    /// Quoted green column name for each blue column, in blue's order.
    pub(crate) columns: Vec<String>,
    /// How to find a row.
    pub(crate) key: Key,
    /// Blue columns forming a key of green that finds one row at any
    /// moment (its primary key, else a unique index on NOT NULL columns;
    /// never a DEFERRABLE one), when green has one they cover.
    pub(crate) green_pk: Option<Vec<usize>>,
    /// For each blue column, green's type without modifier when a text value
    /// cast to it goes through the type's input function (`'v'::text::T`);
    /// `None` when a cast function from text exists instead (`name`,
    /// `"char"`, `regclass`, `xml`...), whose result may differ.
    pub(crate) text_casts: Vec<Option<String>>,
    /// For each blue column, green's type without modifier
    /// (`format_type(oid, -1)`, so `"bit"`, `bpchar`: no length a cast
    /// would cut to): key parameters are cast to it, so a composite key
    /// compares as its own type, never as an anonymous `record`.
    pub(crate) types: Vec<String>,
    /// For each blue column, whether green's `col::text` is the type's
    /// output text, as blue sends it: false where a cast function to text
    /// exists instead (`boolean` gives `true` where blue sends `t`,
    /// `character` drops trailing blanks, `inet` adds a /32), so a
    /// whole-row match compares such a column with its type's `=`.
    pub(crate) text_match: Vec<bool>,
    /// Green runs triggers or rules on this table (or its partitions) when
    /// teal applies (enabled ALWAYS or REPLICA): they may read other
    /// tables, so changes are applied in blue's order, never regrouped.
    pub(crate) fires_on_apply: bool,
    /// For each blue column, whether green's is an identity column
    /// GENERATED ALWAYS: inserts say OVERRIDING SYSTEM VALUE, updates
    /// match it rather than set it (see [`crate::apply::sql::SetColumn`]).
    pub(crate) identity_always: Vec<bool>,
    /// For each blue column, green's type OID when a binary value from blue
    /// is one green's column takes as it is: the same built-in type on both
    /// sides (OIDs below 16384 name the same type everywhere), not an
    /// array (a set-based statement carries the column as an array).
    pub(crate) binary_elems: Vec<Option<u32>>,
}

impl Mapping {
    /// Whether an INSERT must say OVERRIDING SYSTEM VALUE.
    pub(crate) fn overrides_identity(&self) -> bool {
        self.identity_always.contains(&true)
    }

    /// The new values of blue columns `set` (indexes) as an UPDATE takes them.
    pub(crate) fn set_columns(&self, set: &[usize]) -> Vec<super::sql::SetColumn<'_>> {
        set.iter()
            .map(|&i| super::sql::SetColumn {
                name: self.columns[i].as_str(),
                always: self.identity_always[i].then(|| self.types[i].as_str()),
            })
            .collect()
    }

    /// A column an UPDATE may set to itself when nothing else is left to
    /// set (the first that is not an identity column GENERATED ALWAYS;
    /// the first column in a table of nothing else, which green refuses
    /// with its own message).
    pub(crate) fn noop_column(&self) -> &str {
        self.identity_always
            .iter()
            .position(|a| !a)
            .map_or(self.columns[0].as_str(), |i| self.columns[i].as_str())
    }

    /// Green's column names, quoted, in blue's order (for statement text).
    pub(crate) fn column_list(&self) -> Vec<&str> {
        self.columns.iter().map(String::as_str).collect()
    }

    /// The table's name, for messages.
    pub(crate) fn name(&self) -> &QualifiedName {
        &self.relation.name
    }
}

struct GreenColumn {
    name: String,
    type_oid: u32,
    type_sql: String,
    /// `format_type(oid, -1)`.
    type_plain: String,
    /// `col::text` is the output function's text.
    text_match: bool,
    generated: bool,
    identity_always: bool,
    category: String,
    base_type: QualifiedName,
    text_cast: Option<String>,
}

/// Mappings by blue relation version (a new Relation message is a new version).
#[derive(Default)]
pub(crate) struct Targets {
    /// By blue relation version.
    mappings: HashMap<u64, Arc<Mapping>>,
}

impl Targets {
    /// Forgets green's metadata (after green's schema may have changed).
    pub(crate) fn clear(&mut self) {
        self.mappings.clear();
    }

    /// The blue relations mapped so far.
    pub(crate) fn relations(&self) -> Vec<Arc<Relation>> {
        self.mappings
            .values()
            .map(|m| Arc::clone(&m.relation))
            .collect()
    }

    /// The mapping for `rel`, reading green's catalog the first time.
    pub(crate) async fn mapping(
        &mut self,
        client: &Client,
        rel: &Arc<Relation>,
    ) -> Result<Arc<Mapping>, MapError> {
        let key = rel.version;
        if let Some(m) = self.mappings.get(&key) {
            return Ok(Arc::clone(m));
        }
        let mapping = Arc::new(map_relation(client, rel).await?);
        self.mappings.insert(key, Arc::clone(&mapping));
        Ok(mapping)
    }
}

/// Reading green's catalog failed, or the table does not fit.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Green's schema does not fit blue's.
    #[error(transparent)]
    Drift(Box<DriftError>),
    /// The catalog query failed.
    #[error("reading green's catalog for {table}")]
    Catalog {
        /// The table.
        table: QualifiedName,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl MapError {
    /// What kind of failure it is (see [`crate::error::policy`]).
    pub fn kind(&self) -> crate::error::Kind {
        match self {
            MapError::Drift(_) => crate::error::Kind::SchemaDrift,
            MapError::Catalog { source, .. } => crate::error::postgres_kind(source),
        }
    }
}

impl From<DriftError> for MapError {
    fn from(e: DriftError) -> Self {
        MapError::Drift(Box::new(e))
    }
}

/// Whether `rel` still fits green, reading green's catalog afresh.
pub(crate) async fn check(client: &Client, rel: &Arc<Relation>) -> Result<(), MapError> {
    map_relation(client, rel).await.map(drop)
}

async fn map_relation(client: &Client, rel: &Arc<Relation>) -> Result<Mapping, MapError> {
    let catalog = |source| MapError::Catalog {
        table: rel.name.clone(),
        source,
    };
    let table = client
        .query_opt(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&rel.name.namespace, &rel.name.name],
        )
        .await
        .map_err(catalog)?
        .ok_or_else(|| DriftError::MissingTable {
            table: rel.name.clone(),
        })?;
    let oid: u32 = table.get(0);
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', \
                    bt.typcategory::text, bn.nspname::text, bt.typname::text, \
                    CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_cast c \
                                          WHERE c.castsource = 'pg_catalog.text'::pg_catalog.regtype \
                                            AND c.casttarget IN (t.oid, bt.oid) AND c.castmethod = 'f') \
                         THEN format_type(a.atttypid, -1) END, \
                    format_type(a.atttypid, -1), \
                    NOT EXISTS (SELECT 1 FROM pg_catalog.pg_cast c \
                                WHERE c.casttarget = 'pg_catalog.text'::pg_catalog.regtype \
                                  AND c.castsource IN (t.oid, bt.oid) AND c.castmethod = 'f'), \
                    a.attidentity = 'a' \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(catalog)?;
    let green: Vec<GreenColumn> = rows
        .iter()
        .map(|r| GreenColumn {
            name: r.get(0),
            type_oid: r.get(1),
            type_sql: r.get(2),
            generated: r.get(3),
            category: r.get(4),
            base_type: QualifiedName {
                namespace: r.get(5),
                name: r.get(6),
            },
            text_cast: r.get(7),
            type_plain: r.get(8),
            text_match: r.get(9),
            identity_always: r.get(10),
        })
        .collect();
    let unique_keys = immediate_unique_keys(client, oid).await.map_err(catalog)?;
    let fires_on_apply: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                            WHERE (t.tgrelid = $1 OR t.tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree($1::pg_catalog.oid::pg_catalog.regclass))) \
                              AND t.tgenabled IN ('A', 'R')) \
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r \
                            WHERE r.ev_class = $1 AND r.rulename <> '_RETURN' AND r.ev_enabled IN ('A', 'R'))",
            &[&oid],
        )
        .await
        .map_err(catalog)?
        .get(0);
    let blue_types = blue_type_names(client, rel).await.map_err(catalog)?;

    let mut columns = Vec::with_capacity(rel.columns.len());
    let mut text_casts = Vec::with_capacity(rel.columns.len());
    let mut types = Vec::with_capacity(rel.columns.len());
    let mut text_match = Vec::with_capacity(rel.columns.len());
    let mut identity_always = Vec::with_capacity(rel.columns.len());
    let mut binary_elems = Vec::with_capacity(rel.columns.len());
    for (i, col) in rel.columns.iter().enumerate() {
        let Some(g) = green.iter().find(|g| g.name == col.name) else {
            return Err(DriftError::MissingColumn {
                table: rel.name.clone(),
                quoted: rel.name.quoted(),
                column: col.name.clone(),
                column_quoted: quote_ident(&col.name),
                type_sql: blue_types[i].0.clone(),
            }
            .into());
        };
        if g.generated {
            return Err(DriftError::GeneratedColumn {
                table: rel.name.clone(),
                column: col.name.clone(),
            }
            .into());
        }
        check_type(rel, i, g, &blue_types[i])?;
        columns.push(quote_ident(&g.name));
        text_casts.push(g.text_cast.clone());
        types.push(g.type_plain.clone());
        text_match.push(g.text_match);
        identity_always.push(g.identity_always);
        binary_elems.push(
            (col.type_oid == g.type_oid && g.type_oid < FIRST_NORMAL_OID && g.category != "A")
                .then_some(g.type_oid),
        );
    }
    // The first of green's keys whose columns blue sends.
    let green_pk = unique_keys.iter().find_map(|key| {
        key.iter()
            .map(|name| rel.columns.iter().position(|c| &c.name == name))
            .collect::<Option<Vec<_>>>()
    });
    let identity: Vec<usize> = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect();
    let key = match rel.replica_identity {
        ReplicaIdentity::Full => match &green_pk {
            Some(pk) => Key::Columns(pk.clone()),
            None => Key::FullRow,
        },
        ReplicaIdentity::Default | ReplicaIdentity::Index if !identity.is_empty() => {
            Key::Columns(identity)
        }
        _ => Key::None,
    };
    Ok(Mapping {
        relation: Arc::clone(rel),
        table: rel.name.quoted(),
        columns,
        key,
        green_pk,
        text_casts,
        types,
        text_match,
        fires_on_apply,
        identity_always,
        binary_elems,
    })
}

/// Green's keys that find one row at any moment: the primary key, then
/// unique indexes on NOT NULL columns (fewest columns first), each as its
/// column names in index order; only immediate ones without predicate or
/// expressions. A DEFERRABLE key may hold duplicates inside a transaction
/// (blue's `UPDATE t SET id = id + 1` passes through them), so rows are
/// never looked up by one.
async fn immediate_unique_keys(
    client: &Client,
    oid: u32,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT array_agg(a.attname::text ORDER BY k.n) \
             FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL AND k.n <= i.indnkeyatts \
             GROUP BY i.indexrelid, i.indisprimary \
             HAVING i.indisprimary OR bool_and(a.attnotnull) \
             ORDER BY i.indisprimary DESC, count(*), i.indexrelid",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Blue's type of each column as (SQL text, category, base type name) seen
/// from green: built-in OIDs are the same on every server, user types come
/// by name from blue's Type messages.
async fn blue_type_names(
    client: &Client,
    rel: &Relation,
) -> Result<Vec<(String, Option<String>, Option<QualifiedName>)>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(rel.columns.len());
    for col in &rel.columns {
        if col.type_oid < FIRST_NORMAL_OID {
            let row = client
                .query_opt(
                    "SELECT format_type($1, $2), t.typcategory::text, n.nspname::text, t.typname::text \
                     FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
                     WHERE t.oid = $1",
                    &[&col.type_oid, &col.type_modifier],
                )
                .await?;
            out.push(match row {
                Some(r) => (
                    r.get(0),
                    Some(r.get(1)),
                    Some(QualifiedName {
                        namespace: r.get(2),
                        name: r.get(3),
                    }),
                ),
                None => (format!("type {}", col.type_oid), None, None),
            });
        } else {
            let name = col.type_name.clone();
            let sql = name
                .as_ref()
                .map_or_else(|| format!("type {}", col.type_oid), QualifiedName::quoted);
            let category = match &name {
                Some(n) => client
                    .query_opt(
                        "SELECT t.typcategory::text FROM pg_catalog.pg_type t \
                         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
                         WHERE n.nspname = $1 AND t.typname = $2",
                        &[&n.namespace, &n.name],
                    )
                    .await?
                    .map(|r| r.get(0)),
                None => None,
            };
            out.push((sql, category, name));
        }
    }
    Ok(out)
}

fn check_type(
    rel: &Relation,
    i: usize,
    green: &GreenColumn,
    blue: &(String, Option<String>, Option<QualifiedName>),
) -> Result<(), MapError> {
    let col = &rel.columns[i];
    let same = col.type_oid == green.type_oid
        || blue.2.as_ref() == Some(&green.base_type)
        || (col.type_oid >= FIRST_NORMAL_OID && col.type_name.as_ref() == Some(&green.base_type));
    if same {
        return Ok(());
    }
    let compatible = blue.1.as_deref() == Some(green.category.as_str()) && green.category != "U";
    if compatible {
        tracing::warn!(
            table = %rel.name,
            column = %col.name,
            blue_type = %blue.0,
            green_type = %green.type_sql,
            "column types differ within one category; values are converted by green's input function"
        );
        return Ok(());
    }
    Err(DriftError::TypeMismatch {
        table: rel.name.clone(),
        column: col.name.clone(),
        blue_type: blue.0.clone(),
        green_type: green.type_sql.clone(),
    }
    .into())
}
