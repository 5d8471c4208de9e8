//! Configuration: connection strings and the settings of each stage.
//!
//! Every field documents itself and has its default as an associated const;
//! `validate()` returns errors that name the command-line flag to fix.

mod conn_string;
mod conninfo;
mod file;
mod pgpass;
mod secret;

pub(crate) use conninfo::os_user;
pub use conninfo::{
    ChannelBinding, ConnInfo, ConnInfoError, EnvLookup, Host, HostAddr, Password, RootCert,
    SslMode, os_user_name,
};
pub use file::{ConfigFileError, FileFlag, env_from_file, env_from_toml};
pub use secret::Secret;

use std::path::PathBuf;
use std::time::Duration;

use crate::lsn::Lsn;

/// The session settings every type's text output depends on, in the one
/// canonical form teal uses everywhere it reads or writes values as text:
/// the replication connection (startup parameters), apply and copy
/// sessions (`-c` options) and verification (`SET`).
pub const CANONICAL_FORMATS: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
];

/// [`CANONICAL_FORMATS`] as `-c name=value` startup options.
pub fn canonical_format_options() -> String {
    CANONICAL_FORMATS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`CANONICAL_FORMATS`] as `SET` statements (for a session already open).
pub fn canonical_format_statements() -> String {
    CANONICAL_FORMATS
        .iter()
        .map(|(k, v)| format!("SET {k} = '{v}'"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A setting is out of its domain; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag}: {reason}")]
pub struct ConfigError {
    /// The command-line flag, e.g. `--slot`.
    pub flag: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// Whether to ask the server to stream large in-progress transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Streaming {
    /// On where the server supports it (PostgreSQL 14 and later).
    #[default]
    Auto,
    /// Required: fail on servers before 14.
    On,
    /// Never: large transactions are decoded on blue and sent at commit.
    Off,
}

impl std::str::FromStr for Streaming {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Streaming::Auto),
            "on" | "true" => Ok(Streaming::On),
            "off" | "false" => Ok(Streaming::Off),
            _ => Err(format!("{s:?} is not one of auto, on, off")),
        }
    }
}

/// What the source needs to open and follow a replication slot.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Blue: where the slot lives.
    pub conninfo: ConnInfo,
    /// The logical replication slot to read.
    pub slot: String,
    /// Publications whose tables are streamed.
    pub publications: Vec<String>,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// Start here instead of the slot's confirmed position (it is ignored when
    /// older than the slot's `confirmed_flush_lsn`, as PostgreSQL does).
    pub start_lsn: Option<Lsn>,
    /// Streaming of in-progress transactions.
    pub streaming: Streaming,
    /// Ask for the binary format of column values.
    pub binary: bool,
    /// Receive `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Longest time between two standby status updates.
    pub status_interval: Duration,
    /// First reconnect delay; doubles up to `reconnect_max_delay`.
    pub reconnect_min_delay: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max_delay: Duration,
    /// `--replication-timeout`: a session on which blue sends nothing for
    /// this long is ended and reopened, like PostgreSQL's
    /// `wal_receiver_timeout` (a reply is asked for at half of it); also the
    /// bound of each setup step and of TCP's wait for acknowledgements.
    /// `None`: wait forever.
    pub replication_timeout: Option<Duration>,
}

