//! `teal status`: one screen about a stream, from the running process's
//! `/status`, or from green's tables when teal is not running.
//!
//! ```text
//! GET http://ADDR/status ──ok──▶ live summary (state, LSNs, lags, latency, tables)
//!        └─unreachable─▶ green: progress(slot), conflicts, last audit rows
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ConnInfo;
use crate::event::quote_ident;
use crate::ops::format_bytes;
use crate::session::connect_plain;

/// What `teal status` reads.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// teal's endpoint (`--metrics-addr` of the running stream).
    pub addr: SocketAddr,
    /// Its bearer token, if it has one.
    pub token: Option<crate::config::Secret>,
    /// Green, read when the endpoint does not answer.
    pub target: Option<ConnInfo>,
    /// The slot (green's rows of other slots are left out).
    pub slot: Option<String>,
    /// teal's schema on green.
    pub schema: String,
    /// Refresh this often until interrupted (`--watch`).
    pub watch: Option<Duration>,
}

/// Why `teal status` could show nothing.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Neither teal nor green answered.
    #[error("teal is not answering at http://{addr}/status ({http}){green}")]
    Unreachable {
        /// The endpoint.
        addr: SocketAddr,
        /// Why HTTP failed.
        http: String,
        /// What happened on green, or how to read it.
        green: String,
    },
    /// Writing the summary failed.
    #[error("writing the status: {0}")]
    Io(#[from] std::io::Error),
}

