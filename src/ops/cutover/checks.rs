//! Go/no-go: what must hold before a side is fenced. Each check has a
//! name, the value found and whether it allows going on.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::event::QualifiedName;
use crate::lsn::Lsn;
use crate::ops::pair;

use super::{Run, Stop, SwitchKind, failed, now_ms, sql_failed};

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

/// How long the checks wait for the stream's slot to become active.
const STREAM_GRACE: Duration = Duration::from_secs(10);

/// Step 1: the checks; a no-go stops here (nothing changed yet).
pub(super) async fn go_no_go(run: &mut Run<'_>, tables: &[QualifiedName]) -> Result<(), Stop> {
    let t = now_ms();
    let slot = run.active_slot();
    // A stream that just switched or restarted takes a moment to connect.
    let grace = Instant::now() + run.remaining().min(STREAM_GRACE);
    while Instant::now() < grace
        && slot_state(run.left(), &slot)
            .await
            .map_err(sql_failed("reading the stream's slot"))?
            .is_some_and(|s| !s.active)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = slot_state(run.left(), &slot)
        .await
        .map_err(sql_failed("reading the stream's slot"))?;
    let Some(state) = state else {
        return Err(failed(format!(
            "no slot {slot} on {}: no teal stream of this pair",
            run.left_name()
        )));
    };
    if !state.active {
        return Err(failed(format!(
            "no teal stream is running for slot {slot} on {} (the slot is not active): start it first",
            run.left_name()
        )));
    }
    let mut list = vec![Check::new("stream_running", "yes", true)];
    // The lag: the side's WAL position past what the other side committed
    // (the slot's own confirmed position moves only with status updates).
    let current: Lsn = run
        .left()
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .map_err(sql_failed("reading the WAL position"))?
        .get::<_, String>(0)
        .parse()
        .unwrap_or(Lsn::ZERO);
    let applied = applied_lsn(run).await?.unwrap_or(state.confirmed);
    let lag = current.0.saturating_sub(applied.0);
    list.push(
        Check::new("lag_bytes", lag.to_string(), lag <= run.config.max_lag)
            .limit(run.config.max_lag.to_string()),
    );
    // The predicted pause: how long the stream now takes to commit a
    // probe written on the side being left (the remaining lag at the rate
    // it applies), which is what the marker step will wait.
    let max_pause = run.config.max_pause;
    let probe_started = Instant::now();
    let probe: Lsn = run
        .left()
        .query_one(
            "SELECT pg_catalog.pg_logical_emit_message(true, 'teal.probe', $1)::text",
            &[&run.id.to_string()],
        )
        .await
        .map_err(sql_failed("writing the probe"))?
        .get::<_, String>(0)
        .parse()
        .unwrap_or(Lsn::ZERO);
    let limit = (max_pause * 2)
        .min(run.remaining())
        .max(Duration::from_millis(100));
    let predicted = loop {
        if applied_lsn(run).await?.is_some_and(|a| a >= probe) {
            break probe_started.elapsed().as_secs_f64();
        }
        if probe_started.elapsed() >= limit {
            break f64::INFINITY;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    list.push(
        Check::new(
            "predicted_pause_s",
            if predicted.is_finite() {
                format!("{predicted:.3}")
            } else {
                format!("more than {:.3}", limit.as_secs_f64())
            },
            predicted <= max_pause.as_secs_f64(),
        )
        .limit(format!("{:.3}", max_pause.as_secs_f64())),
    );
    list.push(Check::new(
        "slot_health",
        state.wal_status.clone(),
        matches!(state.wal_status.as_str(), "reserved" | "extended"),
    ));
    let differences = crate::ops::verify::schema::compare(run.left(), run.taking(), tables)
        .await
        .map_err(sql_failed("comparing the schemas"))?;
    let breaking: Vec<String> = differences
        .iter()
        .filter(|d| !d.note)
        .map(|d| format!("{}: {}", d.table, d.difference))
        .collect();
    list.push(Check::new(
        "schema_differences",
        if breaking.is_empty() {
            "none".to_owned()
        } else {
            breaking.join("; ")
        },
        breaking.is_empty(),
    ));
    let invalid = invalid_indexes(run.taking(), tables)
        .await
        .map_err(sql_failed("reading the indexes"))?;
    list.push(Check::new(
        "invalid_indexes",
        if invalid.is_empty() {
            "none".to_owned()
        } else {
            invalid.join(", ")
        },
        invalid.is_empty(),
    ));
    if run.kind == SwitchKind::Cutover {
        let source = reverse_source_ready(&run.green)
            .await
            .map_err(sql_failed("checking green for the way back"))?;
        let target = reverse_target_ready(&run.blue, tables)
            .await
            .map_err(sql_failed("checking blue for the way back"))?;
        let why: Vec<String> = [
            source.map(|s| format!("green: {s}")),
            target.map(|s| format!("blue: {s}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        list.push(Check::new(
            "way_back",
            if why.is_empty() {
                "possible".to_owned()
            } else {
                why.join("; ")
            },
            why.is_empty(),
        ));
    }
    let sequences = crate::ops::sequences::used_by(run.left(), tables)
        .await
        .map_err(sql_failed("listing the sequences"))?;
    let mut missing = Vec::new();
    for s in &sequences {
        let there: bool = run
            .taking()
            .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[s])
            .await
            .map_err(sql_failed("looking for the sequences"))?
            .get(0);
        if !there {
            missing.push(s.clone());
        }
    }
    list.push(Check::new(
        "sequences",
        if missing.is_empty() {
            format!("{} present on both sides", sequences.len())
        } else {
            format!("missing on {}: {}", run.taking_name(), missing.join(", "))
        },
        missing.is_empty(),
    ));
    if run.config.verify {
        let (source, target) = match run.kind {
            SwitchKind::Cutover => (run.config.source.clone(), run.config.target.clone()),
            SwitchKind::Rollback => (run.config.target.clone(), run.config.source.clone()),
        };
        let verify = crate::ops::verify::VerifyConfig {
            source,
            target,
            slot: slot.clone(),
            publications: match run.kind {
                SwitchKind::Cutover => run.config.publications.clone(),
                SwitchKind::Rollback => vec![pair::reverse_publication(&run.config.slot)],
            },
            tables: run.config.tables.clone(),
            schema: run.config.schema.clone(),
            invariants: run.config.invariants.clone(),
            show_values: false,
            workers: 2,
            chunk_rows: 100_000,
            mask: None,
        };
        let progress = crate::progress::VerifyProgress::new();
        let (value, go) = match crate::ops::verify::run(&verify, &progress).await {
            Ok(r) => (
                format!(
                    "{} at {} ({} differing rows, {} invariant(s) failing)",
                    if r.equal == Some(true) {
                        "equal"
                    } else {
                        "NOT equal"
                    },
                    r.verified_lsn.as_deref().unwrap_or("-"),
                    r.tables.iter().map(|t| t.differences_total).sum::<usize>(),
                    r.invariants.iter().filter(|i| !i.holds).count()
                ),
                r.equal == Some(true),
            ),
            Err(e) => (
                format!("could not verify: {}", crate::error::Report(&e)),
                false,
            ),
        };
        list.push(Check::new("verify", value, go));
    }
    let go = list.iter().all(|c| c.go);
    let nos: Vec<&str> = list.iter().filter(|c| !c.go).map(|c| c.name).collect();
    run.report.checks = list;
    run.step(
        "checks",
        t,
        None,
        if go {
            "go".to_owned()
        } else {
            format!("no-go: {}", nos.join(", "))
        },
    );
    if go {
        Ok(())
    } else {
        Err(Stop {
            outcome: "no_go",
            reason: format!("no-go: {}", nos.join(", ")),
        })
    }
}

/// What the side taking over committed of the running leg (its progress
/// row), if anything yet.
pub(super) async fn applied_lsn(run: &Run<'_>) -> Result<Option<Lsn>, Stop> {
    let read = run
        .taking()
        .query_opt(
            &format!(
                "SELECT end_lsn::text FROM {}.progress WHERE slot = $1",
                run.store.quoted()
            ),
            &[&run.active_slot()],
        )
        .await;
    match read {
        Ok(row) => Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok())),
        // No teal schema there yet: nothing committed.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(sql_failed("reading the stream's progress")(e)),
    }
}