impl SourceConfig {
    /// PostgreSQL's `wal_receiver_status_interval` default.
    pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
    /// First retry after a lost connection.
    pub const DEFAULT_RECONNECT_MIN_DELAY: Duration = Duration::from_millis(200);
    /// Retries are never further apart than this.
    pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);
    /// PostgreSQL's `wal_receiver_timeout` default.
    pub const DEFAULT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

    /// A configuration with every optional setting at its default.
    pub fn new(conninfo: ConnInfo, slot: impl Into<String>, publications: Vec<String>) -> Self {
        SourceConfig {
            conninfo,
            slot: slot.into(),
            publications,
            create_slot: false,
            start_lsn: None,
            streaming: Streaming::Auto,
            binary: false,
            messages: true,
            status_interval: Self::DEFAULT_STATUS_INTERVAL,
            reconnect_min_delay: Self::DEFAULT_RECONNECT_MIN_DELAY,
            reconnect_max_delay: Self::DEFAULT_RECONNECT_MAX_DELAY,
            replication_timeout: Some(Self::DEFAULT_REPLICATION_TIMEOUT),
        }
    }

    /// Checks names and intervals before anything connects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_slot_name(&self.slot)?;
        if self.publications.is_empty() {
            return Err(ConfigError {
                flag: "--publication",
                reason: "at least one publication is needed".into(),
            });
        }
        for p in &self.publications {
            if p.is_empty() || p.len() > 63 || p.contains('\0') {
                return Err(ConfigError {
                    flag: "--publication",
                    reason: format!("{p:?} is not a valid publication name"),
                });
            }
        }
        if self.status_interval.is_zero() {
            return Err(ConfigError {
                flag: "--status-interval",
                reason: "must be greater than zero".into(),
            });
        }
        if self
            .replication_timeout
            .is_some_and(|t| t < Duration::from_secs(1))
        {
            return Err(ConfigError {
                flag: "--replication-timeout",
                reason: "must be at least 1s (or off)".into(),
            });
        }
        if self.reconnect_min_delay > self.reconnect_max_delay {
            return Err(ConfigError {
                flag: "--reconnect-max-delay",
                reason: "must not be below the minimum reconnect delay".into(),
            });
        }
        Ok(())
    }
}

/// PostgreSQL accepts slot names of lower-case letters, digits and underscores,
/// at most 63 bytes (`ReplicationSlotValidateName`).
pub fn validate_slot_name(slot: &str) -> Result<(), ConfigError> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            flag: "--slot",
            reason: format!(
                "{slot:?} is not a valid replication slot name: use 1-63 lower-case letters, digits and underscores"
            ),
        })
    }
}

/// How the assembler buffers transactions until their commit arrives.
#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    /// Buffered changes above this many bytes spill to disk.
    pub max_memory: u64,
    /// Directory for spill files (anonymous files, removed even on a crash).
    pub spill_dir: PathBuf,
    /// `--tables` / `--exclude-tables`: changes of other tables are left
    /// out of the stream (counted), so apply, Kafka and `teal sync`'s copy
    /// see the same tables.
    pub tables: TableSelection,
    /// Replication origins whose transactions are left out (their changes
    /// dropped, the transaction kept empty so the position moves on): the
    /// changes teal itself applied to this side, so that a stream back the
    /// other way (after a cutover, or a rollback) never echoes them. By
    /// name rather than PostgreSQL 16's `origin 'none'`, which would also
    /// drop what the side receives from its own upstream subscriptions.
    pub skip_origins: Vec<String>,
    /// teal's own schema on the side it applies to (`--schema`): its
    /// tables are never streamed (a `FOR ALL TABLES` publication on a
    /// side teal once applied to publishes them too).
    pub own_schema: Option<String>,
    /// `--mask` rules and their key: the changes of masked tables are
    /// masked before they leave the capture (see [`crate::mask`]).
    pub mask: Option<std::sync::Arc<crate::mask::MaskConfig>>,
}

/// `--tables` / `--exclude-tables`: which published tables teal copies,
/// applies and produces. An entry is `schema.name` (exact) or `name` (in
/// any schema).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSelection {
    /// Only these (empty: every published table).
    pub include: Vec<String>,
    /// Not these.
    pub exclude: Vec<String>,
}

impl TableSelection {
    /// Whether `table` is selected.
    pub fn selects(&self, table: &crate::event::QualifiedName) -> bool {
        let named = |entry: &String| {
            entry
                .split_once('.')
                .map_or(*entry == table.name, |(schema, name)| {
                    schema == table.namespace && name == table.name
                })
        };
        (self.include.is_empty() || self.include.iter().any(named))
            && !self.exclude.iter().any(named)
    }

