//! The handover itself: the way back armed before the other side takes a
//! write, the stream asked to turn round (or the request withdrawn), and
//! the side taking over unfenced.

use std::time::{Duration, Instant};

use crate::event::QualifiedName;
use crate::ops::pair;

use super::fence::{self, Fenced};
use super::{Run, Stop, SwitchKind, drop_way_back, failed, sql_failed};

/// Step 5 of a cutover: publication and slot on green (stale ones of an
/// earlier switch dropped first).
pub(super) async fn arm_way_back(run: &mut Run<'_>, tables: &[QualifiedName]) -> Result<(), Stop> {
    let slot = &run.config.slot;
    drop_way_back(&run.green, slot, Duration::from_secs(5))
        .await
        .map_err(|e| failed(format!("dropping a stale way back on green: {e}")))?;
    run.armed = true;
    let list: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    run.green
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            crate::event::quote_ident(&pair::reverse_publication(slot)),
            list.join(", ")
        ))
        .await
        .map_err(sql_failed("creating the reverse publication on green"))?;
    run.green
        .execute(
            "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&pair::reverse_slot(slot)],
        )
        .await
        .map_err(sql_failed("creating the reverse slot on green"))?;
    // A new slot: the way back starts at its creation point, not where an
    // earlier cutover's way back stopped (its progress row on blue).
    let progress = format!("{}.progress", run.store.quoted());
    let stale: bool = run
        .blue
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&progress],
        )
        .await
        .map_err(sql_failed("looking for teal's progress on blue"))?
        .get(0);
    if stale {
        run.blue
            .execute(
                &format!("DELETE FROM {progress} WHERE slot = $1"),
                &[&pair::reverse_slot(slot)],
            )
            .await
            .map_err(sql_failed(
                "forgetting an earlier way back's progress on blue",
            ))?;
    }
    Ok(())
}

/// Step 6: asks the stream to switch and waits for it (until `--timeout`,
/// at least 10 s); a stream that does not answer gets the request
/// withdrawn, and the run aborts.
pub(super) async fn switch_stream(run: &mut Run<'_>) -> Result<(), Stop> {
    let schema = run.store.quoted();
    let id = run.id.to_string();
    run.green
        .execute(
            &format!(
                "UPDATE {schema}.switches SET state = 'switch', updated_at = now() WHERE id = $1::text::uuid"
            ),
            &[&id],
        )
        .await
        .map_err(sql_failed("asking the stream to switch"))?;
    run.set_step("switch").await?;
    let limit = Instant::now() + run.remaining().max(Duration::from_secs(10));
    loop {
        let state: String = run
            .green
            .query_one(
                &format!("SELECT state FROM {schema}.switches WHERE id = $1::text::uuid"),
                &[&id],
            )
            .await
            .map_err(sql_failed("reading the switch"))?
            .get(0);
        if state == "switched" {
            return Ok(());
        }
        if Instant::now() >= limit {
            if withdraw(run, &id).await? {
                return Err(Stop {
                    outcome: "aborted",
                    reason:
                        "the stream did not switch in time (is teal stream running for the slot?)"
                            .into(),
                });
            }
            // It switched meanwhile.
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Withdraws switch `id`'s request to the stream; `false` when the stream
/// took it first (the switch happened).
pub(super) async fn withdraw(run: &Run<'_>, id: &str) -> Result<bool, Stop> {
    let withdrawn = run
        .green
        .execute(
            &format!(
                "UPDATE {}.switches SET state = 'aborted', updated_at = now() \
                 WHERE id = $1::text::uuid AND state = 'switch'",
                run.store.quoted()
            ),
            &[&id],
        )
        .await
        .map_err(sql_failed("withdrawing a switch request"))?;
    Ok(withdrawn == 1)
}

/// The side taking over becomes writable: the fence the last switch the
/// other way put on it (if any) is lifted, also when that switch's
/// command died after the stream switched (it is done now).
pub(super) async fn unfence_taking_over(run: &mut Run<'_>) -> Result<String, Stop> {
    let other = match run.kind {
        SwitchKind::Cutover => "rollback",
        SwitchKind::Rollback => "cutover",
    };
    let row = run
        .green
        .query_opt(
            &format!(
                "SELECT id::text, fence::text FROM {}.switches \
                 WHERE slot = $1 AND kind = $2 AND state IN ('done', 'switched') AND fence IS NOT NULL \
                   AND NOT coalesce((fence->>'lifted')::bool, false) \
                 ORDER BY requested_at DESC LIMIT 1",
                run.store.quoted()
            ),
            &[&run.config.slot, &other],
        )
        .await
        .map_err(sql_failed("reading the fence to lift"))?;
    let Some(row) = row else {
        return Ok(format!("{} was not fenced", run.taking_name()));
    };
    let (id, fence_text): (String, String) = (row.get(0), row.get(1));
    let fenced: Fenced = serde_json::from_str(&fence_text).map_err(|e| {
        failed(format!(
            "the fence recorded by {other} {id} does not read: {e}"
        ))
    })?;
    fence::lift(run.taking(), &fenced, run.taking_name())
        .await
        .map_err(|e| {
            failed(format!(
                "{} stays fenced: {}",
                run.taking_name(),
                crate::error::Report(&e)
            ))
        })?;
    run.green
        .execute(
            &format!(
                "UPDATE {}.switches SET fence = fence || '{{\"lifted\": true}}', state = 'done' WHERE id = $1::text::uuid",
                run.store.quoted()
            ),
            &[&id],
        )
        .await
        .map_err(sql_failed("recording the lifted fence"))?;
    Ok(format!(
        "{} unfenced (the fence of {other} {id})",
        run.taking_name()
    ))
}