/// Prints the summary once, or every `watch` interval until `shutdown`.
pub async fn run(
    config: &StatusConfig,
    out: &mut (dyn Write + Send),
    shutdown: CancellationToken,
) -> Result<(), StatusError> {
    loop {
        let screen = summary(config).await;
        if config.watch.is_some() {
            // Clear the terminal and home the cursor: one screen, redrawn.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        match screen {
            Ok(text) => out.write_all(text.as_bytes())?,
            Err(e) if config.watch.is_some() => writeln!(out, "teal status: {e}")?,
            Err(e) => return Err(e),
        }
        out.flush()?;
        let Some(every) = config.watch else {
            return Ok(());
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The summary text, from teal or else from green.
pub async fn summary(config: &StatusConfig) -> Result<String, StatusError> {
    let http = match fetch_status(config).await {
        Ok(status) => return Ok(live_summary(config.addr, &status)),
        Err(e) => e,
    };
    let Some(target) = &config.target else {
        return Err(StatusError::Unreachable {
            addr: config.addr,
            http,
            green: "; pass --target URL (and --slot) to read green's tables instead".into(),
        });
    };
    match green_summary(config, target).await {
        Ok(text) => Ok(format!(
            "teal is not answering at http://{}/status ({http}); from green {target}:\n{text}",
            config.addr
        )),
        Err(e) => Err(StatusError::Unreachable {
            addr: config.addr,
            http,
            green: format!("; green {target}: {e}"),
        }),
    }
}

/// `GET /status` as JSON.
async fn fetch_status(config: &StatusConfig) -> Result<serde_json::Value, String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        crate::http::get(
            config.addr,
            "/status",
            config.token.as_ref().map(crate::config::Secret::expose),
        ),
    )
    .await
    .unwrap_or_else(|_| Err("no answer within 5 s".into()))?;
    match answer {
        (401, _) => Err("HTTP 401: pass its token with --metrics-token".into()),
        (200..=299, body) => serde_json::from_str(&body).map_err(|e| format!("not JSON: {e}")),
        (status, _) => Err(format!("HTTP {status}")),
    }
}

fn seconds_text(s: f64) -> String {
    if s == 0.0 {
        "0 s".into()
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// The running stream's `/status`, on one screen.
pub fn live_summary(addr: SocketAddr, s: &serde_json::Value) -> String {
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let mut o = String::new();
    let mut line = |label: &str, value: String| o.push_str(&format!("{label:<16}{value}\n"));
    line(
        "teal",
        format!("http://{addr}/ (run {})", text(&s["correlation_id"])),
    );
    line("slot", text(&s["slot"]));
    line("state", text(&s["state"]));
    line(
        "lag",
        format!(
            "{} · {} · {} transactions pending",
            format_bytes(num(&s["lag_bytes"]) as u64),
            seconds_text(num(&s["lag_seconds"])),
            num(&s["pending_transactions"])
        ),
    );
    line(
        "LSNs",
        format!(
            "received {} · applied {}",
            text(&s["received_wal_end"]),
            text(&s["applied_lsn"])
        ),
    );
    let l = &s["apply_latency_seconds"];
    line(
        "latency (1 min)",
        format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ({} transactions)",
            seconds_text(num(&l["p50"])),
            seconds_text(num(&l["p90"])),
            seconds_text(num(&l["p99"])),
            seconds_text(num(&l["p999"])),
            seconds_text(num(&l["max"])),
            num(&l["window_count"])
        ),
    );
    line(
        "applied",
        format!(
            "{} transactions · {} changes · {} batches",
            num(&s["transactions"]),
            num(&s["changes"]),
            num(&s["batches"])
        ),
    );
    line(
        "problems",
        format!(
            "{} conflicts · {} retries · {} errors",
            num(&s["conflicts"]),
            num(&s["retries"]),
            num(&s["errors"])
        ),
    );
    let h = &s["slot_health"];
    line(
        "slot on blue",
        if h.is_null() {
            "not read yet".into()
        } else {
            format!(
                "{} WAL retained ({})",
                format_bytes(num(&h["retained_bytes"]) as u64),
                h["wal_status"].as_str().unwrap_or("?")
            )
        },
    );
    if let Some(tables) = s["tables"].as_object() {
        for (i, (name, c)) in tables.iter().enumerate() {
            line(
                if i == 0 { "tables" } else { "" },
                format!(
                    "{name}: {} inserts · {} updates · {} deletes · {} truncates",
                    num(&c["insert"]),
                    num(&c["update"]),
                    num(&c["delete"]),
                    num(&c["truncate"])
                ),
            );
        }
    }
    line(
        "last error",
        s["last_error"].as_str().unwrap_or("none").to_owned(),
    );
    o
}

/// What green's tables say about the slot(s).
async fn green_summary(config: &StatusConfig, target: &ConnInfo) -> Result<String, String> {
    let client = connect_plain(target, "teal status")
        .await
        .map_err(|e| e.to_string())?;
    let schema = quote_ident(&config.schema);
    let slot = config.slot.as_deref();
    let mut o = String::new();
    let progress = client
        .query(
            &format!(
                "SELECT slot, end_lsn::text, commit_lsn::text, commit_ts::text, applied_at::text, \
                 (SELECT count(*) FROM {schema}.conflicts c WHERE c.slot = p.slot) \
                 FROM {schema}.progress p WHERE $1::text IS NULL OR slot = $1 ORDER BY slot"
            ),
            &[&slot],
        )
        .await
        .map_err(|e| format!("reading {schema}.progress: {e}"))?;
    if progress.is_empty() {
        o.push_str(&format!(
            "no progress recorded in {schema}.progress{}\n",
            slot.map_or(String::new(), |s| format!(" for slot {s}"))
        ));
    }
    for row in &progress {
        let get = |i: usize| {
            row.get::<_, Option<String>>(i)
                .unwrap_or_else(|| "-".into())
        };
        o.push_str(&format!(
            "slot {}: applied through {} (last transaction commit {} at {}), recorded {}; {} conflicts logged\n",
            get(0),
            get(1),
            get(2),
            get(3),
            get(4),
            row.get::<_, i64>(5)
        ));
    }
    let audit = client
        .query(
            &format!(
                "SELECT operation, status, started_at::text, COALESCE(ended_at::text, '-'), \
                 COALESCE(duration_ms, 0), correlation_id::text, details->>'error' \
                 FROM {schema}.audit WHERE $1::text IS NULL OR slot = $1 \
                 ORDER BY started_at DESC LIMIT 5"
            ),
            &[&slot],
        )
        .await
        .map_err(|e| format!("reading {schema}.audit: {e}"))?;
    if !audit.is_empty() {
        o.push_str("recent operations (newest first):\n");
    }
    for row in &audit {
        o.push_str(&format!(
            "  {} {} started {} ended {} ({} ms, run {}){}\n",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, i64>(4),
            row.get::<_, String>(5),
            row.get::<_, Option<String>>(6)
                .map_or(String::new(), |e| format!(": {e}"))
        ));
    }
    Ok(o)
}
