//! A verify run's progress for people: bars on stderr when it is a
//! terminal (stdout carries the report), a log line every few seconds
//! otherwise. Counts and table names only.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::ops::format_bytes;
use crate::progress::{VerifyProgress, VerifySnapshot};

/// How often plain log lines are written.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Shows `progress` until `stop`.
pub async fn show(progress: &VerifyProgress, stop: CancellationToken) {
    if std::io::stderr().is_terminal() {
        bars(progress, &stop).await;
    } else {
        log_lines(progress, &stop).await;
    }
}

/// One line: tables, bytes, rows, differences.
pub fn describe(s: &VerifySnapshot) -> String {
    format!(
        "{} {}/{} tables, {} of {}, {} rows, {} differing",
        s.phase,
        s.tables_done,
        s.tables_total,
        format_bytes(s.bytes_done),
        format_bytes(s.bytes_total),
        s.rows_blue.max(s.rows_green),
        s.differences
    )
}

async fn bars(progress: &VerifyProgress, stop: &CancellationToken) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = multi.add(
        ProgressBar::new(1).with_style(
            ProgressStyle::with_template(
                "{prefix:>12.bold} [{bar:30.cyan/blue}] {percent:>3}% {msg} (ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
    );
    overall.set_prefix("verify");
    let spinner = ProgressStyle::with_template("{prefix:>12} {spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut workers: Vec<ProgressBar> = Vec::new();
    loop {
        let s = progress.snapshot();
        overall.set_length(s.bytes_total.max(1));
        overall.set_position(s.bytes_done);
        overall.set_message(describe(&s));
        while workers.len() < s.workers.len() {
            let bar = multi.add(ProgressBar::new_spinner().with_style(spinner.clone()));
            bar.set_prefix(format!("worker {}", workers.len() + 1));
            workers.push(bar);
        }
        for (bar, step) in workers.iter().zip(&s.workers) {
            bar.set_message(step.clone().unwrap_or_else(|| "idle".into()));
            bar.tick();
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stop.cancelled() => break,
        }
    }
    for bar in workers {
        bar.finish_and_clear();
    }
    overall.finish_and_clear();
}

async fn log_lines(progress: &VerifyProgress, stop: &CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(LOG_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let s = progress.snapshot();
        tracing::info!(progress = %describe(&s), "verifying");
    }
}
