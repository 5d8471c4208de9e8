//! `teal cutover` and `teal rollback` (issue 21): a verified switch of the
//! writers from one side to the other, reversible without losing a write.
//! The running `teal stream` of the pair is the engine; these commands
//! fence, check and ask it to turn round (see [`crate::ops::pair`]).
//!
//! ```text
//! 0 pair state, interrupted switches undone       (teal.pairs, teal.switches on green)
//! 1 go/no-go: stream running and caught up (--max-lag, --max-pause), slot healthy,
//!   no schema difference, no invalid index, the way back possible, [--verify]
//! 2 fence the side being left (--fence-roles | --fence-database | --fence-hook),
//!   wait until no other session holds a transaction id          <- write pause starts
//! 3 marker pg_logical_emit_message(true, 'teal.cutover', id); wait until the other
//!   side committed past it: every transaction acknowledged before the fence is there
//! 4 sequences copied (owned or not), checked taking-over >= left
//! 5 the way back armed before the other side takes a write: cutover creates slot
//!   <slot>_rev and publication teal_<slot>_rev on green (rollback: <slot> on blue stays)
//!   --rehearse: undo 5 and 2 here and report
//! 6 the stream switches (state 'switch' -> 'switched'), --switch-hook runs, the side
//!   taking over is unfenced                                      <- write pause ends
//! --timeout before 6 aborts: fence lifted, the way back dropped; after 6 never automatic
//! ```
//!
//! Files: this one (configuration, report, the run's steps in order),
//! `checks` (go/no-go), `fence`, `handover` (the way back, the switch, the
//! unfence), `recover` (aborts, interrupted runs, `--abort`).

pub mod checks;
pub mod fence;
mod handover;
mod recover;
mod report;

use checks::{applied_lsn, go_no_go};
use handover::{arm_way_back, switch_stream, unfence_taking_over, withdraw};
pub use recover::abort;
use recover::{drop_way_back, undo, undo_interrupted};
pub use report::{StepReport, SwitchReport};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;

use crate::config::{ConnInfo, TableSelection};
use crate::event::QualifiedName;
use crate::lsn::Lsn;
use crate::ops::pair::{self, Direction};
use crate::store::Store;

pub use checks::Check;
pub use fence::{Fence, Fenced};

/// What a cutover or rollback needs.
#[derive(Debug, Clone)]
pub struct CutoverConfig {
    /// Blue.
    pub source: ConnInfo,
    /// Green.
    pub target: ConnInfo,
    /// The pair's forward slot (on blue).
    pub slot: String,
    /// Blue's publications (their tables are the pair's).
    pub publications: Vec<String>,
    /// `--tables` / `--exclude-tables` of the stream.
    pub tables: TableSelection,
    /// teal's schema (on green; on blue too once reversed).
    pub schema: String,
    /// How the side being left is fenced.
    pub fence: Fence,
    /// `--switch-hook`: run after the stream switched (repoint PgBouncer,
    /// DNS, configuration); its exit status must be 0.
    pub switch_hook: Option<String>,
    /// `--max-lag`: bytes the stream may be behind at the start.
    pub max_lag: u64,
    /// `--max-pause`: the predicted write pause must be under it.
    pub max_pause: Duration,
    /// `--timeout`: from the start to the switch; beyond it, abort.
    pub timeout: Duration,
    /// `--verify`: green must equal blue (and the invariants hold) first.
    pub verify: bool,
    /// `--invariant NAME=SQL` for `--verify`.
    pub invariants: Vec<(String, String)>,
    /// `--rehearse`: steps 1 to 5, then everything back as it was.
    pub rehearse: bool,
}

/// Which way a switch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchKind {
    /// Blue to green.
    Cutover,
    /// Green back to blue.
    Rollback,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a step failed: the outcome it leads to and the reason.
struct Stop {
    outcome: &'static str,
    reason: String,
}

fn failed(reason: impl Into<String>) -> Stop {
    Stop {
        outcome: "failed",
        reason: reason.into(),
    }
}

