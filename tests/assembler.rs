//! Assembler scenarios driven by encoded pgoutput frames: exact control over
//! interleavings PostgreSQL produces only under particular timing.

use std::sync::atomic::Ordering;

use teal::assembler::{Assembler, AssemblerError};
use teal::config::AssemblerConfig;
use teal::event::{ChangeKind, Event, Value};
use teal::lsn::Lsn;
use teal::pgoutput::Decoder;

use crate::support::encoder::{Col, Msg, encode};

const REL: u32 = 16384;

struct Feed {
    asm: Assembler,
    dec: Decoder,
    lsn: u64,
    out: Vec<Event>,
}

impl Feed {
    fn new(max_memory: u64) -> Feed {
        Feed {
            asm: Assembler::new(AssemblerConfig {
                max_memory,
                spill_dir: std::env::temp_dir(),
                ..AssemblerConfig::default()
            }),
            dec: Decoder::new(),
            lsn: 0x1000,
            out: Vec::new(),
        }
    }

    fn send(&mut self, m: Msg) -> Result<(), AssemblerError> {
        self.lsn += 0x40;
        let msg = self
            .dec
            .decode(Lsn(self.lsn), &encode(&m))
            .expect("test frames decode");
        self.asm.handle(Lsn(self.lsn), msg, &mut self.out)
    }

    fn all(&mut self, msgs: impl IntoIterator<Item = Msg>) {
        for m in msgs {
            self.send(m).expect("message accepted");
        }
    }

    /// Transactions released so far: (xid, ids of inserted rows).
    fn released(&self) -> Vec<(u32, Vec<i64>)> {
        let mut txns = Vec::new();
        let mut current: Option<(u32, Vec<i64>)> = None;
        for e in &self.out {
            match e {
                Event::Begin(m) => current = Some((m.xid.0, Vec::new())),
                Event::Changes(cs) => {
                    let (_, ids) = current.as_mut().expect("changes inside a transaction");
                    for c in cs {
                        if let ChangeKind::Insert { new, .. } = &c.kind {
                            let Some(Value::Text(t)) = new.get(0) else {
                                panic!("id column")
                            };
                            ids.push(std::str::from_utf8(t).unwrap().parse().unwrap());
                        }
                    }
                }
                Event::Commit(m) => {
                    let t = current.take().expect("commit after begin");
                    assert_eq!(t.0, m.xid.0);
                    txns.push(t);
                }
                _ => {}
            }
        }
        assert!(current.is_none(), "a transaction was left open");
        txns
    }
}

fn relation(xid: Option<u32>, cols: &[&str]) -> Msg {
    Msg::Relation {
        xid,
        rel_id: REL,
        ns: "public".into(),
        name: "ledger".into(),
        ri: b'd',
        cols: cols
            .iter()
            .enumerate()
            .map(|(i, n)| (u8::from(i == 0), n.to_string(), 25, -1))
            .collect(),
    }
}

fn insert(xid: Option<u32>, id: i64, pad: usize) -> Msg {
    Msg::Insert {
        xid,
        rel_id: REL,
        new: vec![
            Col::Text(id.to_string().into_bytes()),
            Col::Text(vec![b'x'; pad]),
        ],
    }
}

fn begin(xid: u32, final_lsn: u64) -> Msg {
    Msg::Begin {
        final_lsn,
        ts: 1,
        xid,
    }
}

fn commit(commit_lsn: u64) -> Msg {
    Msg::Commit {
        commit_lsn,
        end_lsn: commit_lsn + 8,
        ts: 1,
    }
}

fn stream_commit(xid: u32, commit_lsn: u64) -> Msg {
    Msg::StreamCommit {
        xid,
        commit_lsn,
        end_lsn: commit_lsn + 8,
        ts: 1,
    }
}

