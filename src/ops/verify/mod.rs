//! `teal verify`: whether green holds what blue holds, for the published
//! tables (issue 20).
//!
//! ```text
//! blue's publications (--tables/--exclude-tables) ──schema.rs──▶ schema differences, each with its fix
//!   (none that break apply) ──data.rs──▶ one exact point of the running stream, every
//!                                        table's rows compared there, differing keys named
//! ──▶ report: text for people, JSON for programs (--format json, --report FILE)
//! ```
//!
//! The rows are compared only when no schema difference breaks apply, and
//! only with a running `teal stream` on the slot (it pauses at the point;
//! see `data`). `repair` makes green's rows equal to blue's for the keys a
//! report names, at an exact point too.
//!
//! `checksum` holds the whole-table checksum the demo and the tests use on
//! quiet databases.

mod checksum;
pub mod data;
pub mod display;
mod masked;
pub mod repair;
pub mod schema;

pub use checksum::{TableSum, table_sum};
pub use schema::SchemaDifference;

use std::time::Instant;

use serde::Serialize;

use crate::config::{ConnInfo, TableSelection};
use crate::progress::VerifyProgress;
use crate::session::{SessionError, connect_plain};

/// What `teal verify` compares.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Blue.
    pub source: ConnInfo,
    /// Green.
    pub target: ConnInfo,
    /// The stream's slot (the point of the stream a data comparison will be
    /// exact at).
    pub slot: String,
    /// Blue's publications: their tables are compared.
    pub publications: Vec<String>,
    /// `--tables` / `--exclude-tables`.
    pub tables: TableSelection,
    /// teal's schema on green (`--schema`), where the stream's state is.
    pub schema: String,
    /// `--invariant NAME=SQL`: queries of one value, evaluated on both
    /// sides at the verified point; each must give the same result on
    /// both, and that result must be true.
    pub invariants: Vec<(String, String)>,
    /// `--show-values`: the differing rows' values in the report (off by
    /// default: production rows are often personal data).
    pub show_values: bool,
    /// `--workers`: tables compared at once (each a session on each side).
    pub workers: usize,
    /// `--chunk-rows`: rows per chunk when a table's sums differ (a
    /// differing chunk's keys and row hashes are what is held in memory).
    pub chunk_rows: i64,
    /// `--mask`: masked tables are compared as blue's masked projection
    /// against green (see `masked`).
    pub mask: Option<std::sync::Arc<crate::mask::MaskConfig>>,
}

/// One invariant's results.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    /// Its name.
    pub name: String,
    /// Blue's result as text (`null` for SQL NULL), or the error.
    pub blue: Option<String>,
    /// Green's.
    pub green: Option<String>,
    /// Both the same and true.
    pub holds: bool,
}

/// The result, as `--format json` and `--report FILE` write it.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The LSN the data was compared at (`None`: the data was not compared).
    pub verified_lsn: Option<String>,
    /// `true` green equals blue; `false` differences found; `None` it could
    /// not tell (see `unverified`).
    pub equal: Option<bool>,
    /// Wall time of the run.
    pub duration_seconds: f64,
    /// Tables compared.
    pub tables_compared: usize,
    /// Schema differences, those that break apply first.
    pub schema: Vec<SchemaDifference>,
    /// Each table's rows at `verified_lsn`.
    pub tables: Vec<data::TableResult>,
    /// The invariants at `verified_lsn`.
    pub invariants: Vec<InvariantResult>,
    /// Why the result is not complete, when it is not.
    pub unverified: Option<String>,
}

