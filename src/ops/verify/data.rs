//! Comparing the rows at one exact point of the stream.
//!
//! ```text
//! green: verify_points 'hold' ──(apply pauses at a boundary: 'holding')
//! blue:  temporary slot, exported snapshot S at consistent point L
//! green: 'at' L ──(apply goes on with every commit before L, pauses: 'reached')
//!        snapshot G exported by a session of verify's; 'released' (apply goes on)
//! each table: a 64-bit hash of each row's text summed in S on blue and
//!        in G on green (exact sums: no sort; no row leaves the servers when
//!        the sums agree); a table whose sums differ is summed again in chunks, the differing chunks'
//!        rows read as (key, row hash) on both sides, and every differing
//!        key is named
//! ```
//!
//! Exact: S holds exactly the transactions blue committed before L, and
//! green, paused at `reached`, holds exactly those too (apply stopped
//! before the first commit at or past L, or when blue's position passed L
//! with nothing pending), so G shows what S shows, whatever runs on blue
//! and whatever apply does after `released`. See `apply::point`.
//!
//! A table whose sums differ is summed again in chunks of about
//! `--chunk-rows` rows (by a hash of the key), and only the differing
//! chunks' keys and row hashes are read, streamed in chunk order and
//! compared one chunk at a time: memory stays bounded by a chunk whatever
//! the table's size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::event::{QualifiedName, quote_ident};
use crate::lsn::Lsn;
use crate::source::{ReplicationClient, SnapshotAction};
use crate::store::Store;

use super::{VerifyConfig, VerifyError};

/// How long verify waits for the running stream at each step.
const STEP_WAIT: Duration = Duration::from_secs(30);
/// Differences listed per table (the count is always complete).
pub const MAX_LISTED: usize = 1000;
/// A set of rows' hashes (`h`: 64 bits of each row's text,
/// `hashtextextended`) as one value: their exact sum (`sum(bigint)` is a
/// numeric, so nothing overflows). Order-independent, so no sort and no
/// collation. A changed row goes unnoticed only when its new hash equals
/// its old one (about 2^-64). Each row's text is made once: two hashes of
/// the same text made it twice (3 M rows: 0.6 s against 1.1 s with two,
/// 3.4 s with md5).
const HASH_SUM: &str = "coalesce(sum(h), 0)";

/// One differing row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowDifference {
    /// The row's primary key as JSON (`null` for a table without one).
    pub key: serde_json::Value,
    /// `missing_on_green`, `extra_on_green` or `different`.
    pub kind: &'static str,
    /// Blue's row (`--show-values` only: rows are often personal data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blue: Option<serde_json::Value>,
    /// Green's row (`--show-values` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub green: Option<serde_json::Value>,
}

/// One table's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TableResult {
    /// `schema.table`.
    pub table: String,
    /// Rows on blue at the point.
    pub rows_blue: i64,
    /// Rows on green at the point.
    pub rows_green: i64,
    /// Chunks the rows were summed in once the table's sums differed
    /// (0: they did not).
    pub chunks: i64,
    /// Of those, the chunks whose rows were read and compared one by one.
    pub chunks_differing: i64,
    /// Differing rows (all of them counted).
    pub differences_total: usize,
    /// The first [`MAX_LISTED`] of them.
    pub differences: Vec<RowDifference>,
    /// Compared as blue's masked rows (`--mask`): its keys are masked
    /// values, and `teal repair` refuses it (it would copy blue's rows).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub masked: bool,
}

/// Rows `(chunk, key, row hash)` in chunk order, read one chunk at a time.
struct ChunkReader {
    rows: std::pin::Pin<Box<tokio_postgres::RowStream>>,
    /// The first row of the next chunk, once read.
    pending: Option<(i64, Option<String>, i64)>,
}

impl ChunkReader {
    fn new(rows: tokio_postgres::RowStream) -> ChunkReader {
        ChunkReader {
            rows: Box::pin(rows),
            pending: None,
        }
    }

    /// The rows of `chunk` (chunks asked for in increasing order, each
    /// once), as (key, row hash).
    async fn chunk(
        &mut self,
        chunk: i64,
    ) -> Result<Vec<(Option<String>, i64)>, tokio_postgres::Error> {
        use futures_util::StreamExt;
        let mut rows = Vec::new();
        loop {
            let next = match self.pending.take() {
                Some(row) => row,
                None => match self.rows.next().await.transpose()? {
                    Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                    None => return Ok(rows),
                },
            };
            if next.0 > chunk {
                self.pending = Some(next);
                return Ok(rows);
            }
            // A chunk before this one was taken already: not possible in
            // chunk order, and skipped if it were.
            if next.0 == chunk {
                rows.push((next.1, next.2));
            }
        }
    }
}