fn sql_failed(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Stop + '_ {
    move |e| failed(format!("{context}: {}", crate::error::Report(&e)))
}

/// A run's state.
struct Run<'a> {
    config: &'a CutoverConfig,
    kind: SwitchKind,
    blue: Client,
    green: Client,
    store: Store,
    report: SwitchReport,
    started: Instant,
    id: uuid::Uuid,
    /// The fence put up (to lift on abort).
    fenced: Option<Fenced>,
    /// The way back created (cutover: on green).
    armed: bool,
    pause_started: Option<Instant>,
}

impl Run<'_> {
    /// The side being left.
    fn left(&self) -> &Client {
        match self.kind {
            SwitchKind::Cutover => &self.blue,
            SwitchKind::Rollback => &self.green,
        }
    }

    /// The side taking over.
    fn taking(&self) -> &Client {
        match self.kind {
            SwitchKind::Cutover => &self.green,
            SwitchKind::Rollback => &self.blue,
        }
    }

    fn left_name(&self) -> &'static str {
        match self.kind {
            SwitchKind::Cutover => "blue",
            SwitchKind::Rollback => "green",
        }
    }

    fn taking_name(&self) -> &'static str {
        match self.kind {
            SwitchKind::Cutover => "green",
            SwitchKind::Rollback => "blue",
        }
    }

    /// The slot the running leg streams from (on the side being left).
    fn active_slot(&self) -> String {
        match self.kind {
            SwitchKind::Cutover => self.config.slot.clone(),
            SwitchKind::Rollback => pair::reverse_slot(&self.config.slot),
        }
    }

    fn step(&mut self, name: &str, started_ms: u64, lsn: Option<Lsn>, detail: impl Into<String>) {
        let detail = detail.into();
        tracing::info!(step = name, detail = %detail, "{}", self.report.kind);
        self.report.steps.push(StepReport {
            name: name.to_owned(),
            started_ms,
            ended_ms: now_ms(),
            lsn: lsn.map(|l| l.to_string()),
            detail,
        });
    }

    fn remaining(&self) -> Duration {
        self.config.timeout.saturating_sub(self.started.elapsed())
    }

    /// Records the step on green. (`TEAL_CUTOVER_PAUSE_AT=<step>` makes
    /// the command wait a minute there: a failure-injection point for the
    /// crash tests, which kill it at each step.)
    async fn set_step(&self, step: &str) -> Result<(), Stop> {
        self.green
            .execute(
                &format!(
                    "UPDATE {}.switches SET step = $2, updated_at = now() WHERE id = $1::text::uuid",
                    self.store.quoted()
                ),
                &[&self.id.to_string(), &step],
            )
            .await
            .map_err(sql_failed("recording the step on green"))?;
        if std::env::var("TEAL_CUTOVER_PAUSE_AT").is_ok_and(|at| at == step) {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Ok(())
    }
}

