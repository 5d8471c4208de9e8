//! Replication commands over a `replication=database` session.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-replication.html>.
//! A database replication session also accepts plain SQL, which is how the
//! slot and publications are inspected before streaming starts.

use std::time::Duration;

use crate::config::{SourceConfig, Streaming};
use crate::event::quote_ident;
use crate::lsn::Lsn;

use super::conn::Connection;
use super::error::SourceError;
use crate::config::ConnInfo;

/// The oldest server teal supports: pgoutput appeared in PostgreSQL 10.
pub const MIN_SERVER_VERSION: u32 = 10;

/// What IDENTIFY_SYSTEM reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// `pg_control` system identifier: changes when blue is replaced by another cluster.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The database the session is connected to.
    pub dbname: Option<String>,
}

/// A row of `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Output plugin of a logical slot.
    pub plugin: Option<String>,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// Backend streaming from it now, if any.
    pub active_pid: Option<i32>,
    /// Position the last consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
}

/// What to do with the snapshot a new slot is created at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it for `SET TRANSACTION SNAPSHOT`; valid until the session runs
    /// another command or closes (the initial copy keeps the session open).
    Export,
    /// Do not keep a snapshot.
    Nothing,
}

/// The answer to CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Slot name.
    pub slot_name: String,
    /// The first LSN the slot will stream from: the snapshot is consistent with it.
    pub consistent_point: Lsn,
    /// Exported snapshot name, with [`SnapshotAction::Export`].
    pub snapshot_name: Option<String>,
}

/// START_REPLICATION options, chosen from the server version and the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// pgoutput protocol version: 1 before 14, 2 on 14-15, 4 on 16+.
    pub proto_version: u32,
    /// Publications to stream.
    pub publications: Vec<String>,
    /// Stream in-progress transactions.
    pub streaming: bool,
    /// Send logical decoding messages.
    pub messages: bool,
    /// Binary column values.
    pub binary: bool,
}

impl StreamOptions {
    /// Picks the protocol version and features `server_version` supports.
    pub fn negotiate(
        server_version: u32,
        config: &SourceConfig,
    ) -> Result<StreamOptions, SourceError> {
        let proto_version = match server_version {
            ..=13 => 1,
            14 | 15 => 2,
            _ => 4,
        };
        let streaming = match config.streaming {
            Streaming::Off => false,
            Streaming::Auto => server_version >= 14,
            Streaming::On if server_version >= 14 => true,
            Streaming::On => {
                return Err(SourceError::Setup(format!(
                    "--streaming on needs PostgreSQL 14 or later, but blue runs {server_version}; use --streaming off"
                )));
            }
        };
        if config.binary && server_version < 14 {
            return Err(SourceError::Setup(format!(
                "--binary needs PostgreSQL 14 or later, but blue runs {server_version}"
            )));
        }
        Ok(StreamOptions {
            proto_version,
            publications: config.publications.clone(),
            streaming,
            // The option exists from 14 on; older servers never send messages.
            messages: config.messages && server_version >= 14,
            binary: config.binary,
        })
    }

    /// The START_REPLICATION command.
    pub fn command(&self, slot: &str, start_lsn: Lsn) -> String {
        let publications = self
            .publications
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut options = vec![
            format!("proto_version '{}'", self.proto_version),
            format!("publication_names {}", quote_repl_literal(&publications)),
        ];
        if self.proto_version >= 2 {
            options.push(format!(
                "streaming '{}'",
                if self.streaming { "on" } else { "off" }
            ));
            options.push(format!("messages '{}'", self.messages));
            options.push(format!("binary '{}'", self.binary));
        }
        format!(
            "START_REPLICATION SLOT {} LOGICAL {start_lsn} ({})",
            quote_ident(slot),
            options.join(", ")
        )
    }
}

/// A replication session to blue, before streaming.
pub struct ReplicationClient {
    conn: Connection,
    system: SystemInfo,
    server_version: u32,
}

