//! Capture scenarios against real PostgreSQL servers: what blue commits
//! arrives as whole transactions, in commit order, with the right values,
//! on the default server (15) and on a 16+ server (protocol 4).

use std::collections::BTreeSet;
use std::time::Duration;

use teal::config::{AssemblerConfig, Streaming};
use teal::event::{ChangeKind, OldRow, ReplicaIdentity, Value};
use teal::lsn::Lsn;

use crate::on_every_major;
use crate::support::cluster::{Cluster, Options, PgBin};
use crate::support::tap::{Tap, op, source_config, text};

const WAIT: Duration = Duration::from_secs(60);

/// A cluster whose transactions over 64 kB are streamed, with a publication.
async fn blue(bin: &PgBin, schema: &str) -> (Cluster, tokio_postgres::Client) {
    let cluster = Cluster::start_with(
        bin,
        Options {
            settings: vec![("logical_decoding_work_mem".into(), "64kB".into())],
            ..Options::default()
        },
    );
    let client = cluster.client().await;
    client
        .batch_execute(&format!(
            "{schema}; CREATE PUBLICATION teal_pub FOR ALL TABLES;"
        ))
        .await
        .expect("schema");
    (cluster, client)
}

/// Runs each string as its own simple query: one transaction each (a
/// multi-statement string is one implicit transaction).
async fn each(client: &tokio_postgres::Client, transactions: &[&str]) {
    for sql in transactions {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn tap(cluster: &Cluster) -> Tap {
    let tap = Tap::start(source_config(&cluster.url(), "teal_slot", "teal_pub"));
    let session = tap.connected(WAIT).await;
    assert_eq!(session.server_version, cluster.bin.version);
    let expected_proto = if cluster.bin.version >= 16 { 4 } else { 2 };
    assert_eq!(session.options.proto_version, expected_proto);
    assert!(session.options.streaming);
    tap
}

async fn every_dml_kind_with_exact_values(bin: &PgBin) {
    let (cluster, client) = blue(
        bin,
        "CREATE TABLE ledger (id bigint PRIMARY KEY, memo text, amount numeric, f float8, \
         at timestamptz, d date, span interval, tags text[], raw bytea)",
    )
    .await;
    // Unusual defaults on blue must not change the text teal receives.
    each(
        &client,
        &[
            "ALTER DATABASE postgres SET DateStyle = 'SQL, DMY'; ALTER DATABASE postgres SET TimeZone = 'America/New_York'; ALTER DATABASE postgres SET IntervalStyle = 'sql_standard'; ALTER DATABASE postgres SET extra_float_digits = 0; ALTER DATABASE postgres SET bytea_output = 'escape';",
        ],
    )
    .await;
    let mut tap = tap(&cluster).await;
    each(
        &client,
        &[
            "BEGIN; INSERT INTO ledger VALUES (1, 'grüße ✓ ''q''', 'NaN', 0.1::float8 + 0.2, '2026-01-02 03:04:05.123456+00', '2026-01-02', '1 day 2 hours', '{a,\"b c\",NULL}', '\\x00ff'); INSERT INTO ledger (id) VALUES (2); COMMIT;",
            "UPDATE ledger SET memo = 'changed' WHERE id = 1",
            "UPDATE ledger SET id = 3 WHERE id = 2",
            "DELETE FROM ledger WHERE id = 1",
            "SELECT pg_logical_emit_message(false, 'teal.heartbeat', 'beat')",
            "BEGIN; INSERT INTO ledger (id) VALUES (4); SELECT pg_logical_emit_message(true, 'teal.tx', 'inside'); COMMIT;",
        ],
    )
    .await;
    let txns = tap.txns(5, WAIT).await;

    let insert = &txns[0];
    assert_eq!(insert.changes.len(), 2);
    let row = &insert.changes[0];
    assert_eq!(op(row), "insert");
    assert_eq!(text(row, "memo").as_deref(), Some("grüße ✓ 'q'"));
    assert_eq!(text(row, "amount").as_deref(), Some("NaN"));
    assert_eq!(text(row, "f").as_deref(), Some("0.30000000000000004"));
    assert_eq!(
        text(row, "at").as_deref(),
        Some("2026-01-02 03:04:05.123456+00")
    );
    assert_eq!(text(row, "d").as_deref(), Some("2026-01-02"));
    assert_eq!(text(row, "span").as_deref(), Some("1 day 02:00:00"));
    assert_eq!(text(row, "tags").as_deref(), Some("{a,\"b c\",NULL}"));
    assert_eq!(text(row, "raw").as_deref(), Some("\\x00ff"));
    assert_eq!(text(&insert.changes[1], "memo"), None);

    let ChangeKind::Update { old, .. } = &txns[1].changes[0].kind else {
        panic!("update expected")
    };
    assert!(old.is_none(), "no old key when the key did not change");
    assert_eq!(
        text(&txns[1].changes[0], "memo").as_deref(),
        Some("changed")
    );
    let ChangeKind::Update {
        old: Some(OldRow::Key(k)),
        ..
    } = &txns[2].changes[0].kind
    else {
        panic!("key-changing update carries the old key")
    };
    assert_eq!(k.get(0), Some(Value::Text(b"2")));
    assert_eq!(text(&txns[2].changes[0], "id").as_deref(), Some("3"));
    let ChangeKind::Delete {
        old: OldRow::Key(k),
        relation,
    } = &txns[3].changes[0].kind
    else {
        panic!("delete carries the key")
    };
    assert_eq!(k.get(0), Some(Value::Text(b"1")));
    assert_eq!(
        k.get(1),
        Some(Value::Null),
        "non-key columns are null in a key image"
    );
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);

    let messages = tap.messages();
    assert_eq!(
        messages.len(),
        1,
        "the non-transactional message arrives on its own"
    );
    assert_eq!(messages[0].prefix, "teal.heartbeat");
    assert_eq!(&messages[0].content[..], b"beat");
    assert!(!messages[0].transactional);
    let last = &txns[4];
    assert_eq!(
        last.changes.iter().map(op).collect::<Vec<_>>(),
        ["insert", "message"]
    );
    let ChangeKind::Message(m) = &last.changes[1].kind else {
        unreachable!()
    };
    assert!(m.transactional && m.prefix == "teal.tx" && &m.content[..] == b"inside");

    // Commit order, and metadata that matches what blue reports.
    for pair in txns.windows(2) {
        assert!(pair[0].meta.end_lsn <= pair[1].meta.commit_lsn);
    }
    for t in &txns {
        assert!(t.meta.commit_lsn < t.meta.end_lsn);
        assert!(!t.meta.streamed);
    }
    tap.stop().await.expect("clean stop");
    let confirmed: String = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'teal_slot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        confirmed.parse::<Lsn>().unwrap(),
        txns[4].meta.end_lsn,
        "the final status update confirmed the last transaction handled"
    );
}
on_every_major!(every_dml_kind_with_exact_values);

