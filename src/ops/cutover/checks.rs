//! Go/no-go: what must hold before a side is fenced. Each check has a
//! name, the value found and whether it allows going on.

use serde::Serialize;
use tokio_postgres::Client;

use crate::event::QualifiedName;
use crate::lsn::Lsn;

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// What was found.
    pub value: String,
    /// The limit, where there is one.
    pub limit: Option<String>,
    /// Whether it allows going on.
    pub go: bool,
}

impl Check {
    pub(super) fn new(name: &'static str, value: impl Into<String>, go: bool) -> Check {
        Check {
            name,
            value: value.into(),
            limit: None,
            go,
        }
    }

    pub(super) fn limit(mut self, limit: impl Into<String>) -> Check {
        self.limit = Some(limit.into());
        self
    }
}

/// The active slot's state on the side being left.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// A session streams from it.
    pub active: bool,
    /// The server's WAL position minus the slot's confirmed position.
    pub lag_bytes: u64,
    /// The confirmed position.
    pub confirmed: Lsn,
    /// `wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: String,
}

/// The slot `slot` on `client`'s server (`None`: no such slot).
pub async fn slot_state(
    client: &Client,
    slot: &str,
) -> Result<Option<SlotState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT active, coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8, \
                    coalesce(confirmed_flush_lsn, '0/0')::text, coalesce(wal_status, 'unknown') \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotState {
        active: r.get(0),
        lag_bytes: r.get::<_, i64>(1).unsigned_abs(),
        confirmed: r.get::<_, String>(2).parse().unwrap_or(Lsn::ZERO),
        wal_status: r.get(3),
    }))
}

/// Invalid indexes (a failed CREATE INDEX CONCURRENTLY) on `tables`.
pub async fn invalid_indexes(
    client: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let rows = client
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_catalog.pg_index i \
             WHERE NOT i.indisvalid AND i.indrelid IN \
               (SELECT pg_catalog.to_regclass(n) FROM unnest($1::text[]) n) ORDER BY 1",
            &[&names],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether the way back is possible on `client`'s side (the side taking
/// over): logical WAL, a free replication slot, the right to create a
/// publication. `None` when it is; the reasons otherwise.
pub async fn reverse_source_ready(
    client: &Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), \
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_catalog.pg_replication_slots)::int, \
                    pg_catalog.has_database_privilege(current_database(), 'CREATE') \
                      OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), \
                    (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await?;
    let (wal_level, free, create, replication): (String, i32, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut why = Vec::new();
    if wal_level != "logical" {
        why.push(format!("wal_level is {wal_level}, not logical"));
    }
    if free < 1 {
        why.push("no free replication slot (max_replication_slots)".to_owned());
    }
    if !create {
        why.push("teal's role may not create a publication (CREATE on the database)".to_owned());
    }
    if !replication {
        why.push("teal's role has no REPLICATION attribute".to_owned());
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}

/// Whether teal's role can apply to `tables` on `client`'s side (the side
/// being left, which the way back writes to) and mark its commits with a
/// replication origin (so that they do not echo). `None` when it can.
pub async fn reverse_target_ready(
    client: &Client,
    tables: &[QualifiedName],
) -> Result<Option<String>, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let row = client
        .query_one(
            "SELECT coalesce(string_agg(n, ', ' ORDER BY n) FILTER (WHERE NOT \
                      pg_catalog.has_table_privilege(n, 'INSERT, UPDATE, DELETE')), ''), \
                    (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
                      OR pg_catalog.has_function_privilege('pg_catalog.pg_replication_origin_session_setup(text)', 'EXECUTE') \
             FROM unnest($1::text[]) n",
            &[&names],
        )
        .await?;
    let (not_writable, origins): (String, bool) = (row.get(0), row.get(1));
    let mut why = Vec::new();
    if !not_writable.is_empty() {
        why.push(format!("teal's role may not write {not_writable}"));
    }
    if !origins {
        why.push("teal's role may not use replication origins".to_owned());
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}
