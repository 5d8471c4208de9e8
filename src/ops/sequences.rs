//! Sequences are not replicated: the ones the published tables use (owned
//! by a column, serial or identity, or named in a column's default) are
//! copied from one side to the other by value, never backwards.
//!
//! ```text
//! from: pg_depend (owned, and defaults' nextval) ──▶ each sequence's (last_value, is_called)
//!   ──▶ to: setval(seq, last_value, is_called) where it is behind (by the increment's sign)
//! ```
//!
//! Used by `teal stream --sync-sequences` (continuously, so a cutover has
//! little left to do) and by `teal cutover`/`teal rollback` (once, with the
//! writers fenced, then checked: to >= from).

use serde::Serialize;
use tokio_postgres::Client;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::event::QualifiedName;
use crate::ops::pair::Direction;
use crate::ops::stream::StreamConfig;

/// One sequence's positions on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SequenceState {
    /// `schema.name`, quoted as needed (regclass text on the source).
    pub sequence: String,
    /// The source's last value and whether it was handed out.
    pub from: (i64, bool),
    /// The target's before the sync (`None`: no such sequence there).
    pub to_before: Option<(i64, bool)>,
    /// Whether the target was moved.
    pub moved: bool,
}

/// The sequences `tables` use on `client`: owned by one of their columns
/// (serial, identity) or named by a column default (`nextval('s')`),
/// as regclass text, sorted.
pub async fn used_by(
    client: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let rows = client
        .query(
            "WITH t AS (SELECT n::regclass::oid AS oid FROM unnest($1::text[]) n)
             SELECT DISTINCT s.oid::regclass::text FROM pg_catalog.pg_class s
             WHERE s.relkind = 'S' AND (
               EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN t ON t.oid = d.refobjid
                       WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.oid
                         AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i'))
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
                          JOIN t ON t.oid = ad.adrelid
                          WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass
                            AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = s.oid))
             ORDER BY 1",
            &[&names],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A sequence's (last_value, is_called, increment), `None` when it does
/// not exist on `client`.
async fn position(
    client: &Client,
    sequence: &str,
) -> Result<Option<(i64, bool, i64)>, tokio_postgres::Error> {
    let exists: Option<i64> = client
        .query_opt(
            "SELECT seqincrement FROM pg_catalog.pg_sequence WHERE seqrelid = pg_catalog.to_regclass($1)",
            &[&sequence],
        )
        .await?
        .map(|r| r.get(0));
    let Some(increment) = exists else {
        return Ok(None);
    };
    // The name comes from regclass output: quoted as SQL needs it.
    let row = client
        .query_one(
            &format!("SELECT last_value, is_called FROM {sequence}"),
            &[],
        )
        .await?;
    Ok(Some((row.get(0), row.get(1), increment)))
}

/// Whether position `a` is behind `b` for a sequence moving by `increment`.
fn behind(a: (i64, bool), b: (i64, bool), increment: i64) -> bool {
    // The next value each would hand out.
    let next = |(last, called): (i64, bool)| -> i128 {
        i128::from(last) + if called { i128::from(increment) } else { 0 }
    };
    if increment >= 0 {
        next(a) < next(b)
    } else {
        next(a) > next(b)
    }
}

/// Why a sequence could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    /// A query on the source failed.
    #[error("{context} on the source")]
    From {
        /// What was being read.
        context: String,
        /// What the server said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query on the target failed.
    #[error("{context} on the target")]
    To {
        /// What was being done.
        context: String,
        /// What the server said.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Moves each sequence `tables` use on `to` up to `from`'s position where
/// it is behind (never back). A sequence missing on `to` is reported with
/// `to_before: None` and not created.
pub async fn sync(
    from: &Client,
    to: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<SequenceState>, SequenceError> {
    let sequences = used_by(from, tables)
        .await
        .map_err(|source| SequenceError::From {
            context: "listing the tables' sequences".into(),
            source,
        })?;
    let mut states = Vec::with_capacity(sequences.len());
    for sequence in sequences {
        let Some((last, called, increment)) =
            position(from, &sequence)
                .await
                .map_err(|source| SequenceError::From {
                    context: format!("reading sequence {sequence}"),
                    source,
                })?
        else {
            continue;
        };
        let to_before = position(to, &sequence)
            .await
            .map_err(|source| SequenceError::To {
                context: format!("reading sequence {sequence}"),
                source,
            })?
            .map(|(l, c, _)| (l, c));
        let moved = match to_before {
            Some(t) if behind(t, (last, called), increment) => {
                to.execute(
                    "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                    &[&sequence, &last, &called],
                )
                .await
                .map_err(|source| SequenceError::To {
                    context: format!("setting sequence {sequence}"),
                    source,
                })?;
                true
            }
            _ => false,
        };
        states.push(SequenceState {
            sequence,
            from: (last, called),
            to_before,
            moved,
        });
    }
    Ok(states)
}

/// `--sync-sequences`: every `every`, blue's sequences of the published
/// (and selected) tables onto green, never backwards. Failures are logged
/// (once each until it works again) and retried at the next turn: the
/// stream itself does not depend on it.
pub async fn keep_synced(
    config: StreamConfig,
    every: Duration,
    direction: std::sync::Arc<std::sync::Mutex<Direction>>,
    stop: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // After a cutover, green's are the ones in use: blue follows them.
        let reversed = *crate::progress::lock(&direction) == Direction::Reverse;
        let turn = async {
            let blue = crate::session::connect_plain(&config.source.conninfo, "teal sequences")
                .await
                .map_err(|e| format!("connecting to blue: {}", crate::error::Report(&e)))?;
            let green = crate::session::connect_plain(&config.apply.target, "teal sequences")
                .await
                .map_err(|e| format!("connecting to green: {}", crate::error::Report(&e)))?;
            let (from, to) = if reversed {
                (&green, &blue)
            } else {
                (&blue, &green)
            };
            let tables: Vec<_> =
                crate::session::published_tables(&blue, &config.source.publications)
                    .await
                    .map_err(|e| {
                        format!("listing the published tables: {}", crate::error::Report(&e))
                    })?
                    .into_iter()
                    .filter(|t| config.assembler.tables.selects(t))
                    .collect();
            let states = sync(from, to, &tables)
                .await
                .map_err(|e| crate::error::Report(&e).to_string())?;
            Ok::<_, String>(states)
        };
        match turn.await {
            Ok(states) => {
                let moved = states.iter().filter(|s| s.moved).count();
                let missing: Vec<&str> = states
                    .iter()
                    .filter(|s| s.to_before.is_none())
                    .map(|s| s.sequence.as_str())
                    .collect();
                tracing::debug!(sequences = states.len(), moved, "sequences synced");
                let error = (!missing.is_empty())
                    .then(|| format!("sequences missing on green: {}", missing.join(", ")));
                if error.is_some() && error != last_error {
                    tracing::warn!(
                        error = error.as_deref().unwrap_or_default(),
                        "--sync-sequences"
                    );
                }
                last_error = error;
            }
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "--sync-sequences failed; trying again at the next turn");
                }
                last_error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::behind;

    #[test]
    fn behind_follows_the_increments_sign_and_is_called() {
        assert!(behind((5, true), (6, true), 1));
        assert!(behind((5, false), (5, true), 1));
        assert!(!behind((5, true), (5, false), 1));
        assert!(!behind((7, true), (6, true), 1));
        // Counting down: 5 is ahead of 6.
        assert!(!behind((5, true), (6, true), -1));
        assert!(behind((6, true), (5, true), -1));
        // Steps of 10: last 10 handed out equals 20 not yet handed out.
        assert!(!behind((10, true), (20, false), 10));
        assert!(!behind((i64::MAX, true), (i64::MAX, true), 1));
    }
}