async fn replica_identities(bin: &PgBin) {
    let (cluster, client) = blue(
        bin,
        "CREATE TABLE ri_default (id int PRIMARY KEY, v text); \
         CREATE TABLE ri_full (id int, v text); ALTER TABLE ri_full REPLICA IDENTITY FULL; \
         CREATE TABLE ri_index (a int NOT NULL, b int NOT NULL, v text); \
         CREATE UNIQUE INDEX ri_index_ab ON ri_index (a, b); \
         ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_ab; \
         INSERT INTO ri_default VALUES (1, 'x'); INSERT INTO ri_full VALUES (1, 'x'), (1, 'x'); \
         INSERT INTO ri_index VALUES (1, 2, 'x');",
    )
    .await;
    let mut tap = tap(&cluster).await;
    each(
        &client,
        &[
            "UPDATE ri_default SET v = 'y'",
            "UPDATE ri_default SET id = 2",
            "DELETE FROM ri_default",
            "UPDATE ri_full SET v = 'y' WHERE ctid = (SELECT min(ctid) FROM ri_full)",
            "DELETE FROM ri_full WHERE v = 'y'",
            "UPDATE ri_index SET v = 'y'",
            "UPDATE ri_index SET b = 3",
            "DELETE FROM ri_index",
        ],
    )
    .await;
    let txns = tap.txns(8, WAIT).await;
    let change = |i: usize| &txns[i].changes[0].kind;

    assert!(matches!(change(0), ChangeKind::Update { old: None, .. }));
    assert!(matches!(
        change(1),
        ChangeKind::Update {
            old: Some(OldRow::Key(_)),
            ..
        }
    ));
    assert!(matches!(
        change(2),
        ChangeKind::Delete {
            old: OldRow::Key(_),
            ..
        }
    ));

    let ChangeKind::Update {
        old: Some(OldRow::Full(old)),
        relation,
        ..
    } = change(3)
    else {
        panic!("FULL: update carries the whole old row: {:?}", change(3))
    };
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
    assert!(
        relation.columns.iter().all(|c| c.is_key),
        "FULL: every column is part of the identity"
    );
    assert_eq!(
        old.values().collect::<Vec<_>>(),
        [Value::Text(b"1"), Value::Text(b"x")]
    );
    let ChangeKind::Delete {
        old: OldRow::Full(old),
        ..
    } = change(4)
    else {
        panic!("FULL: delete carries the old row")
    };
    assert_eq!(old.get(1), Some(Value::Text(b"y")));
    assert_eq!(
        txns[4].changes.len(),
        1,
        "exactly one of the duplicate rows was deleted"
    );

    let ChangeKind::Update {
        old: None,
        relation,
        ..
    } = change(5)
    else {
        panic!("INDEX: no old key when the key did not change")
    };
    assert_eq!(relation.replica_identity, ReplicaIdentity::Index);
    let keys: Vec<_> = relation
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key))
        .collect();
    assert_eq!(keys, [("a", true), ("b", true), ("v", false)]);
    let ChangeKind::Update {
        old: Some(OldRow::Key(k)),
        new,
        ..
    } = change(6)
    else {
        panic!("INDEX: key-changing update carries the old key")
    };
    assert_eq!(
        (k.get(0), k.get(1), k.get(2)),
        (
            Some(Value::Text(b"1")),
            Some(Value::Text(b"2")),
            Some(Value::Null)
        )
    );
    assert_eq!(new.get(1), Some(Value::Text(b"3")));
    let ChangeKind::Delete {
        old: OldRow::Key(k),
        ..
    } = change(7)
    else {
        panic!("INDEX: delete carries the key")
    };
    assert_eq!(k.get(1), Some(Value::Text(b"3")));
    tap.stop().await.unwrap();
}
on_every_major!(replica_identities);