/// Both sides' snapshots at one point of the stream, held while the
/// tables are read.
pub struct Point {
    /// Blue's consistent point.
    pub lsn: Lsn,
    blue_snapshot: String,
    green_snapshot: String,
    /// Holds S (and the temporary slot) while open.
    _blue_holder: ReplicationClient,
    /// Holds G (its transaction) while open.
    _green_holder: Client,
}

fn green_sql(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> VerifyError {
    move |source| VerifyError::Green { context, source }
}

/// Waits until the request's state is one of `states`; its state then.
async fn wait_state(
    green: &Client,
    table: &str,
    id: i64,
    states: &[&str],
) -> Result<Option<String>, VerifyError> {
    let deadline = Instant::now() + STEP_WAIT;
    loop {
        let state: String = green
            .query_one(&format!("SELECT state FROM {table} WHERE id = $1"), &[&id])
            .await
            .map_err(green_sql("reading the verify request"))?
            .get(0);
        if states.contains(&state.as_str()) {
            return Ok(Some(state));
        }
        if state == "missed" || Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The running stream paused exactly at blue's point, until
/// [`Held::release`] (or its hold limit).
pub struct Held {
    /// Blue's consistent point.
    pub lsn: Lsn,
    /// Blue's exported snapshot at it.
    pub blue_snapshot: String,
    id: i64,
    table: String,
    holder: ReplicationClient,
}

impl Held {
    /// Lets the stream go on; blue's snapshot stays held by the returned
    /// connection (drop it when done reading).
    pub async fn release(self, green: &Client) -> Result<ReplicationClient, VerifyError> {
        green
            .execute(
                &format!(
                    "UPDATE {} SET state = 'released', updated_at = now() WHERE id = $1",
                    self.table
                ),
                &[&self.id],
            )
            .await
            .map_err(green_sql("letting the running teal stream go on"))?;
        Ok(self.holder)
    }
}

/// Takes the point: see the module documentation.
pub async fn take_point(
    config: &VerifyConfig,
    blue: &Client,
    green: &Client,
) -> Result<Point, VerifyError> {
    let held = hold_at_point(config, blue, green).await?;
    let green_holder = crate::session::connect_plain(&config.target, "teal verify")
        .await
        .map_err(|source| VerifyError::Connect {
            side: "green",
            source,
        })?;
    let green_snapshot: String = {
        green_holder
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(green_sql("opening green's snapshot"))?;
        green_holder
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await
            .map_err(green_sql("exporting green's snapshot"))?
            .get(0)
    };
    let (lsn, blue_snapshot) = (held.lsn, held.blue_snapshot.clone());
    let holder = held.release(green).await?;
    Ok(Point {
        lsn,
        blue_snapshot,
        green_snapshot,
        _blue_holder: holder,
        _green_holder: green_holder,
    })
}

/// Pauses the running stream exactly at a new point of blue's (see the
/// module documentation), holding blue's snapshot there.
pub async fn hold_at_point(
    config: &VerifyConfig,
    blue: &Client,
    green: &Client,
) -> Result<Held, VerifyError> {
    let store = Store::new(config.schema.clone());
    let table = format!("{}.verify_points", store.quoted());
    let id: i64 = match green
        .query_one(
            &format!("INSERT INTO {table} (slot, state) VALUES ($1, 'hold') RETURNING id"),
            &[&config.slot],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(VerifyError::NoPoint(format!(
                "no running teal stream: green has no {table} (teal stream of this version has not run on this green, or --schema differs)"
            )));
        }
        Err(e) => return Err(green_sql("asking the running teal stream to hold")(e)),
    };
    let missed = format!("UPDATE {table} SET state = 'missed', updated_at = now() WHERE id = $1");
    let give_up = |why: String| {
        let missed = missed.clone();
        async move {
            let _ = green.execute(&missed, &[&id]).await;
            VerifyError::NoPoint(why)
        }
    };
    if wait_state(green, &table, id, &["holding"]).await?.is_none() {
        return Err(give_up(format!(
            "no running teal stream on slot {:?} paused within {STEP_WAIT:?} (is teal stream running, with this green and --schema?)",
            config.slot
        ))
        .await);
    }
    let mut holder = ReplicationClient::connect(&config.source)
        .await
        .map_err(|e| VerifyError::Blue(e.to_string()))?;
    let created = holder
        .create_temporary_slot(&format!("teal_verify_{id}"), SnapshotAction::Export)
        .await
        .map_err(|e| VerifyError::Blue(e.to_string()))?;
    let Some(blue_snapshot) = created.snapshot_name else {
        return Err(give_up("blue exported no snapshot".into()).await);
    };
    let lsn = created.consistent_point;
    green
        .execute(
            &format!(
                "UPDATE {table} SET state = 'at', lsn = $2::text::pg_lsn, updated_at = now() WHERE id = $1"
            ),
            &[&id, &lsn.to_string()],
        )
        .await
        .map_err(green_sql("giving the running teal stream blue's point"))?;
    // A message past the point tells apply at once that blue is past it.
    let _ = blue
        .execute(
            "SELECT pg_catalog.pg_logical_emit_message(false, 'teal.verify', $1::text)",
            &[&id.to_string()],
        )
        .await;
    if wait_state(green, &table, id, &["reached"]).await?.is_none() {
        return Err(give_up(format!(
            "the running teal stream did not reach blue's point {lsn} within {STEP_WAIT:?}"
        ))
        .await);
    }
    Ok(Held {
        lsn,
        blue_snapshot,
        id,
        table,
        holder,
    })
}

/// A session reading in `snapshot`, with the canonical text formats.
pub async fn in_snapshot(client: &Client, snapshot: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&crate::config::canonical_format_statements())
        .await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            snapshot.replace('\'', "''")
        ))
        .await
}