#[test]
fn subtransaction_abort_cuts_exactly_its_changes_across_the_spill_boundary() {
    let mut f = Feed::new(1024 * 1024);
    let top = Some(100);
    f.all([
        Msg::StreamStart {
            xid: 100,
            first: true,
        },
        relation(top, &["id", "memo"]),
    ]);
    // 3000 rows of ~1 KiB from the top transaction: more than the 1 MiB bound.
    f.all((0..3000).map(|id| insert(top, id, 1000)));
    // Subtransaction 101 and its child 102, then the block ends.
    f.all((3000..3500).map(|id| insert(Some(101), id, 1000)));
    f.all((3500..4000).map(|id| insert(Some(102), id, 1000)));
    f.all([Msg::StreamStop]);
    assert!(
        f.asm.stats().spilled_changes.load(Ordering::Relaxed) > 3000,
        "the bound forced a spill past the subtransaction's first change, so its abort cuts the file"
    );
    // ROLLBACK TO SAVEPOINT: blue aborts the child and the subtransaction.
    f.all([
        Msg::StreamAbort {
            xid: 100,
            subxid: 102,
            abort: None,
        },
        Msg::StreamAbort {
            xid: 100,
            subxid: 101,
            abort: None,
        },
    ]);
    // The transaction continues in a new block, then a second subtransaction
    // whose abort falls in the in-memory part.
    f.all([Msg::StreamStart {
        xid: 100,
        first: false,
    }]);
    f.all((10_000..10_100).map(|id| insert(top, id, 10)));
    f.all((20_000..20_010).map(|id| insert(Some(103), id, 10)));
    f.all([
        Msg::StreamStop,
        Msg::StreamAbort {
            xid: 100,
            subxid: 103,
            abort: Some((0x9999, 5)),
        },
        Msg::StreamStart {
            xid: 100,
            first: false,
        },
    ]);
    f.all((10_100..10_110).map(|id| insert(top, id, 10)));
    f.all([Msg::StreamStop, stream_commit(100, 0xF0000)]);

    let txns = f.released();
    assert_eq!(txns.len(), 1);
    let expected: Vec<i64> = (0..3000).chain(10_000..10_110).collect();
    assert_eq!(txns[0].1, expected);
    assert_eq!(f.asm.stats().memory_bytes.load(Ordering::Relaxed), 0);
    assert!(f.asm.stats().peak_memory_bytes.load(Ordering::Relaxed) <= 1024 * 1024 + 4096);
}

#[test]
fn interleaved_streams_release_in_commit_order() {
    let mut f = Feed::new(64 * 1024 * 1024);
    f.all([relation(None, &["id", "memo"])]);
    f.all([
        Msg::StreamStart {
            xid: 7,
            first: true,
        },
        insert(Some(7), 1, 1),
        Msg::StreamStop,
    ]);
    f.all([
        Msg::StreamStart {
            xid: 8,
            first: true,
        },
        insert(Some(8), 2, 1),
        Msg::StreamStop,
    ]);
    // A small transaction commits in between, non-streamed.
    f.all([begin(9, 0x5000), insert(None, 3, 1), commit(0x5000)]);
    f.all([
        Msg::StreamStart {
            xid: 7,
            first: false,
        },
        insert(Some(7), 4, 1),
        Msg::StreamStop,
    ]);
    f.all([stream_commit(8, 0x6000), stream_commit(7, 0x7000)]);
    assert_eq!(
        f.released(),
        vec![(9, vec![3]), (8, vec![2]), (7, vec![1, 4])]
    );
}

#[test]
fn aborted_stream_releases_nothing_and_frees_memory() {
    let mut f = Feed::new(1024 * 1024);
    f.all([relation(None, &["id", "memo"])]);
    f.all([Msg::StreamStart {
        xid: 7,
        first: true,
    }]);
    f.all((0..2000).map(|id| insert(Some(7), id, 1000)));
    f.all([
        Msg::StreamStop,
        Msg::StreamAbort {
            xid: 7,
            subxid: 7,
            abort: None,
        },
    ]);
    assert!(f.released().is_empty());
    assert_eq!(f.asm.stats().memory_bytes.load(Ordering::Relaxed), 0);
    // The slot stays idle-confirmable afterwards.
    f.asm.keepalive(Lsn(0x9_0000), &mut f.out).unwrap();
    assert!(matches!(
        f.out.last(),
        Some(Event::Idle {
            wal_end: Lsn(0x9_0000)
        })
    ));
}

