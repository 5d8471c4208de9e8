//! `--binary auto`: whether pgoutput's binary format is safe for this
//! stream, decided at each connection.
//!
//! The walsender sends every column of every table in one format per
//! session, so the choice is the session's: binary only when every column
//! of every selected published table has a built-in type (OID below 16384:
//! the same type on every server), not an array (set-based statements
//! carry a column as an array, and arrays of arrays do not exist: an array
//! column goes set-based only as text), that is the same on green, blue and
//! green run the same major version (the binary send formats teal relies
//! on are those of one release), nothing is masked (masking reads text)
//! and there is no Kafka sink (its records are typed JSON made from text
//! values). Anything else, or a catalog that cannot be read, means text. A
//! type changed later in the session (DDL) is caught by apply's type
//! check, and the next connection decides again.

use crate::apply::FIRST_NORMAL_OID;
use crate::event::QualifiedName;
use crate::ops::stream::StreamConfig;
use crate::session::connect_plain;

/// Whether binary values are safe for `config`'s stream now (see the
/// module documentation); logs the decision and its reason.
pub async fn safe(config: &StreamConfig) -> bool {
    match why_not(config).await {
        None => {
            tracing::info!(
                "column values in binary (--binary auto: every published column's type is built in and the same on both sides)"
            );
            true
        }
        Some(reason) => {
            tracing::info!(reason, "column values as text (--binary auto)");
            false
        }
    }
}

async fn why_not(config: &StreamConfig) -> Option<String> {
    if config.assembler.mask.is_some() {
        return Some("masking reads text".into());
    }
    if config.kafka.is_some() {
        return Some("the Kafka audit stream's records are typed from text values".into());
    }
    let connect = |conninfo, side: &'static str| async move {
        connect_plain(conninfo, "teal")
            .await
            .map_err(|e| format!("{side}: {}", crate::error::Report(&e)))
    };
    let blue = match connect(&config.source.conninfo, "blue").await {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    let green = match connect(&config.apply.target, "green").await {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    const MAJOR: &str = "SELECT current_setting('server_version_num')::int / 10000";
    let (b, g) = match (
        blue.query_one(MAJOR, &[]).await,
        green.query_one(MAJOR, &[]).await,
    ) {
        (Ok(b), Ok(g)) => (b.get::<_, i32>(0), g.get::<_, i32>(0)),
        _ => return Some("the servers' versions could not be read".into()),
    };
    if b != g {
        return Some(format!("blue runs PostgreSQL {b}, green {g}"));
    }
    if b < 14 {
        return Some(format!("blue runs PostgreSQL {b}"));
    }
    // No schema is named "": without an own schema, nothing is left out.
    let own_schema = config.assembler.own_schema.as_deref().unwrap_or("");
    let tables: Vec<String> = match crate::ops::verify::schema::published_tables(
        &blue,
        &config.source.publications,
        &config.assembler.tables,
        own_schema,
    )
    .await
    {
        Ok(t) => t.iter().map(QualifiedName::quoted).collect(),
        Err(_) => return Some("the published tables could not be read".into()),
    };
    const COLUMNS: &str = "SELECT u.n, a.attname::text, a.atttypid::oid, t.typcategory = 'A' \
        FROM unnest($1::text[]) u(n) \
        JOIN pg_catalog.pg_attribute a ON a.attrelid = pg_catalog.to_regclass(u.n) \
        JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
        WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''";
    let (b, g) = match (
        blue.query(COLUMNS, &[&tables]).await,
        green.query(COLUMNS, &[&tables]).await,
    ) {
        (Ok(b), Ok(g)) => (b, g),
        _ => return Some("the columns' types could not be read".into()),
    };
    let on_green: std::collections::HashMap<(String, String), u32> =
        g.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    for r in &b {
        let (table, column, oid): (String, String, u32) = (r.get(0), r.get(1), r.get(2));
        if oid >= FIRST_NORMAL_OID {
            return Some(format!("{table}.{column} has a type that is not built in"));
        }
        // Set-based statements carry a column as an array: an array column
        // goes set-based only as text (in binary, row by row).
        if r.get::<_, bool>(3) {
            return Some(format!("{table}.{column} is an array"));
        }
        match on_green.get(&(table.clone(), column.clone())) {
            None => return Some(format!("{table}.{column} is not on green")),
            Some(g) if *g != oid => {
                return Some(format!("{table}.{column} has another type on green"));
            }
            Some(_) => {}
        }
    }
    None
}
