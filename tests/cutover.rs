//! Issue 21: what a cutover needs, as far as built: sequences kept up on
//! green while streaming (`--sync-sequences`).

use std::time::Duration;

use crate::support::cluster::default_bin;
use crate::support::twins::Twins;
use crate::support::wait::until_row;

const SEQUENCES: &str = "
    CREATE SEQUENCE shared_ids;
    CREATE SEQUENCE down INCREMENT -1 START 1000 MAXVALUE 1000;
    CREATE SEQUENCE unrelated;
    CREATE TABLE a (id serial PRIMARY KEY, v int);
    CREATE TABLE b (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
    CREATE TABLE c (id bigint DEFAULT nextval('shared_ids') PRIMARY KEY, v int);
    CREATE TABLE d (id int DEFAULT nextval('down') PRIMARY KEY);
";

/// Owned (serial), identity, and shared sequences named in a default, one
/// counting down: green follows blue while teal streams; a sequence no
/// published table uses is left alone, and one ahead on green is never
/// moved back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sequences_keeps_green_up_with_blue_never_back() {
    crate::support::tap::init_logging();
    let twins = Twins::start(&default_bin(), SEQUENCES).await;
    let mut config = twins.config();
    config.sync_sequences = Some(Duration::from_millis(200));
    let running = crate::support::running::Running::start(&twins, config).await;
    twins
        .b
        .batch_execute(
            "INSERT INTO a (v) SELECT g FROM generate_series(1, 5) g;
             INSERT INTO b (v) SELECT g FROM generate_series(1, 3) g;
             INSERT INTO c (v) SELECT g FROM generate_series(1, 7) g;
             INSERT INTO d SELECT FROM generate_series(1, 4);
             SELECT nextval('unrelated'), nextval('unrelated');",
        )
        .await
        .unwrap();
    until_row(
        &twins.g,
        "SELECT 1 WHERE (SELECT count(*) FROM a) = 5 AND (SELECT count(*) FROM b) = 3 \
           AND (SELECT count(*) FROM c) = 7 AND (SELECT count(*) FROM d) = 4",
        &[],
        Duration::from_secs(20),
        "the rows on green",
    )
    .await;
    until_row(
        &twins.g,
        "SELECT 1 FROM a_id_seq, b_id_seq, shared_ids, down \
         WHERE a_id_seq.last_value = 5 AND b_id_seq.last_value = 3 \
           AND shared_ids.last_value = 7 AND down.last_value = 997 \
           AND a_id_seq.is_called AND down.is_called",
        &[],
        Duration::from_secs(20),
        "green's sequences at blue's",
    )
    .await;
    let unrelated: (i64, bool) = {
        let r = twins
            .g
            .query_one("SELECT last_value, is_called FROM unrelated", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(unrelated, (1, false), "no published table uses it");
    // Ahead on green: left there, while blue's other sequences still move.
    twins
        .g
        .batch_execute("SELECT setval('a_id_seq', 100)")
        .await
        .unwrap();
    twins
        .b
        .batch_execute("INSERT INTO a (v) VALUES (6); INSERT INTO c (v) VALUES (8)")
        .await
        .unwrap();
    until_row(
        &twins.g,
        "SELECT 1 FROM shared_ids WHERE last_value = 8",
        &[],
        Duration::from_secs(20),
        "the shared sequence moved on",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dbg = twins.g.query_one("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), (SELECT count(*) FROM c), (SELECT count(*) FROM d), (SELECT count(*) FROM teal.conflicts), (SELECT string_agg(t::text, ',') FROM teal.progress t)", &[]).await.unwrap();
    eprintln!(
        "DBG {:?} {:?} {:?} {:?} {:?} {:?}",
        dbg.get::<_, i64>(0),
        dbg.get::<_, i64>(1),
        dbg.get::<_, i64>(2),
        dbg.get::<_, i64>(3),
        dbg.get::<_, i64>(4),
        dbg.get::<_, Option<String>>(5)
    );
    assert_eq!(
        crate::support::twins::int8(&twins.g, "SELECT last_value FROM a_id_seq").await,
        100,
        "never moved back"
    );
    assert_eq!(
        crate::support::twins::int8(&twins.g, "SELECT count(*) FROM a").await,
        6,
        "the rows streamed too"
    );
    running.stop().await;
}
