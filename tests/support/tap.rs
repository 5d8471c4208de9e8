//! Runs teal's capture pipeline in-process with an always-running consumer
//! task that gathers whole transactions and confirms them (and keepalive
//! idles) as a durable consumer would; tests pull transactions from it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teal::assembler::AssemblerStats;
use teal::config::{AssemblerConfig, ConnInfo, SourceConfig};
use teal::event::{Change, ChangeKind, Event, LogicalMessage, TxnMeta, Value};
use teal::pipeline::{CaptureHandle, PipelineError, start_capture};
use teal::progress::FlushLsn;
use teal::source::SessionInfo;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One committed transaction as delivered.
#[derive(Debug)]
pub struct Txn {
    pub meta: Arc<TxnMeta>,
    pub changes: Vec<Change>,
}

/// A running capture.
pub struct Tap {
    txns: mpsc::UnboundedReceiver<Txn>,
    consumer: JoinHandle<()>,
    capture: CaptureHandle,
    shutdown: CancellationToken,
    messages: Arc<Mutex<Vec<LogicalMessage>>>,
}

/// Logs of teal's stages in the test output (filter with RUST_LOG, default warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A source config for `url` with test-friendly reconnect and status timing.
pub fn source_config(url: &str, slot: &str, publication: &str) -> SourceConfig {
    let conninfo: ConnInfo = ConnInfo::parse_with_env(url, &|_| None).expect("test URL parses");
    let mut c = SourceConfig::new(conninfo, slot, vec![publication.to_owned()]);
    c.create_slot = true;
    c.status_interval = Duration::from_secs(1);
    c.reconnect_min_delay = Duration::from_millis(100);
    c.reconnect_max_delay = Duration::from_secs(1);
    c
}

impl Tap {
    pub fn start(source: SourceConfig) -> Tap {
        Tap::start_with(source, AssemblerConfig::default())
    }

    pub fn start_with(source: SourceConfig, assembler: AssemblerConfig) -> Tap {
        init_logging();
        let progress = FlushLsn::new();
        let consumer = progress.register();
        let shutdown = CancellationToken::new();
        let (mut events, capture) = start_capture(
            source,
            assembler,
            progress,
            Default::default(),
            shutdown.clone(),
        )
        .expect("capture starts");
        let (tx, txns) = mpsc::unbounded_channel();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&messages);
        let consumer = tokio::spawn(async move {
            let mut open: Option<Txn> = None;
            while let Some(batch) = events.recv().await {
                for event in batch {
                    match event {
                        Event::Begin(meta) => {
                            assert!(open.is_none(), "Begin inside a transaction");
                            open = Some(Txn {
                                meta,
                                changes: Vec::new(),
                            });
                        }
                        Event::Changes(changes) => open
                            .as_mut()
                            .expect("changes inside a transaction")
                            .changes
                            .extend(changes),
                        Event::Commit(meta) => {
                            let txn = open.take().expect("Commit after Begin");
                            assert_eq!(
                                meta, txn.meta,
                                "Begin and Commit describe the same transaction"
                            );
                            assert_eq!(meta.change_count, txn.changes.len() as u64);
                            consumer.confirm(meta.end_lsn);
                            // The test may have stopped looking; keep confirming anyway.
                            let _ = tx.send(txn);
                        }
                        Event::Message(m) => {
                            assert!(
                                open.is_none(),
                                "non-transactional message inside a transaction"
                            );
                            seen.lock().unwrap().push(m);
                        }
                        Event::Idle { wal_end } => {
                            assert!(open.is_none(), "Idle inside a transaction");
                            consumer.confirm(wal_end);
                        }
                    }
                }
            }
        });
        Tap {
            txns,
            consumer,
            capture,
            shutdown,
            messages,
        }
    }

    pub fn stats(&self) -> Arc<AssemblerStats> {
        self.capture.stats()
    }

    pub fn spilled_changes(&self) -> u64 {
        self.stats().spilled_changes.load(Ordering::Relaxed)
    }

    /// Non-transactional messages seen so far.
    pub fn messages(&self) -> Vec<LogicalMessage> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until the first replication session is streaming.
    pub async fn connected(&self, timeout: Duration) -> Arc<SessionInfo> {
        let mut rx = self.capture.session();
        let info = tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .expect("capture connected in time")
            .expect("capture still running");
        info.clone().expect("session info present")
    }

    /// The next whole transaction (cancel-safe).
    pub async fn next_txn(&mut self, timeout: Duration) -> Txn {
        match tokio::time::timeout(timeout, self.txns.recv()).await {
            Ok(Some(t)) => t,
            Ok(None) => panic!("capture ended early"),
            Err(_) => panic!("no transaction within {timeout:?}"),
        }
    }

    /// The next `n` transactions.
    pub async fn txns(&mut self, n: usize, timeout: Duration) -> Vec<Txn> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_txn(timeout).await);
        }
        out
    }

    /// The next `n` transactions that hold changes: PostgreSQL 14 sends a
    /// transaction of DDL alone as an empty BEGIN/COMMIT pair, 15 and later
    /// leave it out.
    pub async fn txns_with_changes(&mut self, n: usize, timeout: Duration) -> Vec<Txn> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let txn = self.next_txn(timeout).await;
            if !txn.changes.is_empty() {
                out.push(txn);
            }
        }
        out
    }

    /// Stops cleanly and reports how the pipeline ended.
    pub async fn stop(self) -> Result<(), PipelineError> {
        self.shutdown.cancel();
        let result = self.capture.wait().await;
        self.consumer.await.expect("consumer task");
        result
    }

    /// Waits for the pipeline to end by itself (after an error).
    pub async fn wait_end(self, timeout: Duration) -> Result<(), PipelineError> {
        let result = tokio::time::timeout(timeout, self.capture.wait())
            .await
            .expect("pipeline ended in time");
        self.consumer.await.expect("consumer task");
        result
    }
}

/// Column `name` of a row image as text (panics on binary: test helper).
pub fn text(change: &Change, name: &str) -> Option<String> {
    let (rel, row) = match &change.kind {
        ChangeKind::Insert { relation, new } | ChangeKind::Update { relation, new, .. } => {
            (relation, new)
        }
        ChangeKind::Delete { relation, old } => (relation, old.image()),
        other => panic!("no row image in {other:?}"),
    };
    let i = rel
        .columns
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name} in {}", rel.name));
    match row.get(i).expect("column present") {
        Value::Text(t) => Some(String::from_utf8(t.to_vec()).unwrap()),
        Value::Null => None,
        other => panic!("column {name} is {other:?}"),
    }
}

/// The operation of a change, as a short word.
pub fn op(change: &Change) -> &'static str {
    match &change.kind {
        ChangeKind::Insert { .. } => "insert",
        ChangeKind::Update { .. } => "update",
        ChangeKind::Delete { .. } => "delete",
        ChangeKind::Truncate { .. } => "truncate",
        ChangeKind::Message(_) => "message",
    }
}
