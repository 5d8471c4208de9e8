//! The copy's progress for people: bars on a terminal (indicatif), a log
//! line per table every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::ops::format_bytes;
use crate::progress::{CopyStatus, TableCopySnapshot};

use super::{CopySummary, SyncError};

/// Bars count in thousandths.
const SCALE: u64 = 1000;
/// How often plain log lines are written.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Shows `progress` until `stop` (or until aborted).
pub async fn show(progress: Arc<CopyStatus>, stop: CancellationToken) {
    if std::io::stdout().is_terminal() {
        bars(&progress, &stop).await;
    } else {
        log_lines(&progress, &stop).await;
    }
}

fn describe(t: &TableCopySnapshot, elapsed: f64) -> String {
    format!(
        "{}/{} rows, {}, {}/{} chunks, {:.0} rows/s",
        t.rows,
        t.estimated_rows.max(t.rows),
        format_bytes(t.bytes),
        t.chunks_done,
        t.chunks,
        t.rows as f64 / elapsed.max(0.001)
    )
}

async fn bars(progress: &CopyStatus, stop: &CancellationToken) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template(
        "{prefix:>28.bold} [{bar:30.cyan/blue}] {percent:>3}% {msg} (ETA {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let overall = multi.add(ProgressBar::new(SCALE).with_style(style.clone()));
    overall.set_prefix("all tables");
    let tables: Vec<ProgressBar> = progress
        .tables
        .iter()
        .map(|t| {
            let bar = multi.add(ProgressBar::new(SCALE).with_style(style.clone()));
            bar.set_prefix(t.name.clone());
            bar
        })
        .collect();
    loop {
        let now = progress.snapshot();
        let elapsed = progress.elapsed_seconds();
        for (bar, t) in tables.iter().zip(&now) {
            bar.set_position((t.fraction * SCALE as f64) as u64);
            bar.set_message(describe(t, elapsed));
        }
        let rows: u64 = now.iter().map(|t| t.rows).sum();
        let bytes: u64 = now.iter().map(|t| t.bytes).sum();
        overall.set_position((progress.overall_fraction(&now) * SCALE as f64) as u64);
        overall.set_message(format!(
            "{rows} rows, {}, {}/s",
            format_bytes(bytes),
            format_bytes((bytes as f64 / elapsed.max(0.001)) as u64)
        ));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stop.cancelled() => break,
        }
    }
    for bar in tables.iter().chain([&overall]) {
        bar.abandon();
    }
}

async fn log_lines(progress: &CopyStatus, stop: &CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(LOG_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let now = progress.snapshot();
        let elapsed = progress.elapsed_seconds();
        for t in now.iter().filter(|t| t.chunks_done < t.chunks) {
            tracing::info!(
                table = %t.table,
                percent = format!("{:.1}", t.fraction * 100.0),
                progress = %describe(t, elapsed),
                "copying"
            );
        }
        let overall = progress.overall_fraction(&now);
        let eta = if overall > 0.0 {
            format!("{:.0}s", elapsed * (1.0 - overall) / overall)
        } else {
            "unknown".into()
        };
        tracing::info!(
            percent = format!("{:.1}", overall * 100.0),
            rows = now.iter().map(|t| t.rows).sum::<u64>(),
            bytes = now.iter().map(|t| t.bytes).sum::<u64>(),
            eta = %eta,
            "copy progress"
        );
    }
}

/// The closing line of a copy.
pub fn finished(
    progress: &CopyStatus,
    summary: &CopySummary,
    elapsed: Duration,
    result: &Result<bool, SyncError>,
) {
    let secs = elapsed.as_secs_f64().max(0.001);
    match result {
        Ok(true) => tracing::info!(
            tables = progress.tables.len(),
            rows = summary.rows,
            bytes = summary.bytes,
            seconds = format!("{secs:.1}"),
            rows_per_second = format!("{:.0}", summary.rows as f64 / secs),
            mib_per_second = format!("{:.1}", summary.bytes as f64 / secs / 1048576.0),
            consistent_point = %summary.consistent_point,
            "copy finished; streaming from the consistent point"
        ),
        Ok(false) => tracing::warn!(
            rows = summary.rows,
            "copy stopped before it finished; teal sync starts it again next time"
        ),
        Err(e) => {
            tracing::error!(error = %crate::error::Report(e), rows = summary.rows, "copy failed")
        }
    }
}