async fn unchanged_toast_is_marked_not_sent(bin: &PgBin) {
    let (cluster, client) = blue(
        bin,
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)",
    )
    .await;
    let mut tap = tap(&cluster).await;
    // ~224 kB of incompressible text: stored out of line.
    each(
        &client,
        &[
            "INSERT INTO docs SELECT 1, string_agg(md5(i::text || random()::text), ''), 0 FROM generate_series(1, 7000) i",
            "UPDATE docs SET n = 1",
            "UPDATE docs SET body = 'short', n = 2",
        ],
    )
    .await;
    let txns = tap.txns(3, WAIT).await;
    assert_eq!(
        text(&txns[0].changes[0], "body").map(|b| b.len()),
        Some(224_000)
    );
    let ChangeKind::Update { new, .. } = &txns[1].changes[0].kind else {
        panic!("update")
    };
    assert_eq!(
        new.get(1),
        Some(Value::UnchangedToast),
        "blue did not resend the TOASTed value"
    );
    assert_eq!(new.get(2), Some(Value::Text(b"1")));
    assert_eq!(text(&txns[2].changes[0], "body").as_deref(), Some("short"));
    tap.stop().await.unwrap();
}
on_every_major!(unchanged_toast_is_marked_not_sent);

async fn truncate_with_cascade_and_restart_identity(bin: &PgBin) {
    let (cluster, client) = blue(
        bin,
        "CREATE TABLE parent (id serial PRIMARY KEY); \
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent); \
         CREATE TABLE other (id serial PRIMARY KEY); \
         INSERT INTO parent DEFAULT VALUES; INSERT INTO child VALUES (1, 1); INSERT INTO other DEFAULT VALUES;",
    )
    .await;
    let mut tap = tap(&cluster).await;
    client
        .batch_execute("TRUNCATE parent, other RESTART IDENTITY CASCADE")
        .await
        .unwrap();
    client.batch_execute("TRUNCATE other").await.unwrap();
    let txns = tap.txns(2, WAIT).await;
    let ChangeKind::Truncate {
        relations,
        cascade,
        restart_identity,
    } = &txns[0].changes[0].kind
    else {
        panic!("truncate")
    };
    let mut names: Vec<String> = relations.iter().map(|r| r.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["public.child", "public.other", "public.parent"]);
    assert!(*cascade && *restart_identity);
    let ChangeKind::Truncate {
        relations,
        cascade,
        restart_identity,
    } = &txns[1].changes[0].kind
    else {
        panic!("truncate")
    };
    assert_eq!(relations.len(), 1);
    assert!(!*cascade && !*restart_identity);
    tap.stop().await.unwrap();
}
on_every_major!(truncate_with_cascade_and_restart_identity);

