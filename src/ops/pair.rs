//! A pair of databases and the one `teal stream` that serves it: which way
//! it streams, and the switches that turn it round (`teal cutover`, `teal
//! rollback`). The state lives on green (`teal.pairs`, `teal.switches`),
//! whichever way the stream runs.
//!
//! ```text
//! forward: blue (slot S, its publications) ──▶ green      skips origin teal_S_rev
//! reverse: green (slot S_rev, publication teal_S_rev) ──▶ blue   skips origin teal_S
//!
//! teal cutover:  ... fence blue, marker applied, sequences, S_rev created on green
//!                ──▶ switches.state = 'switch' ──▶ the stream finishes its leg (all it
//!                received committed), records direction = reverse and 'switched',
//!                and streams green -> blue from S_rev's creation point
//! teal rollback: the same the other way; S on blue resumes where it stopped
//! ```
//!
//! Each leg skips the transactions the other leg applied (by replication
//! origin, see [`crate::config::AssemblerConfig::skip_origins`]), so
//! nothing echoes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyError, origin_name};
use crate::ops::stream::StreamConfig;
use crate::store::Store;

/// Which way the stream of a pair runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Blue to green (before a cutover, after a rollback).
    #[default]
    Forward,
    /// Green to blue (after a cutover).
    Reverse,
}

/// The slot on green a reversed pair streams from (`<slot>_rev`).
pub fn reverse_slot(slot: &str) -> String {
    format!("{slot}_rev")
}

/// The publication on green a reversed pair streams (`teal_<slot>_rev`).
pub fn reverse_publication(slot: &str) -> String {
    format!("teal_{slot}_rev")
}

/// How often the stream reads switch requests.
pub const POLL: Duration = Duration::from_millis(100);

fn sql(context: &str) -> impl FnOnce(tokio_postgres::Error) -> ApplyError + '_ {
    move |source| ApplyError::Sql {
        context: context.to_owned(),
        source,
    }
}

/// Green's session for the pair's state (teal's schema migrated).
pub async fn control_session(config: &StreamConfig) -> Result<Client, ApplyError> {
    let mut client = crate::session::connect_plain(&config.apply.target, "teal control")
        .await
        .map_err(ApplyError::Connect)?;
    config
        .apply
        .store
        .migrate(&mut client)
        .await
        .map_err(ApplyError::Store)?;
    Ok(client)
}

/// The pair's direction, read through a new control session.
pub async fn read_direction(config: &StreamConfig) -> Result<Direction, ApplyError> {
    let green = control_session(config).await?;
    direction(&green, &config.apply.store, &config.apply.slot)
        .await
        .map_err(sql("reading the pair's direction"))
}

/// The pair's direction (forward when it never switched).
pub async fn direction(
    green: &Client,
    store: &Store,
    slot: &str,
) -> Result<Direction, tokio_postgres::Error> {
    let row = green
        .query_opt(
            &format!(
                "SELECT direction FROM {}.pairs WHERE slot = $1",
                store.quoted()
            ),
            &[&slot],
        )
        .await?;
    Ok(match row.map(|r| r.get::<_, String>(0)).as_deref() {
        Some("reverse") => Direction::Reverse,
        _ => Direction::Forward,
    })
}

/// The configuration of the leg `direction` of the pair `config` describes
/// (its forward configuration).
pub fn leg(config: &StreamConfig, direction: Direction) -> StreamConfig {
    let slot = &config.apply.slot;
    let mut leg = config.clone();
    // teal's own tables on either side are never streamed.
    leg.assembler.own_schema = Some(config.apply.store.schema().to_owned());
    match direction {
        Direction::Forward => {
            leg.assembler
                .skip_origins
                .push(origin_name(&reverse_slot(slot)));
        }
        Direction::Reverse => {
            let rev = reverse_slot(slot);
            leg.source.conninfo = config.apply.target.clone();
            leg.source.slot = rev.clone();
            leg.source.publications = vec![reverse_publication(slot)];
            leg.source.create_slot = false;
            leg.source.start_lsn = None;
            leg.apply.target = config.source.conninfo.clone();
            leg.apply.slot = rev;
            leg.assembler.skip_origins.push(origin_name(slot));
            // Every published table of the reverse publication.
            leg.assembler.tables = crate::config::TableSelection::default();
            leg.kafka = None;
            leg.no_apply = false;
        }
    }
    leg
}

/// A switch the running stream was asked to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRequest {
    /// The switch's id.
    pub id: uuid::Uuid,
    /// The direction after it.
    pub to: Direction,
}

/// What the stream's switch watcher shares with the stream: the current
/// leg's stop token and the request that stopped it.
#[derive(Default)]
pub struct Switches {
    leg: Mutex<Option<CancellationToken>>,
    request: Mutex<Option<SwitchRequest>>,
}

impl Switches {
    /// A leg starts: a request ends it through `token`.
    pub fn leg_started(&self, token: CancellationToken) {
        let mut leg = crate::progress::lock(&self.leg);
        // A request that came while no leg ran ends this one at once.
        if crate::progress::lock(&self.request).is_some() {
            token.cancel();
        }
        *leg = Some(token);
    }

