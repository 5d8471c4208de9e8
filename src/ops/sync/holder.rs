//! The snapshot holder: the replication connection that created the slot
//! and exported the copy's snapshot, kept in its own process so that the
//! snapshot outlives a `teal sync` that is killed. A new `teal sync` then
//! imports the same snapshot and copies only the chunks still missing, and
//! every chunk stays consistent with the slot.
//!
//! ```text
//! teal sync ──spawn (own process group)──▶ teal snapshot-holder
//!     ◀── {"snapshot": .., "consistent_point": .., "pid": ..} (one line on stdout)
//!     ... copy ...                         holds the connection open
//!     ──SIGTERM when the copy is done──▶   exits
//! teal sync killed: the holder keeps the snapshot for --orphan-timeout,
//! then exits (a held snapshot keeps blue's VACUUM from removing rows).
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::config::ConnInfo;
use crate::lsn::Lsn;
use crate::source::{ReplicationClient, SnapshotAction};

use super::SyncError;

/// How to start a holder process.
#[derive(Clone)]
pub struct HolderCommand {
    /// The teal binary.
    pub program: PathBuf,
    /// Blue's connection string as the user gave it (TLS files and all);
    /// passed in the environment, never on the command line.
    pub source_url: String,
    /// How long an orphaned holder keeps the snapshot.
    pub orphan_timeout: Duration,
}

impl std::fmt::Debug for HolderCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HolderCommand")
            .field("program", &self.program)
            .field("orphan_timeout", &self.orphan_timeout)
            .finish_non_exhaustive()
    }
}

/// What the holder reports once the slot exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The exported snapshot.
    pub snapshot: String,
    /// The slot's consistent point.
    pub consistent_point: Lsn,
    /// The holder's process id.
    pub pid: u32,
}

/// [`Held`] on the holder's stdout.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    snapshot: String,
    consistent_point: String,
    pid: u32,
}

impl Held {
    fn to_line(&self) -> String {
        serde_json::to_string(&Wire {
            snapshot: self.snapshot.clone(),
            consistent_point: self.consistent_point.to_string(),
            pid: self.pid,
        })
        .unwrap_or_default()
    }

    fn from_line(line: &str) -> Option<Held> {
        let w: Wire = serde_json::from_str(line.trim()).ok()?;
        Some(Held {
            snapshot: w.snapshot,
            consistent_point: w.consistent_point.parse().ok()?,
            pid: w.pid,
        })
    }
}

/// A holder, in this process or another.
pub enum Holder {
    /// The exporting connection lives here (dies with this process).
    InProcess(ReplicationClient),
    /// A child process.
    Process(tokio::process::Child),
    /// A holder an earlier `teal sync` started (pid on this host).
    Adopted(u32),
    /// None (the copy had finished, or there was nothing to hold).
    Gone,
}

impl Holder {
    /// Creates the slot with an exported snapshot, in a holder process when
    /// `command` is given, else on `repl`.
    pub async fn create(
        command: Option<&HolderCommand>,
        mut repl: ReplicationClient,
        slot: &str,
        shutdown: &CancellationToken,
    ) -> Result<(Holder, Held), SyncError> {
        let Some(command) = command else {
            let held = export(&mut repl, slot).await?;
            return Ok((Holder::InProcess(repl), held));
        };
        repl.close().await;
        let mut child = tokio::process::Command::new(&command.program)
            .args(["snapshot-holder", "--slot", slot, "--orphan-timeout"])
            .arg(format!("{}s", command.orphan_timeout.as_secs().max(1)))
            .env("TEAL_SOURCE_URL", &command.source_url)
            .env_remove("TEAL_CONFIG")
            // Its own process group: a Ctrl-C or kill of teal's group spares it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                SyncError::Setup(format!(
                    "cannot start the snapshot holder ({}): {e}",
                    command.program.display()
                ))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SyncError::Setup("the snapshot holder has no stdout".into()))?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = tokio::select! {
            r = reader.read_line(&mut line) => r,
            () = shutdown.cancelled() => {
                terminate(child.id());
                return Err(SyncError::Setup("stopped while creating the slot".into()));
            }
        };
        let held: Option<Held> = match read {
            Ok(n) if n > 0 => Held::from_line(&line),
            _ => None,
        };
        match held {
            Some(held) => Ok((Holder::Process(child), held)),
            None => {
                let status = child.wait().await.ok();
                Err(SyncError::Setup(format!(
                    "the snapshot holder did not create the slot (it exited with {}; see its log above)",
                    status.map_or_else(|| "an unknown status".into(), |s| s.to_string())
                )))
            }
        }
    }

    /// Lets the snapshot go (the copy is done or abandoned).
    pub async fn release(self) {
        match self {
            Holder::InProcess(repl) => repl.close().await,
            Holder::Process(mut child) => {
                terminate(child.id());
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            }
            // Only if that pid still is a holder (pids are reused).
            Holder::Adopted(pid) => {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == b"snapshot-holder")
                {
                    terminate(Some(pid));
                }
            }
            Holder::Gone => {}
        }
    }
}

/// Creates `slot` on `repl` with an exported snapshot (this process holds it).
async fn export(repl: &mut ReplicationClient, slot: &str) -> Result<Held, SyncError> {
    let created = repl.create_slot(slot, SnapshotAction::Export).await?;
    Ok(Held {
        snapshot: created.snapshot_name.ok_or_else(|| {
            SyncError::Setup("blue exported no snapshot with the new slot".into())
        })?,
        consistent_point: created.consistent_point,
        pid: std::process::id(),
    })
}

fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we started (or recorded) and SIGTERM.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// `teal snapshot-holder`: creates `slot` with an exported snapshot, prints
/// `Held` as one JSON line, and keeps the connection open until SIGTERM or
/// SIGINT, or until its parent has been gone for `orphan_timeout`.
pub async fn hold(
    source: &ConnInfo,
    slot: &str,
    orphan_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), SyncError> {
    let parent = std::os::unix::process::parent_id();
    let mut repl = ReplicationClient::connect(source).await?;
    let held = export(&mut repl, slot).await?;
    let line = held.to_line();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    tracing::info!(slot = %slot, snapshot = %held.snapshot, "holding the copy's snapshot");
    let mut orphaned_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = stop.cancelled() => break,
        }
        if std::os::unix::process::parent_id() != parent {
            let since = *orphaned_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= orphan_timeout {
                tracing::warn!(slot = %slot, "teal sync has been gone for --orphan-timeout: releasing the snapshot");
                break;
            }
        }
    }
    repl.close().await;
    Ok(())
}
