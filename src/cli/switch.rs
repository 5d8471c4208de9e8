//! `teal cutover` and `teal rollback`: the same flags, the switch either
//! way (see teal::ops::cutover).

use std::time::Duration;

use clap::Args;

use teal::config;
use teal::ops::cutover::{CutoverConfig, Fence};

use super::compare::{CompareArgs, TableArgs};

#[derive(Args)]
pub(crate) struct SwitchArgs {
    #[command(flatten)]
    pub(crate) sides: CompareArgs,

    #[command(flatten)]
    pub(crate) tables: TableArgs,

    /// Fence the side being left by these roles: NOLOGIN, their sessions
    /// ended (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["fence_database", "fence_hook"])]
    pub(crate) fence_roles: Vec<String>,

    /// Fence the side being left database-wide: CONNECTION LIMIT 0, other
    /// roles' sessions ended (superusers are not limited).
    #[arg(long, conflicts_with = "fence_hook")]
    pub(crate) fence_database: bool,

    /// Fence with this command (sh -c; TEAL_FENCE=fence or unfence,
    /// TEAL_SIDE=blue or green in its environment).
    #[arg(long)]
    pub(crate) fence_hook: Option<String>,

    /// Run after the stream switched, before the side taking over is
    /// unfenced (TEAL_SWITCH_TO=green or blue): repoint the writers.
    #[arg(long)]
    pub(crate) switch_hook: Option<String>,

    /// No-go when the stream is further behind than this, e.g. 1MB.
    #[arg(long, default_value = "1MB", value_parser = config::parse_byte_size)]
    pub(crate) max_lag: u64,

    /// No-go when the predicted write pause (lag / catch-up rate) is longer.
    #[arg(long, default_value = "2s", value_parser = config::parse_duration)]
    pub(crate) max_pause: Duration,

    /// Abort (everything back as it was) when the switch has not happened
    /// this long after the start.
    #[arg(long, default_value = "300s", value_parser = config::parse_duration)]
    pub(crate) timeout: Duration,

    /// Run teal verify first: no-go unless green equals blue.
    #[arg(long)]
    pub(crate) verify: bool,

    /// NAME=SQL for --verify (repeatable).
    #[arg(long = "invariant", value_parser = super::compare::parse_invariant)]
    pub(crate) invariants: Vec<(String, String)>,

    /// Checks, fence, marker, sequences and the way back, then everything
    /// back as it was: the report shows the write pause.
    #[arg(long)]
    pub(crate) rehearse: bool,

    /// Only undo what an interrupted (killed) cutover or rollback left: its
    /// fence lifted, its way back dropped.
    #[arg(long)]
    pub(crate) abort: bool,

    /// text (for people) or json (for programs) on stdout.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) format: String,
}

impl SwitchArgs {
    /// The switch these flags ask for.
    pub(crate) fn config(self) -> anyhow::Result<CutoverConfig> {
        let fence = match (
            self.fence_roles.is_empty(),
            self.fence_database,
            self.fence_hook,
        ) {
            (false, _, _) => Fence::Roles(self.fence_roles),
            (true, true, _) => Fence::Database,
            (true, false, Some(hook)) => Fence::Hook(hook),
            (true, false, None) if self.abort => Fence::Roles(Vec::new()),
            (true, false, None) => anyhow::bail!(
                "give one of --fence-roles, --fence-database or --fence-hook: \
                 without a fence, writes on the side being left would be lost"
            ),
        };
        let sides = self.sides.config()?;
        let tables = self.tables.selection()?;
        Ok(CutoverConfig {
            source: sides.source,
            target: sides.target,
            slot: sides.slot,
            publications: sides.publications,
            tables,
            schema: sides.schema,
            fence,
            switch_hook: self.switch_hook,
            max_lag: self.max_lag,
            max_pause: self.max_pause,
            timeout: self.timeout,
            verify: self.verify,
            invariants: self.invariants,
            rehearse: self.rehearse,
        })
    }
}