    /// The request that ended the last leg, if one did (it stays until
    /// [`Self::done`]).
    pub fn pending(&self) -> Option<SwitchRequest> {
        crate::progress::lock(&self.request).clone()
    }

    /// `request` is recorded: the next one may come.
    pub fn done(&self, request: &SwitchRequest) {
        let mut pending = crate::progress::lock(&self.request);
        if pending.as_ref() == Some(request) {
            *pending = None;
        }
    }

    fn requested(&self, request: SwitchRequest) {
        let mut pending = crate::progress::lock(&self.request);
        if pending.is_some() {
            return;
        }
        *pending = Some(request);
        drop(pending);
        if let Some(leg) = crate::progress::lock(&self.leg).as_ref() {
            leg.cancel();
        }
    }
}

/// Reads switch requests for the pair on green until `stop`: a request
/// (state `switch`) whose direction differs from `current` ends the
/// running leg. Errors are retried quietly (the stream reports green's).
pub async fn watch(
    config: StreamConfig,
    switches: Arc<Switches>,
    current: Arc<Mutex<Direction>>,
    stop: CancellationToken,
) {
    let slot = config.apply.slot.clone();
    let query = format!(
        "SELECT id::text, kind FROM {}.switches WHERE slot = $1 AND state = 'switch' \
         ORDER BY requested_at DESC LIMIT 1",
        config.apply.store.quoted()
    );
    let mut client: Option<Client> = None;
    let mut turns: u64 = 0;
    let mut warned: std::collections::HashMap<String, std::time::Instant> = Default::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = control_session(&config).await.ok();
        }
        let Some(c) = client.as_ref() else { continue };
        turns += 1;
        if turns % 20 == 0 {
            warn_unfinished(c, &config, &mut warned).await;
        }
        let Ok(row) = c.query_opt(&query, &[&slot]).await else {
            client = None;
            continue;
        };
        let Some(row) = row else { continue };
        let (id, kind): (String, String) = (row.get(0), row.get(1));
        let Ok(id) = id.parse() else { continue };
        let to = if kind == "rollback" {
            Direction::Forward
        } else {
            Direction::Reverse
        };
        if *crate::progress::lock(&current) != to {
            tracing::info!(switch = %id, kind = %kind, "switch requested: finishing this leg");
            switches.requested(SwitchRequest { id, to });
        }
    }
}

/// How long a switch may stay at one step before the stream says it looks
/// interrupted.
const STUCK_AFTER_SECONDS: f64 = 30.0;

/// Says (every minute) what a switch that looks interrupted left behind
/// and the command that undoes it: a side fenced by a cutover or rollback
/// that stopped before the switch, or a switch the stream made whose
/// command never finished (switch hook, unfence).
async fn warn_unfinished(
    green: &Client,
    config: &StreamConfig,
    warned: &mut std::collections::HashMap<String, std::time::Instant>,
) {
    let Ok(rows) = green
        .query(
            &format!(
                "SELECT id::text, kind, state, step FROM {}.switches \
                 WHERE slot = $1 AND ((state = 'running' AND fence IS NOT NULL) OR state = 'switched') \
                   AND extract(epoch FROM now() - updated_at)::float8 > $2::float8",
                config.apply.store.quoted()
            ),
            &[&config.apply.slot, &STUCK_AFTER_SECONDS],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let (id, kind, state, step): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if warned
            .get(&id)
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            continue;
        }
        warned.insert(id.clone(), std::time::Instant::now());
        let side = if kind == "rollback" { "green" } else { "blue" };
        if state == "running" {
            tracing::error!(
                switch = %id,
                step = %step,
                "{side} is fenced by {kind} {id}, which has not moved for {STUCK_AFTER_SECONDS} s (at step {step}); \
                 if that command is no longer running, `teal {kind} --abort` with the same --source, --target, \
                 --slot and --publication lifts the fence (a new `teal {kind}` does too, then starts over)"
            );
        } else {
            tracing::error!(
                switch = %id,
                "{kind} {id} switched the stream but did not finish (switch hook, unfence): \
                 the writers may not be repointed; run the switch hook by hand and lift the fence \
                 of the side taking over, or go back with `teal {}`",
                if kind == "rollback" { "cutover" } else { "rollback" }
            );
        }
    }
}