#[test]
fn resent_transactions_are_released_once_after_a_reconnect() {
    let mut f = Feed::new(64 * 1024 * 1024);
    f.all([
        relation(None, &["id", "memo"]),
        begin(1, 0x5000),
        insert(None, 1, 1),
        commit(0x5000),
    ]);
    // A second transaction is cut off by the connection loss.
    f.all([begin(2, 0x6000), insert(None, 2, 1)]);
    f.asm.reset();
    f.dec.reset();
    // Blue starts over from the last confirmed position, which was before txn 1.
    f.all([
        relation(None, &["id", "memo"]),
        begin(1, 0x5000),
        insert(None, 1, 1),
        commit(0x5000),
    ]);
    f.all([begin(2, 0x6000), insert(None, 2, 1), commit(0x6000)]);
    assert_eq!(f.released(), vec![(1, vec![1]), (2, vec![2])]);
    assert_eq!(
        f.asm.stats().skipped_transactions.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn keepalives_are_confirmable_only_when_nothing_is_in_flight() {
    let mut f = Feed::new(64 * 1024 * 1024);
    f.all([
        relation(None, &["id", "memo"]),
        begin(1, 0x5000),
        insert(None, 1, 1),
    ]);
    f.asm.keepalive(Lsn(0x8000), &mut f.out).unwrap();
    f.all([Msg::Commit {
        commit_lsn: 0x5000,
        end_lsn: 0x5008,
        ts: 1,
    }]);
    f.all([
        Msg::StreamStart {
            xid: 3,
            first: true,
        },
        insert(Some(3), 2, 1),
        Msg::StreamStop,
    ]);
    f.asm.keepalive(Lsn(0x9000), &mut f.out).unwrap();
    assert!(
        !f.out.iter().any(|e| matches!(e, Event::Idle { .. })),
        "{:?}",
        f.out
    );
    f.all([stream_commit(3, 0xA000)]);
    f.asm.keepalive(Lsn(0xB000), &mut f.out).unwrap();
    assert!(matches!(
        f.out.last(),
        Some(Event::Idle {
            wal_end: Lsn(0xB000)
        })
    ));
}

#[test]
fn schema_changes_apply_from_their_relation_message_on() {
    let mut f = Feed::new(64 * 1024 * 1024);
    f.all([
        relation(None, &["id", "memo"]),
        begin(1, 0x5000),
        insert(None, 1, 1),
    ]);
    // ALTER TABLE ... ADD COLUMN inside the same transaction.
    f.all([
        relation(None, &["id", "memo", "extra"]),
        Msg::Insert {
            xid: None,
            rel_id: REL,
            new: vec![
                Col::Text(b"2".to_vec()),
                Col::Null,
                Col::Text(b"e".to_vec()),
            ],
        },
        commit(0x5000),
    ]);
    let widths: Vec<usize> = f
        .out
        .iter()
        .filter_map(|e| match e {
            Event::Changes(cs) => Some(
                cs.iter()
                    .map(|c| c.relations()[0].columns.len())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(widths, vec![2, 3]);
}

#[test]
fn streamed_schema_stays_private_until_its_commit() {
    let mut f = Feed::new(64 * 1024 * 1024);
    f.all([relation(None, &["id", "memo"])]);
    // Streamed transaction 7 alters the table and inserts with the new shape.
    f.all([
        Msg::StreamStart {
            xid: 7,
            first: true,
        },
        relation(Some(7), &["id", "memo", "extra"]),
        Msg::Insert {
            xid: Some(7),
            rel_id: REL,
            new: vec![Col::Text(b"1".to_vec()), Col::Null, Col::Null],
        },
        Msg::StreamStop,
    ]);
    // Meanwhile transaction 8 commits with the old shape, no new Relation message.
    f.all([begin(8, 0x5000), insert(None, 2, 1), commit(0x5000)]);
    f.all([stream_commit(7, 0x6000)]);
    assert_eq!(f.released(), vec![(8, vec![2]), (7, vec![1])]);
    // After 7 committed, its definition is the shared one.
    f.all([
        begin(9, 0x7000),
        Msg::Insert {
            xid: None,
            rel_id: REL,
            new: vec![Col::Text(b"3".to_vec()), Col::Null, Col::Null],
        },
        commit(0x7000),
    ]);
    assert_eq!(f.released().len(), 3);
}

#[test]
fn malformed_sequences_are_definite_errors_naming_the_lsn() {
    let err = |msgs: Vec<Msg>| {
        let mut f = Feed::new(64 * 1024 * 1024);
        let mut last = None;
        for m in msgs {
            if let Err(e) = f.send(m) {
                last = Some(e);
                break;
            }
        }
        last.expect("the sequence is rejected").to_string()
    };
    assert!(err(vec![commit(0x5000)]).contains("Commit without Begin"));
    assert!(err(vec![begin(1, 0x5000), insert(None, 1, 1)]).contains("relation OID 16384"));
    let e = err(vec![
        relation(None, &["id", "memo"]),
        begin(1, 0x5000),
        Msg::Insert {
            xid: None,
            rel_id: REL,
            new: vec![Col::Null],
        },
    ]);
    assert!(
        e.contains("public.ledger") && e.contains("has 1 columns") && e.contains("listed 2"),
        "{e}"
    );
    assert!(err(vec![insert(None, 1, 1)]).contains("outside a transaction"));
    assert!(
        err(vec![
            begin(1, 0x5000),
            Msg::Commit {
                commit_lsn: 0x5001,
                end_lsn: 0x5008,
                ts: 1
            }
        ])
        .contains("differs from the final_lsn")
    );
    assert!(
        err(vec![Msg::StreamStart {
            xid: 5,
            first: false
        }])
        .contains("without its first segment")
    );
    assert!(err(vec![stream_commit(5, 0x5000)]).contains("unknown transaction 5"));
    let e = err(vec![Msg::BeginPrepare {
        prepare_lsn: 1,
        end_lsn: 2,
        ts: 0,
        xid: 3,
        gid: "g1".into(),
    }]);
    assert!(e.contains("two_phase") && e.contains("g1"), "{e}");
    assert!(err(vec![begin(1, 0x5000), begin(2, 0x6000)]).contains("another transaction is open"));
}

/// Transactions of a skipped origin (what teal applied to this side) are
/// released empty, so the position moves on and nothing echoes; plain and
/// streamed alike, and other origins are kept.
#[test]
fn transactions_of_skipped_origins_are_released_empty() {
    let mut f = Feed {
        asm: Assembler::new(AssemblerConfig {
            skip_origins: vec!["teal_back".into()],
            ..AssemblerConfig::default()
        }),
        dec: Decoder::new(),
        lsn: 0x1000,
        out: Vec::new(),
    };
    f.all([relation(None, &["id", "memo"])]);
    let origin = |name: &str| Msg::Origin {
        lsn: 0x100,
        name: name.into(),
    };
    f.all([
        begin(1, 0x5000),
        origin("teal_back"),
        insert(None, 1, 1),
        commit(0x5000),
    ]);
    f.all([
        begin(2, 0x5100),
        origin("upstream"),
        insert(None, 2, 1),
        commit(0x5100),
    ]);
    f.all([begin(3, 0x5200), insert(None, 3, 1), commit(0x5200)]);
    f.all([
        Msg::StreamStart {
            xid: 4,
            first: true,
        },
        origin("teal_back"),
        insert(Some(4), 4, 1),
        Msg::StreamStop,
        Msg::StreamStart {
            xid: 4,
            first: false,
        },
        insert(Some(4), 5, 1),
        Msg::StreamStop,
        stream_commit(4, 0x6000),
    ]);
    assert_eq!(
        f.released(),
        vec![(1, vec![]), (2, vec![2]), (3, vec![3]), (4, vec![])]
    );
    assert_eq!(f.asm.stats().echoed_changes.load(Ordering::Relaxed), 3);
}