/// Opens blue's and green's reading sessions at `point`.
pub async fn sessions(
    config: &VerifyConfig,
    point: &Point,
) -> Result<(Client, Client), VerifyError> {
    let connect = |conninfo, side| async move {
        crate::session::connect_plain(conninfo, "teal verify")
            .await
            .map_err(|source| VerifyError::Connect { side, source })
    };
    let b = connect(&config.source, "blue").await?;
    let g = connect(&config.target, "green").await?;
    in_snapshot(&b, &point.blue_snapshot)
        .await
        .map_err(|e| VerifyError::Blue(format!("importing blue's snapshot: {e}")))?;
    in_snapshot(&g, &point.green_snapshot)
        .await
        .map_err(green_sql("importing green's snapshot"))?;
    Ok((b, g))
}

/// `t`'s row whose primary key `key` equals the JSON key in `$1` (as
/// verify reports keys), typed by `table`'s row type, so the index is used
/// and composite keys compare as their types.
pub(super) fn by_key(table: &QualifiedName, key: &[String]) -> String {
    let cols = |alias: &str| {
        key.iter()
            .map(|c| format!("{alias}.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "({}) = (SELECT {} FROM pg_catalog.json_populate_record(NULL::{}, $1::text::json) r)",
        cols("t"),
        cols("r"),
        table.quoted()
    )
}

/// The columns blue sends (not generated) and its primary key, unquoted.
pub(super) async fn columns_and_key(
    blue: &Client,
    table: &QualifiedName,
) -> Result<(Vec<String>, Vec<String>), tokio_postgres::Error> {
    let q = table.quoted();
    let cols = blue
        .query(
            "SELECT attname::text FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
             ORDER BY attnum",
            &[&q],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let key = crate::session::primary_key_columns(
        blue,
        blue.query_one("SELECT $1::text::regclass::oid", &[&q])
            .await?
            .get(0),
    )
    .await?;
    Ok((cols, key))
}

/// Above this many columns a row is hashed as one text (`ROW(...)::text`)
/// rather than column by column (the chain of calls nests once per column).
const CHAINED_COLUMNS: usize = 100;

/// The SQL of a row's 64-bit hash, made of its columns' texts in
/// canonical formats (the columns blue sends, by name, in blue's order):
/// each column's text hashed (`hashtextextended`; a null is a constant),
/// and the hashes chained through `hashint8extended`, so a value moved to
/// another column or row changes the hash. Column by column, neither a
/// record nor its text is built: 3 M rows of four columns hash in 0.63 s
/// against 1.05 s as `ROW(...)::text` (PostgreSQL 15, one core).
///
/// A column's text is its type's output, through a cast to text, which is
/// the output function or, for the few types with their own cast, an
/// equally faithful one (`true` for `t`, `10.0.0.1/32` for `10.0.0.1`);
/// not for `character(n)` (the cast drops trailing blanks), whose output
/// is taken through `concat`. Text and varchar are hashed as they are.
async fn row_hash(blue: &Client, table: &QualifiedName) -> Result<String, tokio_postgres::Error> {
    let cols: Vec<(String, String)> = blue
        .query(
            "SELECT a.attname::text, coalesce(nullif(t.typbasetype, 0), t.oid)::regtype::text \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             AND a.attgenerated = '' ORDER BY a.attnum",
            &[&table.quoted()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if cols.len() > CHAINED_COLUMNS {
        return Ok(format!(
            "pg_catalog.hashtextextended(ROW({})::text, 0)",
            cols.iter()
                .map(|(c, _)| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut hash = "0::int8".to_owned();
    for (i, (col, base)) in cols.iter().enumerate() {
        let c = quote_ident(col);
        let text = match base.as_str() {
            "text" | "character varying" => c,
            "character" => format!("pg_catalog.concat({c})"),
            _ => format!("{c}::text"),
        };
        let one = format!("coalesce(pg_catalog.hashtextextended({text}, 0), 7)");
        hash = if i == 0 {
            format!("pg_catalog.hashint8extended({one}, 0)")
        } else {
            format!("pg_catalog.hashint8extended({hash} # {one}, 0)")
        };
    }
    Ok(hash)
}

/// Each table's estimated size on blue (heap and TOAST, bytes): what the
/// progress bars and `teal_verify_bytes` count in.
pub async fn sizes(
    blue: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<u64>, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let rows = blue
        .query(
            "SELECT coalesce(pg_catalog.pg_table_size(n::regclass), 0) FROM unnest($1::text[]) WITH ORDINALITY u(n, i) ORDER BY i",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, i64>(0).unsigned_abs())
        .collect())
}

/// Compares `table` in both snapshots, in chunks of about `chunk_rows`
/// rows when its sums differ; `step` says what it is doing.
pub async fn compare_table(
    blue: &Client,
    green: &Client,
    table: &QualifiedName,
    show_values: bool,
    chunk_rows: i64,
    step: &(dyn Fn(&'static str) + Sync),
) -> Result<TableResult, VerifyError> {
    let (_, key) = columns_and_key(blue, table)
        .await
        .map_err(|e| VerifyError::Blue(format!("reading {}'s columns: {e}", table)))?;
    let row_hash = row_hash(blue, table)
        .await
        .map_err(|e| VerifyError::Blue(format!("reading {}'s column types: {e}", table)))?;
    // Order-independent and without a sort: the row count and the exact
    // sum of the rows' hashes.
    step("summing");
    let sum = format!(
        "SELECT count(*), ({HASH_SUM})::text FROM (SELECT {row_hash} AS h FROM {} t) s",
        table.quoted()
    );
    let (b, g) =
        futures_util::future::join(blue.query_one(&sum, &[]), green.query_one(&sum, &[])).await;
    let b = b.map_err(|e| VerifyError::Blue(format!("summing {table}: {e}")))?;
    let g = g.map_err(green_sql("summing a table"))?;
    let (rows_blue, sum_blue): (i64, String) = (b.get(0), b.get(1));
    let (rows_green, sum_green): (i64, String) = (g.get(0), g.get(1));
    let mut result = TableResult {
        table: table.to_string(),
        rows_blue,
        rows_green,
        chunks: 0,
        chunks_differing: 0,
        differences_total: 0,
        differences: Vec::new(),
        masked: false,
    };
    if rows_blue == rows_green && sum_blue == sum_green {
        return Ok(result);
    }
    let key_sql = if key.is_empty() {
        "NULL::text".to_owned()
    } else {
        format!(
            "json_build_object({})::text",
            key.iter()
                .map(|k| format!(
                    "{}, {}",
                    crate::source::quote_sql_literal(k),
                    quote_ident(k)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    // Chunks of about chunk_rows rows by a hash of the key (of the row for
    // a keyless table): summed on the servers, then only the rows of the
    // chunks whose sums differ are read, as (key, row hash), streamed in
    // chunk order from both sides, one chunk at a time in memory.
    step("summing chunks");
    let chunks = (rows_blue.max(rows_green) / chunk_rows.max(1)).max(1);
    // (Expressions of the table's columns only: no alias of verify's can
    // meet a column's name.)
    let chunk_of = if key.is_empty() {
        format!("abs({row_hash} % {chunks})")
    } else {
        format!("abs(pg_catalog.hashtextextended({key_sql}, 0) % {chunks})")
    };
    let sums_sql = format!(
        "SELECT c, count(*), ({HASH_SUM})::text \
         FROM (SELECT {chunk_of} AS c, {row_hash} AS h FROM {} t) s GROUP BY c",
        table.quoted()
    );
    let (bs, gs) =
        futures_util::future::join(blue.query(&sums_sql, &[]), green.query(&sums_sql, &[])).await;
    let bs = bs.map_err(|e| VerifyError::Blue(format!("summing {table}'s chunks: {e}")))?;
    let gs = gs.map_err(green_sql("summing a table's chunks"))?;
    let sums = |rows: &[tokio_postgres::Row]| -> HashMap<i64, (i64, String)> {
        rows.iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect()
    };
    let (bsum, gsum) = (sums(&bs), sums(&gs));
    let mut differing: Vec<i64> = bsum
        .iter()
        .filter(|(c, s)| gsum.get(c) != Some(s))
        .map(|(c, _)| *c)
        .chain(gsum.keys().filter(|c| !bsum.contains_key(c)).copied())
        .collect();
    differing.sort_unstable();
    differing.dedup();
    result.chunks = chunks;
    result.chunks_differing = differing.len() as i64;
    step("comparing rows");
    let rows_sql = format!(
        "SELECT c, k, h FROM (SELECT {chunk_of} AS c, {key_sql} AS k, {row_hash} AS h \
         FROM {} t) s WHERE c = ANY($1) ORDER BY c",
        table.quoted()
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&differing];
    let (b, g) = futures_util::future::join(
        blue.query_raw(&rows_sql, params),
        green.query_raw(&rows_sql, params),
    )
    .await;
    let mut b =
        ChunkReader::new(b.map_err(|e| VerifyError::Blue(format!("reading {table}'s rows: {e}")))?);
    let mut g = ChunkReader::new(g.map_err(green_sql("reading a table's rows"))?);
    let mut push = |key: Option<String>, kind: &'static str| {
        result.differences_total += 1;
        if result.differences.len() < MAX_LISTED {
            result.differences.push(RowDifference {
                key: key
                    .and_then(|k| serde_json::from_str(&k).ok())
                    .unwrap_or(serde_json::Value::Null),
                kind,
                blue: None,
                green: None,
            });
        }
    };
    for chunk in &differing {
        let blue_rows = b
            .chunk(*chunk)
            .await
            .map_err(|e| VerifyError::Blue(format!("reading {table}'s rows: {e}")))?;
        let green_rows = g
            .chunk(*chunk)
            .await
            .map_err(green_sql("reading a table's rows"))?;
        if key.is_empty() {
            // No key: rows are their hashes, counted.
            let mut counts: HashMap<i64, i64> = HashMap::new();
            for (_, h) in blue_rows {
                *counts.entry(h).or_default() += 1;
            }
            for (_, h) in green_rows {
                *counts.entry(h).or_default() -= 1;
            }
            for n in counts.values() {
                for _ in 0..n.unsigned_abs() {
                    push(
                        None,
                        if *n > 0 {
                            "missing_on_green"
                        } else {
                            "extra_on_green"
                        },
                    );
                }
            }
        } else {
            let mut blue_rows: HashMap<Option<String>, i64> = blue_rows.into_iter().collect();
            let mut found: Vec<(Option<String>, &'static str)> = Vec::new();
            for (k, h) in green_rows {
                match blue_rows.remove(&k) {
                    None => found.push((k, "extra_on_green")),
                    Some(bh) if bh != h => found.push((k, "different")),
                    Some(_) => {}
                }
            }
            found.extend(blue_rows.into_keys().map(|k| (k, "missing_on_green")));
            found.sort();
            for (k, kind) in found {
                push(k, kind);
            }
        }
    }
    result.differences.sort_by_key(|d| d.key.to_string());
    if show_values && !key.is_empty() {
        // Found by key through green's and blue's indexes.
        let read = format!(
            "SELECT row_to_json(t.*)::text FROM {} t WHERE {}",
            table.quoted(),
            by_key(table, &key)
        );
        for d in &mut result.differences {
            let k = d.key.to_string();
            let row = |r: Option<tokio_postgres::Row>| {
                r.and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok())
            };
            d.blue = row(blue
                .query_opt(&read, &[&k])
                .await
                .map_err(|e| VerifyError::Blue(format!("reading a row of {table}: {e}")))?);
            d.green = row(green
                .query_opt(&read, &[&k])
                .await
                .map_err(green_sql("reading a row"))?);
        }
    }
    Ok(result)
}
