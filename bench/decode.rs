//! Decode + assemble throughput over a recorded pgoutput stream.
//!
//! The stream is recorded once from a real server (the default PostgreSQL
//! build, as the tests find it) through teal's own source: 1,000,000 inserts
//! into a ledger-like table in 1,000-row transactions, plus the keepalives blue
//! sent meanwhile. It is cached in `target/tmp/bench-stream-*.bin`.
//!
//! Measured on one thread: every XLogData payload is decoded and fed to the
//! assembler, whose events are dropped by a counting sink (dropping is part
//! of the work). Prints changes/s and MB/s (payload bytes including the
//! XLogData header, as received from the socket).
//!
//! Run: `cargo bench --bench decode` (the target is >= 3,000,000 changes/s and
//! >= 500 MB/s on one core).

mod cluster;

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use teal::assembler::{Assembler, EventSink, SinkClosed};
use teal::config::{AssemblerConfig, ConnInfo, SourceConfig};
use teal::event::Event;
use teal::lsn::Lsn;
use teal::pgoutput::Decoder;
use teal::progress::FlushLsn;
use teal::source::SourceEvent;
use tokio_util::sync::CancellationToken;

const ROWS: usize = 1_000_000;
const ROWS_PER_TXN: usize = 1_000;
/// Bump when the workload changes, so a stale recording is not reused.
const RECORDING: &str = "bench-stream-ledger-v1.bin";

enum Frame {
    Data { wal_start: Lsn, payload: Bytes },
    Keepalive { wal_end: Lsn },
}

struct Stream {
    frames: Vec<Frame>,
    /// Bytes as received: XLogData header (25) + payload, keepalives 18.
    wire_bytes: u64,
}

fn recording_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(RECORDING)
}

fn load(path: &Path) -> Option<Stream> {
    let mut r = BufReader::new(std::fs::File::open(path).ok()?);
    let mut frames = Vec::new();
    let mut wire_bytes = 0;
    let mut head = [0u8; 13];
    loop {
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(_) => return None,
        }
        let lsn = Lsn(u64::from_be_bytes(head[1..9].try_into().unwrap()));
        let len = u32::from_be_bytes(head[9..13].try_into().unwrap()) as usize;
        let mut payload = vec![0; len];
        r.read_exact(&mut payload).ok()?;
        match head[0] {
            b'w' => {
                wire_bytes += 25 + len as u64;
                frames.push(Frame::Data {
                    wal_start: lsn,
                    payload: Bytes::from(payload),
                });
            }
            b'k' => {
                wire_bytes += 18;
                frames.push(Frame::Keepalive { wal_end: lsn });
            }
            _ => return None,
        }
    }
    Some(Stream { frames, wire_bytes })
}

