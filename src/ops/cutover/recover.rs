//! Undoing what a switch put up: an abort before the switch (this run's
//! fence and way back), what a killed run left (`--abort`, or at the start
//! of the next run), and the way back itself.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::ops::pair;
use crate::store::Store;

use super::fence::{self, Fenced};
use super::{
    CutoverConfig, Run, Stop, SwitchKind, SwitchReport, failed, now_ms, sql_failed, withdraw,
};

/// Lifts the fence and drops the way back this run put up (an abort
/// before the switch). A failure is added to the report with what to run.
pub(super) async fn undo(run: &mut Run<'_>) {
    let t = now_ms();
    let mut notes = Vec::new();
    if run.armed {
        match drop_way_back(&run.green, &run.config.slot, Duration::from_secs(10)).await {
            Ok(()) => notes.push("the way back dropped".to_owned()),
            Err(e) => notes.push(format!("the way back not dropped ({e})")),
        }
        run.armed = false;
    }
    if let Some(fenced) = run.fenced.take() {
        let side = run.left_name();
        match fence::lift(run.left(), &fenced, side).await {
            Ok(()) => notes.push(format!("{side} unfenced")),
            Err(e) => {
                let message = format!(
                    "{side} IS STILL FENCED ({}): run `teal cutover --abort` with the same flags to lift it",
                    crate::error::Report(&e)
                );
                tracing::error!("{message}");
                notes.push(message);
            }
        }
        if let Some(p) = run.pause_started {
            run.report.write_pause_ms = Some(p.elapsed().as_secs_f64() * 1000.0);
        }
    }
    run.step("undo", t, None, notes.join("; "));
}

/// Drops slot `<slot>_rev` and publication `teal_<slot>_rev` on green,
/// waiting up to `wait` for a session still streaming from the slot.
pub(super) async fn drop_way_back(
    green: &Client,
    slot: &str,
    wait: Duration,
) -> Result<(), String> {
    let rev = pair::reverse_slot(slot);
    let deadline = Instant::now() + wait;
    loop {
        let r = green
            .query_opt(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1",
                &[&rev],
            )
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline && e.code().is_some() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(crate::error::Report(&e).to_string()),
        }
    }
    green
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            crate::event::quote_ident(&pair::reverse_publication(slot))
        ))
        .await
        .map_err(|e| crate::error::Report(&e).to_string())
}

/// Switches an earlier run left unfinished (killed): their fence lifted,
/// their way back dropped, marked aborted. A switch the stream already
/// made is not undone.
pub(super) async fn undo_interrupted(run: &mut Run<'_>) -> Result<(), Stop> {
    let t = now_ms();
    let schema = run.store.quoted();
    let rows = run
        .green
        .query(
            &format!(
                "SELECT id::text, kind, state, step, fence::text FROM {schema}.switches \
                 WHERE slot = $1 AND state IN ('running', 'switch') ORDER BY requested_at"
            ),
            &[&run.config.slot],
        )
        .await
        .map_err(sql_failed("reading earlier switches"))?;
    for row in rows {
        let (id, kind, state, step, fence_text): (String, String, String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        // A request the stream took first: that switch happened.
        if state == "switch" && !withdraw(run, &id).await? {
            continue;
        }
        let fenced_side = if kind == "rollback" { "green" } else { "blue" };
        let mut notes = vec![format!("{kind} {id} was interrupted at {step}")];
        if let Some(text) = fence_text {
            let fenced: Fenced = serde_json::from_str(&text).map_err(|e| {
                failed(format!(
                    "the fence recorded by {kind} {id} does not read: {e}"
                ))
            })?;
            let client = if kind == "rollback" {
                &run.green
            } else {
                &run.blue
            };
            fence::lift(client, &fenced, fenced_side)
                .await
                .map_err(|e| {
                    failed(format!(
                        "{fenced_side} is fenced by {kind} {id} and could not be unfenced: {}",
                        crate::error::Report(&e)
                    ))
                })?;
            notes.push(format!("{fenced_side} unfenced"));
        }
        if kind != "rollback" {
            drop_way_back(&run.green, &run.config.slot, Duration::from_secs(10))
                .await
                .map_err(|e| failed(format!("dropping {kind} {id}'s way back: {e}")))?;
        }
        run.green
            .execute(
                &format!(
                    "UPDATE {schema}.switches SET state = 'aborted', updated_at = now() WHERE id = $1::text::uuid"
                ),
                &[&id],
            )
            .await
            .map_err(sql_failed("marking an earlier switch aborted"))?;
        run.step("undo interrupted", t, None, notes.join("; "));
    }
    Ok(())
}

/// `teal cutover --abort`: only undoes what interrupted switches left.
pub async fn abort(config: &CutoverConfig) -> SwitchReport {
    let mut c = config.clone();
    c.rehearse = false;
    let id = uuid::Uuid::new_v4();
    let mut report = SwitchReport::new(id, "abort");
    let blue = crate::session::connect_plain(&config.source, "teal cutover").await;
    let green = crate::session::connect_plain(&config.target, "teal cutover").await;
    let (blue, mut green) = match (blue, green) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(e), _) | (_, Err(e)) => {
            report.error = Some(crate::error::Report(&e).to_string());
            return report;
        }
    };
    let store = Store::new(config.schema.clone());
    if let Err(e) = store.migrate(&mut green).await {
        report.error = Some(crate::error::Report(&e).to_string());
        return report;
    }
    let mut run = Run {
        config: &c,
        kind: SwitchKind::Cutover,
        blue,
        green,
        store,
        report,
        started: Instant::now(),
        id,
        fenced: None,
        armed: false,
        pause_started: None,
    };
    match undo_interrupted(&mut run).await {
        Ok(()) => {
            if run.report.steps.is_empty() {
                let t = now_ms();
                run.step("undo interrupted", t, None, "nothing was left unfinished");
            }
            run.report.outcome = "undone";
        }
        Err(stop) => run.report.error = Some(stop.reason),
    }
    run.report
}
