//! What `teal sync` needs, what it reports, and why it stops.

use crate::http::HttpError;
use crate::lsn::Lsn;
use crate::ops::stream::{StreamConfig, StreamError};
use crate::session::SessionError;
use crate::source::SourceError;
use crate::store::StoreError;

use super::holder::HolderCommand;

/// Why `teal sync` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Something to fix before syncing (the message says what).
    #[error("{0}")]
    Setup(String),
    /// A statement on blue failed.
    #[error("{context} on blue")]
    Blue {
        /// What teal was doing.
        context: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement on green failed.
    #[error("{context} on green")]
    Green {
        /// What teal was doing.
        context: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Copying one chunk failed (blue's COPY or green's).
    #[error("copying chunk {chunk} of {table} ({source_relation})")]
    Copy {
        /// Green's table.
        table: String,
        /// Chunk number.
        chunk: i32,
        /// Blue relation read.
        source_relation: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A session could not be opened.
    #[error(transparent)]
    Connect(#[from] SessionError),
    /// teal's tables on green.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replication connection to blue.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Streaming after the copy.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Building an index again after its table was copied failed.
    #[error(
        "building index {index} of {table} after the copy failed on green: {reason}. Its definition stays in {records}: fix what the error names on green and run teal sync again, which builds it (or, to give the index up, delete its row there)"
    )]
    IndexBuild {
        /// Green's table.
        table: String,
        /// The index (quoted schema.name).
        index: String,
        /// Where its definition is recorded.
        records: String,
        /// The server's message (without its detail, which may quote rows).
        reason: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl SyncError {
    pub(super) fn blue(
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> SyncError {
        let context = context.into();
        move |source| SyncError::Blue { context, source }
    }

    pub(super) fn green(
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> SyncError {
        let context = context.into();
        move |source| SyncError::Green { context, source }
    }
}

/// What to do with a green table that already holds rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnExistingData {
    /// Stop before copying anything, naming the tables.
    #[default]
    Error,
    /// Empty them first.
    Truncate,
    /// Copy nothing into them (their changes are still streamed).
    SkipTable,
}

/// Everything `teal sync` needs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Blue, green, the slot and everything about streaming afterwards.
    pub stream: StreamConfig,
    /// Parallel copy workers.
    pub copy_workers: usize,
    /// Rows per chunk (about: chunks are page ranges).
    pub chunk_rows: u64,
    /// Green tables that hold rows.
    pub on_existing_data: OnExistingData,
    /// Copy only; do not stream afterwards.
    pub copy_only: bool,
    /// Keep green's indexes during the copy (maintained row by row) instead
    /// of building them after each table is copied.
    pub keep_indexes: bool,
    /// Hold the snapshot in a separate process, so that a killed copy can
    /// resume (`None`: in this process; a killed copy starts over).
    pub holder: Option<HolderCommand>,
}

impl SyncConfig {
    /// `--copy-workers` default.
    pub const DEFAULT_COPY_WORKERS: usize = 4;
    /// `--chunk-rows` default.
    pub const DEFAULT_CHUNK_ROWS: u64 = 500_000;

    /// Defaults around a stream configuration.
    pub fn new(stream: StreamConfig) -> SyncConfig {
        SyncConfig {
            stream,
            copy_workers: Self::DEFAULT_COPY_WORKERS,
            chunk_rows: Self::DEFAULT_CHUNK_ROWS,
            on_existing_data: OnExistingData::Error,
            copy_only: false,
            keep_indexes: false,
            holder: None,
        }
    }
}

/// What the copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopySummary {
    /// Where streaming starts.
    pub consistent_point: Lsn,
    /// Tables copied.
    pub tables: usize,
    /// Chunks copied in this run.
    pub chunks: u64,
    /// Rows copied in this run.
    pub rows: u64,
    /// COPY bytes moved in this run.
    pub bytes: u64,
    /// The copy had finished before (nothing copied in this run).
    pub already_done: bool,
}