async fn million_row_streamed_transaction_spills(bin: &PgBin) {
    let (cluster, client) = blue(
        bin,
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text)",
    )
    .await;
    let bound = 16 * 1024 * 1024;
    let mut tap = Tap::start_with(
        source_config(&cluster.url(), "teal_slot", "teal_pub"),
        AssemblerConfig {
            max_memory: bound,
            spill_dir: std::env::temp_dir(),
            ..AssemblerConfig::default()
        },
    );
    tap.connected(WAIT).await;
    each(
        &client,
        &[
            "BEGIN; INSERT INTO big SELECT i, 'row ' || i FROM generate_series(1, 500000) i; SAVEPOINT s; INSERT INTO big SELECT i, 'rolled back' FROM generate_series(2000001, 2001000) i; ROLLBACK TO SAVEPOINT s; INSERT INTO big SELECT i, 'row ' || i FROM generate_series(500001, 1000000) i; COMMIT;",
        ],
    )
    .await;
    let txn = tap.next_txn(Duration::from_secs(300)).await;
    let mut next = 1i64;
    for c in &txn.changes {
        let ChangeKind::Insert { new, .. } = &c.kind else {
            panic!("only inserts expected")
        };
        let Some(Value::Text(id)) = new.get(0) else {
            panic!("id")
        };
        let id: i64 = std::str::from_utf8(id).unwrap().parse().unwrap();
        assert_eq!(
            id, next,
            "rows arrive in order, without the rolled-back ones"
        );
        next += 1;
    }
    let meta = txn.meta;
    assert_eq!(next, 1_000_001);
    assert_eq!(meta.change_count, 1_000_000);
    assert!(meta.streamed, "blue streamed it before its commit");
    let stats = tap.stats();
    let spilled = stats
        .spilled_changes
        .load(std::sync::atomic::Ordering::Relaxed);
    let peak = stats
        .peak_memory_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        spilled > 500_000,
        "the 16 MiB bound made it spill (spilled {spilled})"
    );
    assert!(
        peak <= bound + 64 * 1024,
        "memory stayed under the bound (peak {peak})"
    );
    tap.stop().await.unwrap();
}
on_every_major!(million_row_streamed_transaction_spills);

async fn large_transaction_without_streaming_spills_too(bin: &PgBin) {
    let (cluster, client) = blue(
        bin,
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text)",
    )
    .await;
    let mut config = source_config(&cluster.url(), "teal_slot", "teal_pub");
    config.streaming = Streaming::Off;
    let mut tap = Tap::start_with(
        config,
        AssemblerConfig {
            max_memory: 2 * 1024 * 1024,
            spill_dir: std::env::temp_dir(),
            ..AssemblerConfig::default()
        },
    );
    let session = tap.connected(WAIT).await;
    assert!(!session.options.streaming);
    each(
        &client,
        &[
            "INSERT INTO big SELECT i, repeat('p', 100) FROM generate_series(1, 100000) i",
            "INSERT INTO big VALUES (0, 'after')",
        ],
    )
    .await;
    let txn = tap.next_txn(WAIT).await;
    assert_eq!((txn.changes.len(), txn.meta.streamed), (100_000, false));
    assert!(
        tap.spilled_changes() > 0,
        "a non-streamed transaction spills past the bound as well"
    );
    let after = tap.next_txn(WAIT).await;
    assert_eq!(text(&after.changes[0], "payload").as_deref(), Some("after"));
    tap.stop().await.unwrap();
}
on_every_major!(large_transaction_without_streaming_spills_too);