/// Runs a cutover (or, with `--rehearse`, a rehearsal) or a rollback. Never
/// an error: what went wrong is the report's outcome and error.
pub async fn run(config: &CutoverConfig, kind: SwitchKind) -> SwitchReport {
    let id = uuid::Uuid::new_v4();
    let kind_name = match (kind, config.rehearse) {
        (SwitchKind::Cutover, false) => "cutover",
        (SwitchKind::Rollback, _) => "rollback",
        (SwitchKind::Cutover, true) => "rehearsal",
    };
    let mut report = SwitchReport::new(id, kind_name);
    let connect = |conninfo: &ConnInfo, side: &'static str| {
        let conninfo = conninfo.clone();
        async move {
            crate::session::connect_plain(&conninfo, "teal cutover")
                .await
                .map_err(|e| format!("connecting to {side}: {}", crate::error::Report(&e)))
        }
    };
    let (blue, green) = match (
        connect(&config.source, "blue").await,
        connect(&config.target, "green").await,
    ) {
        (Ok(b), Ok(g)) => (b, g),
        (Err(e), _) | (_, Err(e)) => {
            report.error = Some(e);
            return report;
        }
    };
    let mut run = Run {
        config,
        kind,
        blue,
        green,
        store: Store::new(config.schema.clone()),
        report,
        started: Instant::now(),
        id,
        fenced: None,
        armed: false,
        pause_started: None,
    };
    let mut audit = crate::ops::audit::running(
        match kind {
            SwitchKind::Cutover => "cutover",
            SwitchKind::Rollback => "rollback",
        },
        &id.to_string(),
        &config.slot,
        &config.source,
        &config.target,
        serde_json::json!({}),
    );
    let result = protocol(&mut run).await;
    if let Err(stop) = result {
        run.report.outcome = stop.outcome;
        run.report.error = Some(stop.reason);
        if run.fenced.is_some() || run.armed {
            undo(&mut run).await;
        }
        // Aborted only before the switch: one the stream made stays done
        // (a rollback lifts its fence).
        let _ = run
            .green
            .execute(
                &format!(
                    "UPDATE {}.switches SET state = 'aborted', updated_at = now() \
                     WHERE id = $1::text::uuid AND state IN ('running', 'switch')",
                    run.store.quoted()
                ),
                &[&run.id.to_string()],
            )
            .await;
    }
    crate::ops::audit::finish(
        &mut audit,
        if run.report.exit_status() == 0 {
            "succeeded"
        } else {
            "failed"
        },
        run.started,
        serde_json::json!({
            "switch": run.report.id,
            "kind": run.report.kind,
            "outcome": run.report.outcome,
            "write_pause_ms": run.report.write_pause_ms,
            "marker_lsn": run.report.marker_lsn,
            "error": run.report.error,
        }),
    );
    if let Err(e) = run.store.audit(&run.green, &audit).await {
        tracing::warn!(error = %crate::error::Report(&e), "no audit row for the switch");
    }
    run.report
}

/// The published (and selected) tables, from blue.
async fn tables(run: &Run<'_>) -> Result<Vec<QualifiedName>, Stop> {
    crate::ops::verify::schema::published_tables(
        &run.blue,
        &run.config.publications,
        &run.config.tables,
        &run.config.schema,
    )
    .await
    .map_err(sql_failed("listing the published tables on blue"))
}

