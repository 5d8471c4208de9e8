//! Comparing a masked table: blue's rows masked here, as the stream and
//! `teal sync` mask them, against green's rows as they are.
//!
//! ```text
//! blue  (snapshot S) ──COPY text──▶ masked fields ─┐ per row: bucket = hash(key) % BUCKETS,
//! green (snapshot G) ──COPY text──▶ fields ────────┘          digest = hash(all fields)
//! pass 1: per bucket (count, sum of digests) on each side: equal → equal tables
//! pass 2 (only when some differ): the differing buckets' (key, digest), compared by key
//! ```
//!
//! The servers cannot mask (the key stays with teal), so every row crosses
//! the network once (twice when the table differs), unlike the unmasked
//! comparison whose sums are made on the servers. Memory: the buckets,
//! then the rows of the differing buckets.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use futures_util::TryStreamExt;
use tokio_postgres::Client;

use crate::event::{QualifiedName, quote_ident};
use crate::mask::MaskConfig;
use crate::mask::copy::{CopyMask, fields};

use super::VerifyError;
use super::data::{MAX_LISTED, RowDifference, TableResult};

/// Buckets of pass 1.
const BUCKETS: usize = 4096;

type Fields = Vec<Option<Vec<u8>>>;

fn digest<T: Hash>(t: &T) -> u64 {
    // SipHash with fixed keys: the same in both passes of this process.
    let mut h = std::hash::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// The key's text as JSON (`{"id": "7"}`; the masked key for blue), or
/// `None` without a key.
fn key_of(fields: &Fields, key: &[(String, usize)]) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = key
        .iter()
        .map(|(name, i)| {
            let value = fields
                .get(*i)
                .and_then(Option::as_ref)
                .map_or(serde_json::Value::Null, |v| {
                    serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
                });
            (name.clone(), value)
        })
        .collect();
    Some(serde_json::Value::Object(object).to_string())
}

/// A row's bucket and digest.
fn place(fields: &Fields, key: &[(String, usize)]) -> (Option<String>, usize, u64) {
    let k = key_of(fields, key);
    let d = digest(fields);
    let bucket = match &k {
        Some(k) => digest(k),
        None => d,
    } as usize
        % BUCKETS;
    (k, bucket, d)
}

/// Reads `table` on `client` by COPY, each row's fields to `each`
/// (`masked`: through blue's masks).
async fn read(
    client: &Client,
    sql: &str,
    mask: Option<&CopyMask>,
    mut each: impl FnMut(Fields),
) -> Result<(), ReadError> {
    let rows = client.copy_out(sql).await.map_err(ReadError::Sql)?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.try_next().await.map_err(ReadError::Sql)? {
        let f = match mask {
            Some(m) => m
                .masked_fields(&row)
                .map_err(|e| ReadError::Mask(e.to_string()))?,
            None => fields(&row),
        };
        each(f);
    }
    Ok(())
}

/// Reads the table on both sides at once: blue's rows masked to
/// `on_blue_row`, green's to `on_green_row`.
async fn read_both(
    (blue, green): (&Client, &Client),
    table: &QualifiedName,
    sql: &str,
    mask: &CopyMask,
    on_blue_row: impl FnMut(Fields),
    on_green_row: impl FnMut(Fields),
) -> Result<(), VerifyError> {
    let (b, g) = futures_util::future::join(
        read(blue, sql, Some(mask), on_blue_row),
        read(green, sql, None, on_green_row),
    )
    .await;
    b.map_err(on_blue(table))?;
    g.map_err(on_green)
}

enum ReadError {
    Sql(tokio_postgres::Error),
    Mask(String),
}

fn on_blue(table: &QualifiedName) -> impl Fn(ReadError) -> VerifyError + '_ {
    move |e| match e {
        ReadError::Sql(e) => VerifyError::Blue(format!("reading {table}: {e}")),
        ReadError::Mask(e) => VerifyError::Blue(e),
    }
}

fn on_green(e: ReadError) -> VerifyError {
    match e {
        ReadError::Sql(source) => VerifyError::Green {
            context: "reading a masked table",
            source,
        },
        ReadError::Mask(e) => VerifyError::Blue(e),
    }
}