async fn rolled_back_streamed_transaction_is_dropped(bin: &PgBin) {
    let (cluster, client) = blue(bin, "CREATE TABLE t (id bigint PRIMARY KEY, payload text)").await;
    let mut tap = tap(&cluster).await;
    each(
        &client,
        &[
            "BEGIN; INSERT INTO t SELECT i, repeat('x', 50) FROM generate_series(1, 20000) i; ROLLBACK;",
            "INSERT INTO t VALUES (-1, 'kept')",
        ],
    )
    .await;
    let next = tap.next_txn(WAIT).await;
    assert_eq!(next.changes.len(), 1);
    assert_eq!(text(&next.changes[0], "payload").as_deref(), Some("kept"));
    assert_eq!(
        tap.stats()
            .memory_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    tap.stop().await.unwrap();
}
on_every_major!(rolled_back_streamed_transaction_is_dropped);

async fn schema_changes_mid_stream(bin: &PgBin) {
    let (cluster, client) = blue(bin, "CREATE TABLE s (id int PRIMARY KEY, a text)").await;
    let mut tap = tap(&cluster).await;
    each(
        &client,
        &[
            "INSERT INTO s VALUES (1, 'x')",
            "ALTER TABLE s ADD COLUMN b int DEFAULT 5",
            "INSERT INTO s VALUES (2, 'y', 7)",
            "ALTER TABLE s DROP COLUMN a",
            "INSERT INTO s VALUES (3, 9)",
            "BEGIN; INSERT INTO s VALUES (4, 10); ALTER TABLE s ADD COLUMN c text; INSERT INTO s VALUES (5, 11, 'c'); COMMIT;",
            "UPDATE s SET b = 0 WHERE id = 1",
        ],
    )
    .await;
    let txns = tap.txns_with_changes(5, WAIT).await;
    let columns = |c: &teal::event::Change| {
        c.relations()[0]
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(columns(&txns[0].changes[0]), "id,a");
    assert_eq!(columns(&txns[1].changes[0]), "id,a,b");
    assert_eq!(text(&txns[1].changes[0], "b").as_deref(), Some("7"));
    assert_eq!(columns(&txns[2].changes[0]), "id,b");
    assert_eq!(columns(&txns[3].changes[0]), "id,b");
    assert_eq!(columns(&txns[3].changes[1]), "id,b,c");
    assert_eq!(text(&txns[3].changes[1], "c").as_deref(), Some("c"));
    assert_eq!(columns(&txns[4].changes[0]), "id,b,c");
    assert_eq!(text(&txns[4].changes[0], "b").as_deref(), Some("0"));
    tap.stop().await.unwrap();
}
on_every_major!(schema_changes_mid_stream);

async fn hundred_concurrent_interleaved_transactions(bin: &PgBin) {
    let (cluster, _client) = blue(
        bin,
        "CREATE TABLE conc (txn int, seq int, PRIMARY KEY (txn, seq))",
    )
    .await;
    let mut tap = tap(&cluster).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(cluster.client().await);
    }
    for c in &clients {
        c.batch_execute("BEGIN").await.unwrap();
    }
    // Rounds: every transaction writes once per round, so their changes
    // interleave in the WAL.
    for seq in 0..5 {
        let writes = clients.iter().enumerate().map(|(txn, c)| async move {
            c.execute("INSERT INTO conc VALUES ($1, $2)", &[&(txn as i32), &seq])
                .await
                .unwrap();
        });
        futures_join_all(writes).await;
    }
    // Commit in an order unrelated to the start order.
    let mut order: Vec<usize> = (0..100).collect();
    order.sort_by_key(|i| (i * 37) % 100);
    for i in &order {
        clients[*i].batch_execute("COMMIT").await.unwrap();
    }
    let txns = tap.txns(100, WAIT).await;
    let mut seen = BTreeSet::new();
    let mut committed = Vec::new();
    for t in &txns {
        let ids: Vec<(String, String)> = t
            .changes
            .iter()
            .map(|c| (text(c, "txn").unwrap(), text(c, "seq").unwrap()))
            .collect();
        let txn = ids[0].0.clone();
        assert!(
            ids.iter().all(|(t, _)| *t == txn),
            "one transaction's changes only: {ids:?}"
        );
        let seqs: Vec<&str> = ids.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(seqs, ["0", "1", "2", "3", "4"]);
        assert!(
            seen.insert(txn.clone()),
            "transaction {txn} delivered twice"
        );
        committed.push(txn.parse::<usize>().unwrap());
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(committed, order, "delivered in commit order");
    for pair in txns.windows(2) {
        assert!(pair[0].meta.commit_lsn < pair[1].meta.commit_lsn);
    }
    tap.stop().await.unwrap();
}
on_every_major!(hundred_concurrent_interleaved_transactions);

async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futs {
        set.push(f);
    }
    for f in set {
        f.await;
    }
}

async fn reconnects_after_a_server_restart_without_loss_or_repeats(bin: &PgBin) {
    let (cluster, client) = blue(bin, "CREATE TABLE seqs (n int PRIMARY KEY)").await;
    drop(client);
    let mut tap = tap(&cluster).await;
    let total = 300;
    let url = cluster.url();
    let writer = tokio::spawn(async move {
        let mut n = 1;
        let mut client: Option<tokio_postgres::Client> = None;
        while n <= total {
            let Some(c) = crate::support::cluster::reconnect(&url, &mut client).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // ON CONFLICT: a commit whose acknowledgement was lost is not applied twice.
            match c
                .execute("INSERT INTO seqs VALUES ($1) ON CONFLICT DO NOTHING", &[&n])
                .await
            {
                Ok(_) => {
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let first = tap.txns(50, WAIT).await;
    // Restart blue (fast shutdown, as for maintenance) while the writer and teal run.
    let cluster = std::sync::Arc::new(cluster);
    let restarting = std::sync::Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || {
        restarting.stop();
        std::thread::sleep(Duration::from_millis(500));
        restarting.start_again();
    })
    .await
    .unwrap();
    writer.await.unwrap();
    let mut seen: Vec<i32> = first
        .iter()
        .map(|t| text(&t.changes[0], "n").unwrap().parse().unwrap())
        .collect();
    while seen.last() != Some(&total) {
        let t = tap.next_txn(WAIT).await;
        // Transactions whose insert hit an existing row (retries) carry no change.
        for c in &t.changes {
            seen.push(text(c, "n").unwrap().parse().unwrap());
        }
    }
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "every row exactly once, in order"
    );
    tap.stop().await.unwrap();
}
on_every_major!(reconnects_after_a_server_restart_without_loss_or_repeats);

async fn missing_publication_and_slot_are_clear_errors(bin: &PgBin) {
    let cluster = Cluster::start(bin);
    let client = cluster.client().await;
    let tap = Tap::start(source_config(&cluster.url(), "teal_slot", "nope"));
    let err = tap.wait_end(WAIT).await.unwrap_err().to_string();
    assert!(
        err.contains("publication \"nope\" does not exist") && err.contains("CREATE PUBLICATION"),
        "{err}"
    );

    client
        .batch_execute("CREATE PUBLICATION p FOR ALL TABLES")
        .await
        .unwrap();
    let mut config = source_config(&cluster.url(), "absent_slot", "p");
    config.create_slot = false;
    let err = Tap::start(config)
        .wait_end(WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"absent_slot\" does not exist") && err.contains("--create-slot"),
        "{err}"
    );

    client
        .batch_execute("SELECT pg_create_logical_replication_slot('td_slot', 'test_decoding')")
        .await
        .unwrap();
    let err = Tap::start(source_config(&cluster.url(), "td_slot", "p"))
        .wait_end(WAIT)
        .await
        .unwrap_err();
    assert_eq!(
        teal::error::policy(&err.kind()).retry,
        teal::error::Retry::Stop
    );
    assert!(err.to_string().contains("needs pgoutput"), "{err}");
}
on_every_major!(missing_publication_and_slot_are_clear_errors);

async fn keepalive_reply_requests_are_answered_at_once(bin: &PgBin) {
    // Blue drops a client that stays silent for wal_sender_timeout; it asks for
    // a reply at half of it. With status updates only every 60 s, the session
    // survives only because teal answers those requests immediately.
    let cluster = Cluster::start_with(
        bin,
        Options {
            settings: vec![("wal_sender_timeout".into(), "'2s'".into())],
            ..Options::default()
        },
    );
    let client = cluster.client().await;
    each(
        &client,
        &[
            "CREATE TABLE t (id int PRIMARY KEY)",
            "CREATE PUBLICATION teal_pub FOR ALL TABLES",
        ],
    )
    .await;
    let mut config = source_config(&cluster.url(), "teal_slot", "teal_pub");
    config.status_interval = Duration::from_secs(60);
    let mut tap = Tap::start(config);
    let first = tap.connected(WAIT).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    each(&client, &["INSERT INTO t VALUES (1)"]).await;
    tap.next_txn(WAIT).await;
    let now = tap.connected(WAIT).await;
    assert!(
        std::sync::Arc::ptr_eq(&first, &now),
        "the first session is still the one streaming (no timeout, no reconnect)"
    );
    tap.stop().await.unwrap();
}
on_every_major!(keepalive_reply_requests_are_answered_at_once);

async fn exported_snapshot_and_slot_drop(bin: &PgBin) {
    let cluster = Cluster::start(bin);
    let client = cluster.client().await;
    each(
        &client,
        &[
            "CREATE TABLE t (id int PRIMARY KEY)",
            "INSERT INTO t VALUES (1)",
        ],
    )
    .await;
    let conninfo = teal::config::ConnInfo::parse_with_env(&cluster.url(), &|_| None).unwrap();
    let mut repl = teal::source::ReplicationClient::connect(&conninfo)
        .await
        .unwrap();
    let created = repl
        .create_slot("snap_slot", teal::source::SnapshotAction::Export)
        .await
        .unwrap();
    let snapshot = created.snapshot_name.clone().expect("an exported snapshot");
    assert!(created.consistent_point > Lsn::ZERO);
    // Written after the slot's consistent point: invisible in the snapshot.
    each(&client, &["INSERT INTO t VALUES (2)"]).await;
    let reader = cluster.client().await;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .expect("the snapshot is importable while the creating session stays open");
    let n: i64 = reader
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the copy sees exactly what precedes the slot's start");
    reader.batch_execute("COMMIT").await.unwrap();

    let info = repl.slot("snap_slot").await.unwrap().expect("slot exists");
    assert_eq!(
        (info.slot_type.as_str(), info.plugin.as_deref()),
        ("logical", Some("pgoutput"))
    );
    repl.drop_slot("snap_slot").await.unwrap();
    assert!(repl.slot("snap_slot").await.unwrap().is_none());
    repl.close().await;
}
on_every_major!(exported_snapshot_and_slot_drop);

async fn binary_format_values(bin: &PgBin) {
    let (cluster, client) = blue(
        bin,
        "CREATE TABLE b (id int PRIMARY KEY, label text, big int8)",
    )
    .await;
    let mut config = source_config(&cluster.url(), "teal_slot", "teal_pub");
    config.binary = true;
    let mut tap = Tap::start(config);
    assert!(tap.connected(WAIT).await.options.binary);
    each(&client, &["INSERT INTO b VALUES (258, 'x', NULL)"]).await;
    let txn = tap.next_txn(WAIT).await;
    let ChangeKind::Insert { new, .. } = &txn.changes[0].kind else {
        panic!("insert")
    };
    assert_eq!(
        new.get(0),
        Some(Value::Binary(&258i32.to_be_bytes())),
        "int4 send format"
    );
    assert_eq!(
        new.get(1),
        Some(Value::Binary(b"x")),
        "text send format is its bytes"
    );
    assert_eq!(new.get(2), Some(Value::Null));
    tap.stop().await.unwrap();
}
on_every_major!(binary_format_values);