/// Records the workload's stream from a throwaway cluster.
fn record(path: &Path) {
    eprintln!(
        "recording {ROWS} changes from a throwaway PostgreSQL into {}",
        path.display()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pg = cluster::Cluster::start(&cluster::default_bin());
        let client = pg.client().await;
        client
            .batch_execute(
                "CREATE TABLE ledger (id bigint PRIMARY KEY, account_id int NOT NULL, \
                   amount numeric(14,2) NOT NULL, currency char(3) NOT NULL, memo text, \
                   created_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE PUBLICATION bench FOR TABLE ledger;",
            )
            .await
            .unwrap();
        client
            .batch_execute("SELECT pg_create_logical_replication_slot('bench', 'pgoutput')")
            .await
            .unwrap();
        for t in 0..ROWS / ROWS_PER_TXN {
            let first = t * ROWS_PER_TXN + 1;
            client
                .batch_execute(&format!(
                    "INSERT INTO ledger (id, account_id, amount, currency, memo) \
                     SELECT i, i % 9973, (i % 100000) / 100.0, 'EUR', \
                            'transfer ' || i || ' from account ' || (i % 9973) || ' settlement batch ' || (i / 1000) \
                     FROM generate_series({first}, {}) i",
                    first + ROWS_PER_TXN - 1
                ))
                .await
                .unwrap();
        }
        let conninfo = ConnInfo::parse_with_env(&pg.url(), &|_| None).unwrap();
        let config = SourceConfig::new(conninfo, "bench", vec!["bench".into()]);
        let progress = FlushLsn::new();
        let consumer = progress.register();
        let flush = progress.subscribe();
        drop(progress);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let source = tokio::spawn(teal::source::run(
            config,
            tx,
            flush,
            shutdown.clone(),
            std::sync::Arc::default(),
        ));
        let mut out = BufWriter::new(std::fs::File::create(path.with_extension("partial")).unwrap());
        let mut commits = 0;
        while commits < ROWS / ROWS_PER_TXN {
            let batch = rx.recv().await.expect("source running");
            for event in batch {
                match event {
                    SourceEvent::XLogData { wal_start, data, .. } => {
                        if data.first() == Some(&b'C') {
                            commits += 1;
                        }
                        out.write_all(b"w").unwrap();
                        out.write_all(&wal_start.0.to_be_bytes()).unwrap();
                        out.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
                        out.write_all(&data).unwrap();
                    }
                    SourceEvent::Keepalive { wal_end, .. } => {
                        out.write_all(b"k").unwrap();
                        out.write_all(&wal_end.0.to_be_bytes()).unwrap();
                        out.write_all(&0u32.to_be_bytes()).unwrap();
                    }
                    SourceEvent::Connected(_) => {}
                }
            }
        }
        out.flush().unwrap();
        drop(out);
        std::fs::rename(path.with_extension("partial"), path).unwrap();
        shutdown.cancel();
        drop(consumer);
        drop(rx);
        let _ = source.await;
    });
}

/// Counts what the assembler releases and drops it.
#[derive(Default)]
struct Count {
    changes: u64,
    transactions: u64,
}

impl EventSink for Count {
    fn emit(&mut self, event: Event) -> Result<(), SinkClosed> {
        match event {
            Event::Changes(c) => self.changes += c.len() as u64,
            Event::Commit(_) => self.transactions += 1,
            _ => {}
        }
        Ok(())
    }
}

fn decode_and_assemble(stream: &Stream) -> Count {
    let mut decoder = Decoder::new();
    let mut assembler = Assembler::new(AssemblerConfig::default());
    let mut sink = Count::default();
    for frame in &stream.frames {
        match frame {
            Frame::Data { wal_start, payload } => {
                let msg = decoder
                    .decode(*wal_start, payload)
                    .expect("recorded frames decode");
                assembler
                    .handle(*wal_start, msg, &mut sink)
                    .expect("recorded stream assembles");
            }
            Frame::Keepalive { wal_end } => assembler.keepalive(*wal_end, &mut sink).unwrap(),
        }
    }
    sink
}

fn main() {
    let path = recording_path();
    let stream = match load(&path) {
        Some(s) => s,
        None => {
            record(&path);
            load(&path).expect("the new recording loads")
        }
    };
    let check = decode_and_assemble(&stream);
    assert_eq!(
        check.changes, ROWS as u64,
        "the recording holds the whole workload"
    );
    assert_eq!(check.transactions, (ROWS / ROWS_PER_TXN) as u64);
    println!(
        "recorded stream: {} frames, {} changes, {} transactions, {:.1} MB",
        stream.frames.len(),
        check.changes,
        check.transactions,
        stream.wire_bytes as f64 / 1e6
    );

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(15))
        .warm_up_time(Duration::from_secs(2));
    let mut group = c.benchmark_group("decode_assemble");
    group.throughput(Throughput::Elements(check.changes));
    group.bench_function("ledger_1m_changes", |b| {
        b.iter(|| decode_and_assemble(&stream))
    });
    group.throughput(Throughput::Bytes(stream.wire_bytes));
    group.bench_function("ledger_1m_bytes", |b| {
        b.iter(|| decode_and_assemble(&stream))
    });
    group.finish();
    c.final_summary();

    // Plain figures, median of 7 timed passes, for the closing notes.
    let mut secs: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(decode_and_assemble(&stream));
            start.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    println!(
        "decode+assemble median of 7: {:.3} s per pass = {:.2} M changes/s, {:.0} MB/s (one thread)",
        median,
        check.changes as f64 / median / 1e6,
        stream.wire_bytes as f64 / median / 1e6
    );
}