impl ReplicationClient {
    /// See [`Connection::set_timeout`].
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        self.conn.set_timeout(timeout);
    }

    /// Connects with `replication=database` and runs IDENTIFY_SYSTEM.
    pub async fn connect(conninfo: &ConnInfo) -> Result<ReplicationClient, SourceError> {
        let mut conn = Connection::connect(conninfo).await?;
        let server_version = conn
            .server_major_version()
            .ok_or_else(|| SourceError::Protocol {
                host: conn.host().to_owned(),
                what: "no server_version parameter at startup".into(),
            })?;
        if server_version < MIN_SERVER_VERSION {
            return Err(SourceError::Setup(format!(
                "blue runs PostgreSQL {server_version}; teal needs {MIN_SERVER_VERSION} or later (pgoutput)"
            )));
        }
        let rows = conn
            .simple_query("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM")
            .await?;
        let row = rows.first().ok_or_else(|| SourceError::Protocol {
            host: conn.host().to_owned(),
            what: "IDENTIFY_SYSTEM returned no row".into(),
        })?;
        let bad = |what: &str| SourceError::Protocol {
            host: conn.host().to_owned(),
            what: format!("IDENTIFY_SYSTEM returned an invalid {what}"),
        };
        let system = SystemInfo {
            system_id: row.get(0).ok_or_else(|| bad("systemid"))?.to_owned(),
            timeline: row
                .get(1)
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("timeline"))?,
            xlogpos: row
                .get(2)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| bad("xlogpos"))?,
            dbname: row.get(3).map(str::to_owned),
        };
        Ok(ReplicationClient {
            conn,
            system,
            server_version,
        })
    }

    /// IDENTIFY_SYSTEM's answer.
    pub fn system(&self) -> &SystemInfo {
        &self.system
    }

    /// Blue's major version.
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// Host and port connected to.
    pub fn host(&self) -> &str {
        self.conn.host()
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// The slot's row in `pg_replication_slots`, if it exists.
    pub async fn slot(&mut self, name: &str) -> Result<Option<SlotInfo>, SourceError> {
        let wal_status = if self.server_version >= 13 {
            "wal_status"
        } else {
            "NULL"
        };
        let sql = format!(
            "SELECT slot_type, plugin, database, active_pid, confirmed_flush_lsn, {wal_status} \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_sql_literal(name)
        );
        let rows = self
            .conn
            .simple_query(&sql, "reading pg_replication_slots")
            .await?;
        Ok(rows.first().map(|r| SlotInfo {
            slot_type: r.get(0).unwrap_or_default().to_owned(),
            plugin: r.get(1).map(str::to_owned),
            database: r.get(2).map(str::to_owned),
            active_pid: r.get(3).and_then(|p| p.parse().ok()),
            confirmed_flush_lsn: r.get(4).and_then(|l| l.parse().ok()),
            wal_status: r.get(5).map(str::to_owned),
        }))
    }

    /// Checks that `slot` can feed teal from this database.
    pub async fn check_slot(
        &mut self,
        name: &str,
        dbname: &str,
    ) -> Result<Option<SlotInfo>, SourceError> {
        let Some(info) = self.slot(name).await? else {
            return Ok(None);
        };
        if info.slot_type != "logical" {
            return Err(SourceError::Setup(format!(
                "replication slot {name:?} is a {} slot; teal needs a logical slot using pgoutput",
                info.slot_type
            )));
        }
        if info.plugin.as_deref() != Some("pgoutput") {
            return Err(SourceError::Setup(format!(
                "replication slot {name:?} uses output plugin {:?}; teal needs pgoutput: drop it or choose another --slot",
                info.plugin.as_deref().unwrap_or("")
            )));
        }
        if info.database.as_deref() != Some(dbname) {
            return Err(SourceError::Setup(format!(
                "replication slot {name:?} belongs to database {:?}, but teal is connected to {dbname:?}",
                info.database.as_deref().unwrap_or("")
            )));
        }
        if info.wal_status.as_deref() == Some("lost") {
            return Err(SourceError::SlotLost {
                slot: name.to_owned(),
                lsn: info.confirmed_flush_lsn,
            });
        }
        Ok(Some(info))
    }

    /// Creates a logical slot using pgoutput.
    pub async fn create_slot(
        &mut self,
        name: &str,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot, SourceError> {
        self.create(name, snapshot, false).await
    }

    /// Creates a slot that lives as long as this connection (blue drops it
    /// when the connection ends, however it ends), for its consistent point
    /// and exported snapshot.
    pub async fn create_temporary_slot(
        &mut self,
        name: &str,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot, SourceError> {
        self.create(name, snapshot, true).await
    }

    async fn create(
        &mut self,
        name: &str,
        snapshot: SnapshotAction,
        temporary: bool,
    ) -> Result<CreatedSlot, SourceError> {
        let temporary = if temporary { " TEMPORARY" } else { "" };
        let sql = if self.server_version >= 15 {
            let action = match snapshot {
                SnapshotAction::Export => "export",
                SnapshotAction::Nothing => "nothing",
            };
            format!(
                "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput (SNAPSHOT '{action}')",
                quote_ident(name)
            )
        } else {
            let action = match snapshot {
                SnapshotAction::Export => "EXPORT_SNAPSHOT",
                SnapshotAction::Nothing => "NOEXPORT_SNAPSHOT",
            };
            format!(
                "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {action}",
                quote_ident(name)
            )
        };
        let rows = self
            .conn
            .simple_query(&sql, &format!("creating replication slot {name:?}"))
            .await?;
        let row = rows.first().ok_or_else(|| SourceError::Protocol {
            host: self.conn.host().to_owned(),
            what: "CREATE_REPLICATION_SLOT returned no row".into(),
        })?;
        Ok(CreatedSlot {
            slot_name: row.get(0).unwrap_or(name).to_owned(),
            consistent_point: row.get(1).and_then(|l| l.parse().ok()).ok_or_else(|| {
                SourceError::Protocol {
                    host: self.conn.host().to_owned(),
                    what: "CREATE_REPLICATION_SLOT returned no consistent_point".into(),
                }
            })?,
            snapshot_name: row.get(2).map(str::to_owned),
        })
    }

    /// Drops a slot (it must not be in use).
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), SourceError> {
        self.conn
            .simple_query(
                &format!("DROP_REPLICATION_SLOT {}", quote_ident(name)),
                &format!("dropping replication slot {name:?}"),
            )
            .await
            .map(drop)
    }

    /// Fails with instructions unless every publication exists.
    pub async fn check_publications(&mut self, publications: &[String]) -> Result<(), SourceError> {
        let list = publications
            .iter()
            .map(|p| quote_sql_literal(p))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = self
            .conn
            .simple_query(
                &format!("SELECT pubname FROM pg_catalog.pg_publication WHERE pubname IN ({list})"),
                "reading pg_publication",
            )
            .await?;
        let found: Vec<&str> = rows.iter().filter_map(|r| r.get(0)).collect();
        for p in publications {
            if !found.contains(&p.as_str()) {
                return Err(SourceError::Setup(format!(
                    "publication {p:?} does not exist on blue ({}); create it there, e.g. CREATE PUBLICATION {} FOR ALL TABLES; or FOR TABLE a, b",
                    self.conn.host(),
                    quote_ident(p)
                )));
            }
        }
        Ok(())
    }

    /// Starts streaming; the session becomes the replication stream.
    pub(crate) async fn start_replication(
        mut self,
        slot: &str,
        start_lsn: Lsn,
        options: &StreamOptions,
    ) -> Result<Connection, SourceError> {
        let sql = options.command(slot, start_lsn);
        tracing::debug!(command = %sql, "starting replication");
        self.conn
            .start_copy_both(&sql, &format!("starting replication from slot {slot:?}"))
            .await?;
        Ok(self.conn)
    }

    /// Ends the session.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// A string literal for the replication command grammar (no backslash escapes).
fn quote_repl_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL string literal that is correct whatever `standard_conforming_strings` is.
pub fn quote_sql_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnInfo;

    fn config(streaming: Streaming, binary: bool) -> SourceConfig {
        let conninfo = ConnInfo::parse_with_env("postgresql://u@h/db", &|_| None).unwrap();
        let mut c = SourceConfig::new(conninfo, "teal", vec!["pub".into(), "we\"ird's".into()]);
        c.streaming = streaming;
        c.binary = binary;
        c
    }

    #[test]
    fn protocol_version_follows_server_version() {
        let c = config(Streaming::Auto, false);
        let v = |server| StreamOptions::negotiate(server, &c).unwrap();
        assert_eq!(
            (v(13).proto_version, v(13).streaming, v(13).messages),
            (1, false, false)
        );
        assert_eq!((v(14).proto_version, v(14).streaming), (2, true));
        assert_eq!((v(15).proto_version, v(15).streaming), (2, true));
        assert_eq!((v(16).proto_version, v(16).streaming), (4, true));
        assert_eq!(v(18).proto_version, 4);
        assert!(
            !StreamOptions::negotiate(16, &config(Streaming::Off, false))
                .unwrap()
                .streaming
        );
        let err = StreamOptions::negotiate(13, &config(Streaming::On, false)).unwrap_err();
        assert!(err.to_string().contains("--streaming"));
        let err = StreamOptions::negotiate(12, &config(Streaming::Auto, true)).unwrap_err();
        assert!(err.to_string().contains("--binary"));
    }

    #[test]
    fn start_replication_command_is_exact() {
        let o = StreamOptions::negotiate(16, &config(Streaming::Auto, false)).unwrap();
        assert_eq!(
            o.command("teal", "16/B374D848".parse().unwrap()),
            "START_REPLICATION SLOT \"teal\" LOGICAL 16/B374D848 (proto_version '4', \
             publication_names '\"pub\",\"we\"\"ird''s\"', streaming 'on', messages 'true', binary 'false')"
        );
        let o = StreamOptions::negotiate(12, &config(Streaming::Auto, false)).unwrap();
        assert_eq!(
            o.command("s", Lsn::ZERO),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '1', publication_names '\"pub\",\"we\"\"ird''s\"')"
        );
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_sql_literal("a'b"), "'a''b'");
        assert_eq!(quote_sql_literal(r"a\b'"), r"E'a\\b'''");
        assert_eq!(quote_ident("Mixed\"Case"), "\"Mixed\"\"Case\"");
    }
}