/// Compares masked `table` in both snapshots (see the module documentation).
pub async fn compare_masked_table(
    blue: &Client,
    green: &Client,
    table: &QualifiedName,
    masks: &MaskConfig,
    step: &(dyn Fn(&'static str) + Sync),
) -> Result<TableResult, VerifyError> {
    let blue_error = |what: &str, e: String| VerifyError::Blue(format!("{what} {table}: {e}"));
    let columns: Vec<(String, u32, String, i32)> = blue
        .query(
            "SELECT a.attname::text, a.atttypid::oid, t.typname::text, a.atttypmod \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             AND a.attgenerated = '' ORDER BY a.attnum",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| blue_error("reading the columns of", e.to_string()))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mask = CopyMask::new(masks, table, &columns)
        .map_err(|e| VerifyError::Blue(e.to_string()))?
        .ok_or_else(|| VerifyError::Blue(format!("{table} has no masks")))?;
    let (_, key_names) = super::data::columns_and_key(blue, table)
        .await
        .map_err(|e| blue_error("reading the key of", e.to_string()))?;
    let key: Vec<(String, usize)> = key_names
        .iter()
        .filter_map(|k| {
            columns
                .iter()
                .position(|c| &c.0 == k)
                .map(|i| (k.clone(), i))
        })
        .collect();
    let sql = format!(
        "COPY (SELECT {} FROM {}) TO STDOUT",
        columns
            .iter()
            .map(|c| quote_ident(&c.0))
            .collect::<Vec<_>>()
            .join(", "),
        table.quoted()
    );

    // Pass 1: per bucket, count and sum of digests.
    step("reading and masking");
    let sums = |side: &mut Vec<(i64, u64)>, f: Fields| {
        let (_, bucket, d) = place(&f, &key);
        let s = &mut side[bucket];
        s.0 += 1;
        s.1 = s.1.wrapping_add(d);
    };
    let mut b_sums = vec![(0i64, 0u64); BUCKETS];
    let mut g_sums = vec![(0i64, 0u64); BUCKETS];
    read_both(
        (blue, green),
        table,
        &sql,
        &mask,
        |f| sums(&mut b_sums, f),
        |f| sums(&mut g_sums, f),
    )
    .await?;
    let mut result = TableResult {
        table: table.to_string(),
        rows_blue: b_sums.iter().map(|s| s.0).sum(),
        rows_green: g_sums.iter().map(|s| s.0).sum(),
        chunks: 0,
        chunks_differing: 0,
        differences_total: 0,
        differences: Vec::new(),
        masked: true,
    };
    let differing: Vec<bool> = b_sums.iter().zip(&g_sums).map(|(b, g)| b != g).collect();
    let n_differing = differing.iter().filter(|d| **d).count();
    if n_differing == 0 {
        return Ok(result);
    }
    result.chunks = BUCKETS as i64;
    result.chunks_differing = n_differing as i64;

    // Pass 2: the differing buckets' rows, by key (by digest without one).
    step("comparing rows");
    let mut b_rows: HashMap<(Option<String>, u64), i64> = HashMap::new();
    let mut g_rows: HashMap<(Option<String>, u64), i64> = HashMap::new();
    let collect = |rows: &mut HashMap<(Option<String>, u64), i64>, f: Fields| {
        let (k, bucket, d) = place(&f, &key);
        if differing[bucket] {
            *rows.entry((k, d)).or_default() += 1;
        }
    };
    read_both(
        (blue, green),
        table,
        &sql,
        &mask,
        |f| collect(&mut b_rows, f),
        |f| collect(&mut g_rows, f),
    )
    .await?;
    // Rows on both sides with the same key and digest cancel out.
    for (row, n) in &mut b_rows {
        if let Some(m) = g_rows.get_mut(row) {
            let common = (*n).min(*m);
            *n -= common;
            *m -= common;
        }
    }
    let mut found: Vec<(Option<String>, &'static str)> = Vec::new();
    let mut blue_keys: HashMap<Option<String>, i64> = HashMap::new();
    for ((k, _), n) in b_rows.into_iter().filter(|(_, n)| *n > 0) {
        *blue_keys.entry(k).or_default() += n;
    }
    for ((k, _), n) in g_rows.into_iter().filter(|(_, n)| *n > 0) {
        for _ in 0..n {
            let on_blue = blue_keys.get_mut(&k).filter(|_| k.is_some());
            match on_blue {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    found.push((k.clone(), "different"));
                }
                _ => found.push((k.clone(), "extra_on_green")),
            }
        }
    }
    for (k, n) in blue_keys {
        for _ in 0..n {
            found.push((k.clone(), "missing_on_green"));
        }
    }
    found.sort();
    result.differences_total = found.len();
    result.differences = found
        .into_iter()
        .take(MAX_LISTED)
        .map(|(k, kind)| RowDifference {
            key: k
                .and_then(|k| serde_json::from_str(&k).ok())
                .unwrap_or(serde_json::Value::Null),
            kind,
            blue: None,
            green: None,
        })
        .collect();
    result.differences.sort_by_key(|d| d.key.to_string());
    Ok(result)
}
