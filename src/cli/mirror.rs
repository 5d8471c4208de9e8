//! The staging-mirror commands and flags: `teal ddl`, `teal audit` and the
//! `--mask` rules (with their key) that stream, sync and verify share.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use teal::config;
use teal::store::Store;

#[derive(Args)]
pub(crate) struct DdlArgs {
    #[command(subcommand)]
    pub(crate) command: DdlCommand,
}

#[derive(Subcommand)]
pub(crate) enum DdlCommand {
    /// Create the event trigger on blue (needs a superuser).
    Install(DdlBlueArgs),
    /// Remove it.
    Uninstall(DdlBlueArgs),
    /// Record on green that the DDL statement at --lsn was run there by hand
    /// (teal stream stopped on it): the stream skips it from now on.
    Resolve(DdlResolveArgs),
}

#[derive(Args)]
pub(crate) struct DdlBlueArgs {
    /// Blue (libpq URL or key=value string).
    #[arg(long, env = "TEAL_SOURCE_URL", hide_env_values = true)]
    pub(crate) source: String,

    /// The stream's publication (decides which DDL is sent as published).
    #[arg(long, env = "TEAL_PUBLICATION")]
    pub(crate) publication: Option<String>,

    /// Schema on blue for the trigger's functions.
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    pub(crate) schema: String,
}

#[derive(Args)]
pub(crate) struct DdlResolveArgs {
    /// Green (libpq URL or key=value string).
    #[arg(long, env = "TEAL_TARGET_URL", hide_env_values = true)]
    pub(crate) target: String,

    /// The stream's slot.
    #[arg(long, env = "TEAL_SLOT")]
    pub(crate) slot: String,

    /// The LSN the stream's error named.
    #[arg(long)]
    pub(crate) lsn: teal::lsn::Lsn,

    /// teal's schema on green.
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    pub(crate) schema: String,
}

#[derive(Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    pub(crate) command: AuditCommand,
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Recompute the ledger's chain (teal.ledger) and name the first broken
    /// link: a row edited, deleted or inserted afterwards. Exit status 0
    /// intact, 1 broken, 2 could not check.
    Verify(AuditVerifyArgs),
}

#[derive(Args)]
pub(crate) struct AuditVerifyArgs {
    /// Green (libpq URL or key=value string).
    #[arg(long, env = "TEAL_TARGET_URL", hide_env_values = true)]
    pub(crate) target: String,

    /// Only this slot's chain (default: every slot's).
    #[arg(long, env = "TEAL_SLOT")]
    pub(crate) slot: Option<String>,

    /// teal's schema on green.
    #[arg(long, env = "TEAL_SCHEMA", default_value = Store::DEFAULT_SCHEMA)]
    pub(crate) schema: String,

    /// text (for people) or json (for programs) on stdout.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) format: String,
}

/// Masking rules and where their key is.
#[derive(Args)]
pub(crate) struct MaskArgs {
    /// Mask a column: schema.table.column=rule, one per flag (rules: keep,
    /// null, constant:TEXT, redact, hash, hash-email, hash-phone). In the
    /// config file: [mask."schema.table"] column = "rule". The key comes
    /// from TEAL_MASK_KEY or --mask-key-file, never the command line.
    #[arg(long, env = "TEAL_MASK", value_delimiter = '\n')]
    pub(crate) mask: Vec<String>,

    /// File holding the mask key (its bytes, surrounding whitespace
    /// trimmed; at least 16). Without it, TEAL_MASK_KEY.
    #[arg(long, env = "TEAL_MASK_KEY_FILE")]
    pub(crate) mask_key_file: Option<PathBuf>,
}

impl MaskArgs {
    /// The rules with their key (`None` without rules).
    pub(crate) fn config(
        self,
    ) -> Result<Option<std::sync::Arc<teal::mask::MaskConfig>>, config::ConfigError> {
        if self.mask.is_empty() {
            return Ok(None);
        }
        let bad = |reason| config::ConfigError {
            flag: "--mask",
            reason,
        };
        let key = teal::mask::load_key(self.mask_key_file.as_deref(), &|k| std::env::var(k).ok())
            .map_err(bad)?;
        let rules = teal::mask::MaskConfig::parse(&self.mask, key).map_err(bad)?;
        Ok(Some(std::sync::Arc::new(rules)))
    }
}