async fn protocol(run: &mut Run<'_>) -> Result<(), Stop> {
    let t = now_ms();
    run.store.migrate(&mut run.green).await.map_err(|e| {
        failed(format!(
            "teal's schema on green: {}",
            crate::error::Report(&e)
        ))
    })?;
    undo_interrupted(run).await?;
    let direction = pair::direction(&run.green, &run.store, &run.config.slot)
        .await
        .map_err(sql_failed("reading the pair's direction"))?;
    match (run.kind, direction) {
        (SwitchKind::Cutover, Direction::Reverse) => {
            return Err(failed(
                "the pair is cut over already (green takes the writes): teal rollback goes back",
            ));
        }
        (SwitchKind::Rollback, Direction::Forward) => {
            return Err(failed("the pair is not cut over: nothing to roll back"));
        }
        _ => {}
    }
    run.green
        .execute(
            &format!(
                "INSERT INTO {}.switches (id, slot, kind, state, step) VALUES ($1::text::uuid, $2, $3, 'running', 'checks')",
                run.store.quoted()
            ),
            &[&run.id.to_string(), &run.config.slot, &run.report.kind],
        )
        .await
        .map_err(sql_failed("recording the switch on green"))?;
    run.step("start", t, None, format!("pair streams {direction:?}"));

    // 1. Go/no-go.
    let tables = tables(run).await?;
    go_no_go(run, &tables).await?;

    // 2. Fence the side being left (not when the time is up already).
    if run.remaining().is_zero() {
        return Err(Stop {
            outcome: "aborted",
            reason: format!(
                "--timeout ({:?}) passed during the checks: nothing was fenced",
                run.config.timeout
            ),
        });
    }
    let t = now_ms();
    run.set_step("fence").await?;
    let planned = fence::plan(run.left(), &run.config.fence)
        .await
        .map_err(|e| failed(crate::error::Report(&e).to_string()))?;
    // Recorded before it is put up: a crashed run's fence can be lifted.
    run.green
        .execute(
            &format!(
                "UPDATE {}.switches SET fence = $2::text::jsonb WHERE id = $1::text::uuid",
                run.store.quoted()
            ),
            &[
                &run.id.to_string(),
                &serde_json::to_string(&planned).unwrap_or_default(),
            ],
        )
        .await
        .map_err(sql_failed("recording the fence on green"))?;
    run.pause_started = Some(Instant::now());
    run.fenced = Some(planned.clone());
    fence::apply(run.left(), &planned, run.left_name())
        .await
        .map_err(|e| failed(crate::error::Report(&e).to_string()))?;
    let quiet = fence::wait_quiet(run.left(), run.remaining().min(QUIET_LIMIT))
        .await
        .map_err(|e| Stop {
            outcome: "aborted",
            reason: format!(
                "{} (the wait is the shorter of {QUIET_LIMIT:?} and what is left of --timeout {:?})",
                crate::error::Report(&e),
                run.config.timeout
            ),
        })?;
    run.step(
        "fence",
        t,
        None,
        format!(
            "{} fenced; writers finished in {} ms",
            run.left_name(),
            quiet.as_millis()
        ),
    );

    // 3. The marker, and the other side past it.
    let t = now_ms();
    run.set_step("marker").await?;
    let marker: Lsn = run
        .left()
        .query_one(
            "SELECT pg_catalog.pg_logical_emit_message(true, 'teal.cutover', $1)::text",
            &[&run.id.to_string()],
        )
        .await
        .map_err(sql_failed("writing the marker"))?
        .get::<_, String>(0)
        .parse()
        .map_err(|_| failed("the marker's LSN does not parse"))?;
    run.report.marker_lsn = Some(marker.to_string());
    let reached = wait_applied(run, marker).await?;
    run.step(
        "marker",
        t,
        Some(marker),
        format!("{} committed through {reached}", run.taking_name()),
    );

    // 4. Sequences.
    let t = now_ms();
    run.set_step("sequences").await?;
    let synced = crate::ops::sequences::sync(run.left(), run.taking(), &tables)
        .await
        .map_err(|e| failed(crate::error::Report(&e).to_string()))?;
    let again = crate::ops::sequences::sync(run.left(), run.taking(), &tables)
        .await
        .map_err(|e| failed(crate::error::Report(&e).to_string()))?;
    let missing: Vec<&str> = again
        .iter()
        .filter(|s| s.to_before.is_none())
        .map(|s| s.sequence.as_str())
        .collect();
    if !missing.is_empty() || again.iter().any(|s| s.moved) {
        return Err(failed(format!(
            "sequences not equal or ahead on {} after the copy (missing: {})",
            run.taking_name(),
            missing.join(", ")
        )));
    }
    let moved = synced.iter().filter(|s| s.moved).count();
    run.report.sequences = synced;
    run.step(
        "sequences",
        t,
        None,
        format!(
            "{} sequence(s), {moved} moved; {} >= {} for each",
            run.report.sequences.len(),
            run.taking_name(),
            run.left_name()
        ),
    );

    // 5. The way back, before the other side takes a write.
    let t = now_ms();
    run.set_step("way back").await?;
    match run.kind {
        SwitchKind::Cutover => {
            arm_way_back(run, &tables).await?;
            run.step(
                "way back",
                t,
                None,
                format!(
                    "slot {} and publication {} on green",
                    pair::reverse_slot(&run.config.slot),
                    pair::reverse_publication(&run.config.slot)
                ),
            );
        }
        SwitchKind::Rollback => {
            let kept = checks::slot_state(&run.blue, &run.config.slot)
                .await
                .map_err(sql_failed("reading the forward slot on blue"))?;
            if kept.is_none() {
                return Err(failed(format!(
                    "slot {} is gone from blue: the stream cannot resume there",
                    run.config.slot
                )));
            }
            run.step(
                "way back",
                t,
                None,
                format!("slot {} on blue", run.config.slot),
            );
        }
    }
    if run.config.rehearse {
        undo(run).await;
        run.report.outcome = "rehearsed";
        run.green
            .execute(
                &format!(
                    "UPDATE {}.switches SET state = 'done', step = 'rehearsed', updated_at = now() WHERE id = $1::text::uuid",
                    run.store.quoted()
                ),
                &[&run.id.to_string()],
            )
            .await
            .map_err(sql_failed("recording the rehearsal"))?;
        return Ok(());
    }
    if run.remaining().is_zero() {
        return Err(Stop {
            outcome: "aborted",
            reason: format!(
                "--timeout ({:?}) passed before the switch",
                run.config.timeout
            ),
        });
    }

    // 6. The switch.
    let t = now_ms();
    switch_stream(run).await?;
    // Past this point nothing is undone automatically.
    run.fenced = None;
    run.armed = false;
    run.step(
        "switch",
        t,
        None,
        format!(
            "the stream now streams {} -> {}",
            run.taking_name(),
            run.left_name()
        ),
    );
    if run.kind == SwitchKind::Rollback {
        let t = now_ms();
        let note = match drop_way_back(&run.green, &run.config.slot, Duration::from_secs(30)).await
        {
            Ok(()) => "slot and publication dropped on green".to_owned(),
            Err(e) => format!("not dropped ({e}): drop them by hand"),
        };
        run.step("way back dropped", t, None, note);
    }
    if let Some(hook) = run.config.switch_hook.clone() {
        let t = now_ms();
        let to = run.taking_name();
        if let Err(e) = fence::run_hook(
            &hook,
            &[("TEAL_SWITCH_TO", to), ("TEAL_SWITCH", run.report.kind)],
            run.remaining().max(Duration::from_secs(30)),
        )
        .await
        {
            mark_done(run, "switch hook failed").await;
            return Err(failed(format!(
                "the stream switched but --switch-hook failed ({e}): the writers were not repointed; \
                 {} stays fenced; rerun the hook by hand, or `teal {}` goes back",
                run.left_name(),
                if run.kind == SwitchKind::Cutover {
                    "rollback"
                } else {
                    "cutover"
                }
            )));
        }
        run.step("switch hook", t, None, "exit status 0");
    }
    let t = now_ms();
    let unfenced = unfence_taking_over(run).await?;
    if let Some(p) = run.pause_started {
        run.report.write_pause_ms = Some(p.elapsed().as_secs_f64() * 1000.0);
    }
    run.step("unfence", t, None, unfenced);
    mark_done(run, "done").await;
    run.report.outcome = "switched";
    Ok(())
}

/// The switch is over (past the point of no return), at `step`.
async fn mark_done(run: &Run<'_>, step: &str) {
    let _ = run
        .green
        .execute(
            &format!(
                "UPDATE {}.switches SET state = 'done', step = $2, updated_at = now() WHERE id = $1::text::uuid",
                run.store.quoted()
            ),
            &[&run.id.to_string(), &step],
        )
        .await;
}

/// The longest wait for the writers to finish once the side is fenced.
const QUIET_LIMIT: Duration = Duration::from_secs(30);

/// Waits (until `--timeout`) for the side taking over to commit past
/// `marker` on the running leg's slot; its committed end LSN.
async fn wait_applied(run: &Run<'_>, marker: Lsn) -> Result<Lsn, Stop> {
    loop {
        let at = applied_lsn(run).await?;
        if let Some(at) = at.filter(|at| *at >= marker) {
            return Ok(at);
        }
        if run.remaining().is_zero() {
            return Err(Stop {
                outcome: "aborted",
                reason: format!(
                    "--timeout ({:?}) passed before {} committed past the marker {marker} (at {})",
                    run.config.timeout,
                    run.taking_name(),
                    at.map_or("nothing".to_owned(), |l| l.to_string())
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