/// Records on green that the stream switched: the switch's state
/// `switched` and the pair's direction, in one transaction. `false` (and
/// nothing changed) when the command withdrew the request meanwhile (its
/// timeout): the stream then goes on the way it went.
pub async fn record_switched(
    config: &StreamConfig,
    request: &SwitchRequest,
) -> Result<bool, ApplyError> {
    let mut green = control_session(config).await?;
    let schema = config.apply.store.quoted();
    let slot = &config.apply.slot;
    let direction = match request.to {
        Direction::Forward => "forward",
        Direction::Reverse => "reverse",
    };
    let tx = green
        .transaction()
        .await
        .map_err(sql("recording a switch"))?;
    let taken = tx
        .execute(
            &format!(
                "UPDATE {schema}.switches SET state = 'switched', updated_at = now() \
                 WHERE id = $1::text::uuid AND state = 'switch'"
            ),
            &[&request.id.to_string()],
        )
        .await
        .map_err(sql("recording a switch"))?;
    if taken == 0 {
        tracing::warn!(switch = %request.id, "the switch was withdrawn before the stream switched; going on as before");
        return Ok(false);
    }
    tx.execute(
        &format!(
            "INSERT INTO {schema}.pairs (slot, direction, reverse_slot, reverse_publication, switched_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (slot) DO UPDATE SET direction = $2, reverse_slot = $3, \
               reverse_publication = $4, switched_at = now(), updated_at = now()"
        ),
        &[&slot, &direction, &reverse_slot(slot), &reverse_publication(slot)],
    )
    .await
    .map_err(sql("recording the pair's direction"))?;
    tx.commit().await.map_err(sql("recording a switch"))?;
    Ok(true)
}

/// `--fence-target-roles` while streaming blue -> green: unless a fence is
/// already up on green, the roles are fenced there (NOLOGIN, sessions
/// ended) and the fence recorded as a finished rollback's, which the next
/// cutover lifts.
pub async fn fence_green(config: &StreamConfig) -> Result<(), ApplyError> {
    let green = control_session(config).await?;
    let schema = config.apply.store.quoted();
    let up: bool = green
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {schema}.switches WHERE slot = $1 AND kind = 'rollback' \
                   AND state IN ('done', 'switched') AND fence IS NOT NULL \
                   AND NOT coalesce((fence->>'lifted')::bool, false))"
            ),
            &[&config.apply.slot],
        )
        .await
        .map_err(sql("reading green's fence"))?
        .get(0);
    if up {
        return Ok(());
    }
    let fence = crate::ops::cutover::Fence::Roles(config.fence_target_roles.clone());
    let refused = |e: crate::ops::cutover::fence::FenceError| ApplyError::Unresolvable {
        table: crate::event::QualifiedName {
            namespace: String::new(),
            name: String::new(),
        },
        lsn: crate::lsn::Lsn::ZERO,
        commit_lsn: crate::lsn::Lsn::ZERO,
        reason: format!("--fence-target-roles: {}", crate::error::Report(&e)),
    };
    let planned = crate::ops::cutover::fence::plan(&green, &fence)
        .await
        .map_err(refused)?;
    green
        .execute(
            &format!(
                "INSERT INTO {schema}.switches (id, slot, kind, state, step, fence) \
                 VALUES ($1::text::uuid, $2, 'rollback', 'done', 'mirror fence', $3::text::jsonb)"
            ),
            &[
                &uuid::Uuid::new_v4().to_string(),
                &config.apply.slot,
                &serde_json::to_string(&planned).unwrap_or_default(),
            ],
        )
        .await
        .map_err(sql("recording green's fence"))?;
    crate::ops::cutover::fence::apply(&green, &planned, "green")
        .await
        .map_err(refused)?;
    tracing::info!(roles = ?config.fence_target_roles, "green fenced for the application roles while mirroring");
    Ok(())
}

/// The pair's legs: the direction the stream runs now, and the switch
/// requests that end a leg.
#[derive(Default)]
pub struct Legs {
    /// The direction the stream runs now.
    pub direction: Arc<std::sync::Mutex<Direction>>,
    /// The switch requests that end a leg.
    pub switches: Arc<Switches>,
}

/// Before each attempt: records a switch that ended the last leg, reads
/// which way the pair streams, and gives that leg's configuration.
pub async fn next_leg(
    config: &StreamConfig,
    legs: &Legs,
    current: &mut Option<Direction>,
) -> Result<StreamConfig, ApplyError> {
    if config.no_apply {
        return Ok(config.clone());
    }
    if let Some(request) = legs.switches.pending() {
        // Green holds masked values: streaming them back would overwrite
        // production with them. The cutover waits in vain and aborts at
        // its --timeout, lifting its fence.
        if request.to == Direction::Reverse && config.assembler.mask.is_some() {
            tracing::error!(
                switch = %request.id,
                "refusing to cut over: this stream masks columns (--mask), so green is not a copy of blue to switch to; the cutover aborts at its --timeout"
            );
            legs.switches.done(&request);
            return Ok(leg(config, *current.get_or_insert(Direction::Forward)));
        }
        if record_switched(config, &request).await? {
            tracing::info!(switch = %request.id, direction = ?request.to, "switched");
        }
        legs.switches.done(&request);
    }
    let direction = read_direction(config).await?;
    if direction == Direction::Forward && !config.fence_target_roles.is_empty() {
        fence_green(config).await?;
    }
    if direction == Direction::Reverse && config.kafka.is_some() && *current != Some(direction) {
        tracing::warn!(
            "the Kafka audit stream is not produced while the pair streams green -> blue"
        );
    }
    if *current != Some(direction) && direction == Direction::Reverse {
        tracing::info!(
            slot = %reverse_slot(&config.apply.slot),
            "streaming green -> blue (the pair was cut over)"
        );
    }
    *current = Some(direction);
    *crate::progress::lock(&legs.direction) = direction;
    Ok(leg(config, direction))
}