    /// The first `--tables` entry that names none of `published`.
    pub fn unmatched<'a>(
        &'a self,
        published: &[crate::event::QualifiedName],
    ) -> Option<&'a String> {
        self.include.iter().find(|wanted| {
            let only = TableSelection {
                include: vec![(*wanted).clone()],
                exclude: Vec::new(),
            };
            !published.iter().any(|t| only.selects(t))
        })
    }

    /// Whether every table is selected.
    pub fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Checks that no entry is empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (flag, entries) in [
            ("--tables", &self.include),
            ("--exclude-tables", &self.exclude),
        ] {
            if entries.iter().any(|e| e.trim().is_empty()) {
                return Err(ConfigError {
                    flag,
                    reason: "an entry is empty (schema.table or table, comma-separated)".into(),
                });
            }
        }
        Ok(())
    }
}

impl AssemblerConfig {
    /// 256 MiB, the default.
    pub const DEFAULT_MAX_MEMORY: u64 = 256 * 1024 * 1024;
    /// The smallest bound accepted: below it, spilling would dominate.
    pub const MIN_MAX_MEMORY: u64 = 1024 * 1024;
    /// What the channels between the stages may hold at most (see
    /// `pipeline.rs`): 8 socket reads of up to 4 MiB and 16 event batches of
    /// about 1 MiB.
    pub const IN_FLIGHT_BYTES: u64 = 48 * 1024 * 1024;

    /// Bytes of buffered transactions the assembler keeps in memory before
    /// spilling: `max_memory` covers all change data teal holds, so the
    /// channels' share is taken off (at most a quarter of a small bound).
    pub fn buffer_budget(&self) -> u64 {
        self.max_memory - (self.max_memory / 4).min(Self::IN_FLIGHT_BYTES)
    }

    /// Checks the memory bound and that spill files can be created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_memory < Self::MIN_MAX_MEMORY {
            return Err(ConfigError {
                flag: "--max-memory",
                reason: format!("must be at least {} bytes (1MiB)", Self::MIN_MAX_MEMORY),
            });
        }
        tempfile::tempfile_in(&self.spill_dir).map_err(|e| ConfigError {
            flag: "--spill-dir",
            reason: format!("cannot create files in {}: {e}", self.spill_dir.display()),
        })?;
        self.tables.validate()
    }
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            max_memory: Self::DEFAULT_MAX_MEMORY,
            spill_dir: std::env::temp_dir(),
            tables: TableSelection::default(),
            skip_origins: Vec::new(),
            own_schema: None,
            mask: None,
        }
    }
}

/// Parses a byte size such as `16MiB`, `256MB`, `1GiB` or `1048576`.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 256MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?}: use B, kB, MB or GB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a duration such as `10s`, `250ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 250ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("256MB"), Ok(256 << 20));
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        assert!(parse_byte_size("12 parsecs").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn tables_are_selected_by_schema_and_name_or_name_alone() {
        let t = |s: &str, n: &str| crate::event::QualifiedName {
            namespace: s.into(),
            name: n.into(),
        };
        let all = TableSelection::default();
        assert!(all.is_all() && all.selects(&t("a", "b")));
        let some = TableSelection {
            include: vec!["sales.orders".into(), "items".into()],
            exclude: vec!["archive.items".into()],
        };
        assert!(some.selects(&t("sales", "orders")));
        assert!(!some.selects(&t("public", "orders")));
        assert!(some.selects(&t("public", "items")));
        assert!(!some.selects(&t("archive", "items")));
        let none_of = TableSelection {
            include: vec![],
            exclude: vec!["log".into()],
        };
        assert!(!none_of.selects(&t("public", "log")) && none_of.selects(&t("public", "logs")));
        let empty = TableSelection {
            include: vec!["a".into(), " ".into()],
            exclude: vec![],
        };
        assert_eq!(empty.validate().unwrap_err().flag, "--tables");
    }

    #[test]
    fn spill_dir_must_be_writable() {
        let config = AssemblerConfig {
            spill_dir: "/nonexistent/teal".into(),
            ..AssemblerConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().flag, "--spill-dir");
        assert!(AssemblerConfig::default().validate().is_ok());
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(validate_slot_name("teal_slot_1").is_ok());
        let err = validate_slot_name("Teal-Slot").unwrap_err();
        assert_eq!(err.flag, "--slot");
        assert!(validate_slot_name(&"a".repeat(64)).is_err());
    }
}