impl VerifyReport {
    /// The exit status: 0 equal, 1 differences, 2 could not verify.
    pub fn exit_status(&self) -> u8 {
        match self.equal {
            Some(true) => 0,
            Some(false) => 1,
            None => 2,
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let breaking = self.schema.iter().filter(|d| d.breaks_apply).count();
        if self.schema.is_empty() {
            out.push_str(&format!(
                "schema: the {} published table(s) match on green\n",
                self.tables_compared
            ));
        } else {
            out.push_str(&format!(
                "schema: {} difference(s) in {} table(s), {breaking} of them break apply\n",
                self.schema.len(),
                {
                    let mut t: Vec<&str> = self.schema.iter().map(|d| d.table.as_str()).collect();
                    t.dedup();
                    t.len()
                }
            ));
            for d in &self.schema {
                out.push_str(&format!(
                    "  {} {}: {}\n",
                    if d.breaks_apply {
                        "BREAKS APPLY"
                    } else if d.note {
                        "note        "
                    } else {
                        "differs     "
                    },
                    d.table,
                    d.difference
                ));
                if let Some(fix) = &d.fix {
                    out.push_str(&format!("               fix: {fix};\n"));
                }
            }
        }
        if let Some(lsn) = &self.verified_lsn {
            out.push_str(&format!("rows at blue's LSN {lsn}:\n"));
            for t in &self.tables {
                out.push_str(&format!(
                    "  {} {}: {} rows on blue, {} on green{}\n",
                    if t.differences_total == 0 {
                        "equal  "
                    } else {
                        "DIFFERS"
                    },
                    t.table,
                    t.rows_blue,
                    t.rows_green,
                    if t.differences_total == 0 {
                        String::new()
                    } else {
                        format!(", {} differing row(s)", t.differences_total)
                    }
                ));
                for d in &t.differences {
                    out.push_str(&format!("      {} {}\n", d.kind, d.key));
                    for (side, row) in [("blue ", &d.blue), ("green", &d.green)] {
                        if let Some(row) = row {
                            // JSON: control characters are escaped, no line is forged.
                            out.push_str(&format!("        {side} {row}\n"));
                        }
                    }
                }
                if t.differences.len() < t.differences_total {
                    out.push_str(&format!(
                        "      ... and {} more\n",
                        t.differences_total - t.differences.len()
                    ));
                }
            }
        }
        for i in &self.invariants {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
            out.push_str(&format!(
                "invariant {}: {} (blue {}, green {})\n",
                i.name,
                if i.holds { "holds" } else { "FAILS" },
                show(&i.blue),
                show(&i.green)
            ));
        }
        match (self.equal, &self.unverified) {
            (Some(true), _) => out.push_str("green equals blue\n"),
            (Some(false), _) => out.push_str("green differs from blue\n"),
            (None, Some(why)) => out.push_str(&format!("could not verify: {why}\n")),
            (None, None) => out.push_str("could not verify\n"),
        }
        out
    }
}

/// Why verify could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A session could not be opened.
    #[error("connecting to {side}")]
    Connect {
        /// blue or green.
        side: &'static str,
        /// Why.
        #[source]
        source: SessionError,
    },
    /// A catalog query failed.
    #[error("reading {side}'s catalog")]
    Catalog {
        /// blue or green.
        side: &'static str,
        /// What the server said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The publications publish nothing (after the selection).
    #[error("the publication(s) {0} publish no tables (after --tables/--exclude-tables)")]
    NoTables(String),
    /// No exact point of the stream could be taken.
    #[error("no exact point to compare at: {0}")]
    NoPoint(String),
    /// Blue refused something (the message says what).
    #[error("blue: {0}")]
    Blue(String),
    /// Green refused something.
    #[error("green: {context}")]
    Green {
        /// What was being done.
        context: &'static str,
        /// What the server said.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Compares green with blue (see the module documentation for what is
/// compared so far).
pub async fn run(
    config: &VerifyConfig,
    progress: &VerifyProgress,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let connect = |conninfo, side| async move {
        connect_plain(conninfo, "teal verify")
            .await
            .map_err(|source| VerifyError::Connect { side, source })
    };
    let blue = connect(&config.source, "blue").await?;
    let green = connect(&config.target, "green").await?;
    let mut record = crate::ops::audit::running(
        "verify",
        &crate::monitor::new_id(),
        &config.slot,
        &config.source,
        &config.target,
        serde_json::json!({}),
    );
    let result = compare(config, &blue, &green, started, progress).await;
    progress.finish(result.as_ref().ok().and_then(|r| r.equal));
    // One audit row (operation verify) when green has teal's schema: the
    // point, the result, counts (never keys or values).
    let (status, details) = match &result {
        Ok(r) => (
            if r.equal == Some(true) {
                "succeeded"
            } else {
                "failed"
            },
            serde_json::json!({
                "verified_lsn": r.verified_lsn,
                "equal": r.equal,
                "schema_differences": r.schema.iter().filter(|d| !d.note).count(),
                "differing_rows": r.tables.iter().map(|t| t.differences_total).sum::<usize>(),
                "tables": r.tables_compared,
            }),
        ),
        Err(e) => (
            "failed",
            serde_json::json!({ "error": crate::error::Report(e).to_string() }),
        ),
    };
    crate::ops::audit::finish(&mut record, status, started, details);
    if let Err(e) = crate::store::Store::new(config.schema.clone())
        .audit(&green, &record)
        .await
    {
        tracing::debug!(error = %crate::error::Report(&e), "no audit row for verify");
    }
    result
}

/// `sql` on both sides (in the point's snapshots); its first column's
/// first row as text. An error is a result too, and never holds.
async fn invariant(
    blue: &tokio_postgres::Client,
    green: &tokio_postgres::Client,
    name: &str,
    sql: &str,
) -> InvariantResult {
    let (b, g) = futures_util::future::join(one_value(blue, sql), one_value(green, sql)).await;
    let holds = matches!((&b, &g), (Ok(Some(x)), Ok(Some(y))) if x == y && x == "t");
    let show = |r: Result<Option<String>, String>| match r {
        Ok(v) => v,
        Err(e) => Some(format!("error: {e}")),
    };
    InvariantResult {
        name: name.to_owned(),
        blue: show(b),
        green: show(g),
        holds,
    }
}

/// The first column of `sql`'s first row, as text (the same rendering on
/// both sides: canonical formats), inside a savepoint so that a failing
/// query leaves the snapshot's transaction usable.
async fn one_value(client: &tokio_postgres::Client, sql: &str) -> Result<Option<String>, String> {
    let run = async {
        client.batch_execute("SAVEPOINT teal_invariant").await?;
        let messages = client.simple_query(sql).await;
        let rolled = client
            .batch_execute("ROLLBACK TO SAVEPOINT teal_invariant")
            .await;
        let messages = messages?;
        rolled?;
        Ok::<_, tokio_postgres::Error>(messages.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        }))
    };
    match run.await {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err("no row".into()),
        Err(e) => Err(crate::error::Report(&e).to_string()),
    }
}

/// The comparison itself (see [`run`]).
async fn compare(
    config: &VerifyConfig,
    blue: &tokio_postgres::Client,
    green: &tokio_postgres::Client,
    started: Instant,
    progress: &VerifyProgress,
) -> Result<VerifyReport, VerifyError> {
    // The same formats on both sides: format_type's output depends on them
    // no more than the search path, which both sessions leave at default.
    let tables =
        schema::published_tables(blue, &config.publications, &config.tables, &config.schema)
            .await
            .map_err(|source| VerifyError::Catalog {
                side: "blue",
                source,
            })?;
    if tables.is_empty() {
        return Err(VerifyError::NoTables(config.publications.join(",")));
    }
    let differences = schema::compare(blue, green, &tables)
        .await
        .map_err(|source| VerifyError::Catalog {
            side: "blue or green",
            source,
        })?;
    let mut report = VerifyReport {
        verified_lsn: None,
        equal: None,
        duration_seconds: 0.0,
        tables_compared: tables.len(),
        schema: differences,
        tables: Vec::new(),
        invariants: Vec::new(),
        unverified: None,
    };
    if report.schema.iter().any(|d| d.breaks_apply) {
        report.equal = Some(false);
        report.unverified = Some("the rows were not compared: green's schema breaks apply".into());
    } else {
        progress.phase("point");
        let sizes = data::sizes(blue, &tables)
            .await
            .map_err(|source| VerifyError::Catalog {
                side: "blue",
                source,
            })?;
        let workers = config.workers.clamp(1, tables.len().max(1));
        progress.plan(
            tables.iter().map(ToString::to_string).zip(sizes).collect(),
            workers,
        );
        let point = data::take_point(config, blue, green).await?;
        // --workers pairs of sessions, each in both snapshots, take the
        // tables in turn; the report keeps the tables' order.
        let mut pairs = Vec::with_capacity(workers);
        for _ in 0..workers {
            pairs.push(data::sessions(config, &point).await?);
        }
        progress.phase("rows");
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results =
            futures_util::future::try_join_all(pairs.iter().enumerate().map(|(w, (b, g))| {
                let (tables, next) = (&tables, &next);
                async move {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(table) = tables.get(i) else {
                            progress.worker(w, None);
                            return Ok::<_, VerifyError>(mine);
                        };
                        let step =
                            |s: &'static str| progress.worker(w, Some(format!("{table}: {s}")));
                        let masks = config.mask.as_deref().filter(|m| m.table(table).is_some());
                        let t = match masks {
                            Some(masks) => {
                                masked::compare_masked_table(b, g, table, masks, &step).await?
                            }
                            None => {
                                data::compare_table(
                                    b,
                                    g,
                                    table,
                                    config.show_values,
                                    config.chunk_rows,
                                    &step,
                                )
                                .await?
                            }
                        };
                        progress.table_done(
                            i,
                            (t.rows_blue.unsigned_abs(), t.rows_green.unsigned_abs()),
                            (t.chunks.unsigned_abs(), t.chunks_differing.unsigned_abs()),
                            t.differences_total as u64,
                        );
                        mine.push((i, t));
                    }
                }
            }))
            .await?;
        let mut results: Vec<(usize, data::TableResult)> = results.into_iter().flatten().collect();
        results.sort_by_key(|(i, _)| *i);
        report.tables = results.into_iter().map(|(_, t)| t).collect();
        progress.phase("invariants");
        let (b, g) = &pairs[0];
        for (name, sql) in &config.invariants {
            report.invariants.push(invariant(b, g, name, sql).await);
        }
        report.verified_lsn = Some(point.lsn.to_string());
        report.equal = Some(
            report.schema.iter().all(|d| d.note)
                && report.tables.iter().all(|t| t.differences_total == 0)
                && report.invariants.iter().all(|i| i.holds),
        );
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
