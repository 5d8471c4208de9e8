//! `teal stream` against real blue and green servers: green ends up equal to
//! blue, table by table (row count and an order-independent checksum).

use std::time::Duration;

use teal::apply::ConflictPolicy;
use teal::ops::stream::StreamConfig;

use crate::support::cluster::{Options, PgBin};
use crate::support::running::Running;
use crate::support::twins::Twins;
use crate::support::wait::until_row;
use crate::{on_every_server, on_version_pairs};

const WAIT: Duration = Duration::from_secs(60);

/// Starts `teal stream` and waits until it streams from the slot.
async fn start(twins: &Twins, config: StreamConfig) -> Running {
    Running::start(twins, config).await
}

async fn each(client: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

const TYPES: &str = r#"
CREATE SCHEMA "Mixed Schema";
CREATE TYPE "Mixed Schema".mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN "Mixed Schema".email AS text CHECK (VALUE LIKE '%@%');
CREATE TYPE "Mixed Schema".pair AS (a int, b text);
CREATE TABLE "Mixed Schema"."Weird Table" (
    id bigint PRIMARY KEY,
    "Col ""Quoted""" text,
    i2 smallint, i4 int, i8 bigint,
    num numeric, num_scaled numeric(12,3),
    f4 real, f8 double precision,
    b bool,
    t text, vc varchar(20), ch char(5),
    raw bytea,
    js json, jsb jsonb,
    u uuid,
    d date, tm time, tmz timetz, ts timestamp, tsz timestamptz, iv interval,
    ip inet, net cidr, mac macaddr,
    bits bit(4), vbits varbit,
    tsv tsvector,
    r4 int4range, rtz tstzrange,
    ints int[], texts text[], grid int[][],
    m "Mixed Schema".mood, moods "Mixed Schema".mood[],
    e "Mixed Schema".email,
    p "Mixed Schema".pair,
    pt point, bx box,
    lsn pg_lsn,
    wide text
);
"#;

async fn every_type_round_trips(bin: &PgBin) {
    every_type_between(bin, bin).await;
}
on_every_server!(every_type_round_trips);

// Blue-green migrations are mostly major-version upgrades (and rollbacks
// go the other way): the type matrix across version pairs (issue 18.5).
on_version_pairs!(
    every_type_between,
    blue_14_green_18 => (14, 18),
    blue_18_green_15 => (18, 15),
    blue_15_green_17 => (15, 17),
    blue_17_green_14 => (17, 14),
    blue_16_green_16 => (16, 16),
);

async fn every_type_between(blue: &PgBin, green: &PgBin) {
    every_type_with(blue, green, false).await;
}

/// pgoutput's binary mode (`--binary`): values in their types' send
/// format, bound as binary parameters and COPY'd in binary, between
/// servers of one build (as PostgreSQL's subscriber requires).
async fn every_type_in_binary(bin: &PgBin) {
    every_type_with(bin, bin, true).await;
}
on_every_server!(every_type_in_binary);

/// `--binary`, built-in types only: many updates and deletes go to green
/// as set-based statements carrying arrays of the columns' own types (the
/// binary values as blue sent them), and green ends equal to blue.
async fn binary_values_go_set_based(bin: &PgBin) {
    let t =
        "CREATE TABLE b (id bigint PRIMARY KEY, i4 int, i2 smallint, num numeric(12,3), f8 float8,
             t text, vc varchar(20), ch char(5), flag bool, raw bytea, js jsonb, u uuid, d date,
             tsz timestamptz, iv interval, ip inet, doc text);
             ALTER TABLE b ALTER COLUMN doc SET STORAGE EXTERNAL";
    let twins = Twins::start(bin, t).await;
    let mut config = twins.config();
    config.source.binary = true;
    let running = start(&twins, config).await;
    each(
        &twins.b,
        &[
            "INSERT INTO b SELECT i, i * 7, (i % 100)::smallint, i / 7.0, i / 3.0, 'row ' || i, 'v' || i, 'c',
                    i % 2 = 0, decode(md5(i::text), 'hex'), jsonb_build_object('i', i, 'tags', jsonb_build_array(i, 'x')),
                    md5(i::text)::uuid, date '2026-01-01' + i, timestamptz '2026-01-01 00:00+00' + i * interval '1 minute',
                    i * interval '1 second', ('10.0.' || (i % 250) || '.1')::inet, repeat('d', 5000)
             FROM generate_series(1, 200) i",
            // Every row twice in two transactions (TOASTed doc unchanged), then
            // a key-only delete of a third, then NULLs set.
            "UPDATE b SET i4 = i4 + 1, num = num * 2, t = t || ' ✓', flag = NOT flag, js = js || jsonb_build_object('u', 1)",
            "UPDATE b SET tsz = tsz + interval '1 day', iv = iv * 2, ch = 'z', raw = raw || '\\x00'::bytea",
            "DELETE FROM b WHERE id % 3 = 0",
            "UPDATE b SET vc = NULL, u = NULL, d = NULL WHERE id % 3 = 1",
        ],
    )
    .await;
    twins.assert_converged(&["b"], WAIT).await;
    let stats = running.stop().await;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&stats.conflicts), 0);
    // 200 + 200 updated, 66 deleted, 67 updated: set-based (or superseded).
    assert_eq!(
        load(&stats.set_based_rows) + load(&stats.superseded_updates),
        200 + 200 + 66 + 67,
        "binary values go set-based"
    );
}
on_every_server!(binary_values_go_set_based);

async fn every_type_with(blue: &PgBin, green: &PgBin, binary: bool) {
    // Blue with unusual defaults: they must not change what lands on green.
    let twins = Twins::start_with(blue, green, TYPES, Options::default(), Options::default()).await;
    each(
        &twins.b,
        &[
            "ALTER DATABASE postgres SET DateStyle = 'SQL, DMY'",
            "ALTER DATABASE postgres SET IntervalStyle = 'sql_standard'",
            "ALTER DATABASE postgres SET TimeZone = 'Pacific/Chatham'",
            "ALTER DATABASE postgres SET extra_float_digits = -3",
            "ALTER DATABASE postgres SET bytea_output = 'escape'",
        ],
    )
    .await;
    let mut config = twins.config();
    config.source.binary = binary;
    let running = start(&twins, config).await;
    let t = r#""Mixed Schema"."Weird Table""#;
    each(
        &twins.b,
        &[
            &format!(
                r#"INSERT INTO {t} VALUES (1, 'quoted "col"', -32768, 2147483647, -9223372036854775808,
                  'NaN', 12345.678, 'Infinity', -0.0, true, 'grüße ✓ 日本 ''q'' \ back', 'varchar', 'ab',
                  '\x00ff00'::bytea, '{{"a": [1, 2.50, null]}}', '{{"b": {{"c": "d"}}, "a": 1}}',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-02-28', '23:59:59.999999', '04:05:06+05:30',
                  '1999-12-31 23:59:59.5', '2026-11-23 10:00:00.123456+00', '1 year 2 mons 3 days 04:05:06.5',
                  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', B'1010', B'101',
                  'the quick:1 brown fox', '[1,10)', '[2026-01-01 00:00+00, 2026-02-01 00:00+00)',
                  '{{}}', '{{NULL,"x y",""}}', '{{{{1,2}},{{3,4}}}}', 'happy', '{{sad,ok}}',
                  'me@example.com', ROW(7, 'seven'), '(1.5,2)', '((0,0),(1,1))', '16/B374D848',
                  repeat('w', 100000))"#
            ),
            &format!("INSERT INTO {t} (id) VALUES (2)"),
            &format!(
                "INSERT INTO {t} (id, num, f8, t, raw, ints) VALUES (3, '-Infinity', 'NaN', '', '\\x', '{{NULL}}')"
            ),
            &format!(r#"UPDATE {t} SET "Col ""Quoted""" = 'changed', m = 'ok', num = 1e-20 WHERE id = 1"#),
            &format!("UPDATE {t} SET wide = NULL, tsz = '-infinity' WHERE id = 3"),
            &format!("DELETE FROM {t} WHERE id = 2"),
            // Many rows of every type: set-based UPDATE and DELETE statements,
            // with the same row updated twice in one transaction.
            &format!(
                "INSERT INTO {t} SELECT id * 1000 + g, \"Col \"\"Quoted\"\"\", i2, i4, i8, num, num_scaled, f4, f8, b, t, vc, ch, raw, js, jsb, u, \
                 d, tm, tmz, ts, tsz, iv, ip, net, mac, bits, vbits, tsv, r4, rtz, ints, texts, grid, m, moods, e, p, pt, bx, lsn, wide \
                 FROM {t}, generate_series(1, 40) g WHERE id IN (1, 3)"
            ),
            &format!(r#"UPDATE {t} SET i4 = i4 - 1, "Col ""Quoted""" = "Col ""Quoted""" || ' ✓' WHERE id > 100"#),
            &format!(
                "BEGIN; UPDATE {t} SET num = num * 2 WHERE id > 100; UPDATE {t} SET f8 = f8 / 2 WHERE id > 100; COMMIT"
            ),
            &format!("DELETE FROM {t} WHERE id > 100 AND id % 3 = 0"),
        ],
    )
    .await;
    twins.assert_converged(&[t], WAIT).await;
    let stats = running.stop().await;
    assert_eq!(
        stats.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // 80 rows updated three times, 26 deleted: set-based, not row by row
    // (or left out, where one green transaction holds a later update that
    // overwrites the row whole).
    // (With --binary this table goes row by row: its user types cannot
    // travel as arrays of their own type; see binary_values_go_set_based.)
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    if !binary {
        assert_eq!(
            load(&stats.set_based_rows) + load(&stats.superseded_updates),
            3 * 80 + 26
        );
    }
}

async fn replica_identities_toast_and_truncate_on_green(bin: &PgBin) {
    let schema = "CREATE TABLE ri_default (id int PRIMARY KEY, v text); \
         CREATE TABLE ri_full (id int, v text, doc text); ALTER TABLE ri_full REPLICA IDENTITY FULL; \
         CREATE TABLE ri_index (a int NOT NULL, b int NOT NULL, v text); \
         CREATE UNIQUE INDEX ri_index_ab ON ri_index (a, b); \
         ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_ab; \
         CREATE TABLE docs (id int PRIMARY KEY, body text, n int); \
         CREATE TABLE parent (id serial PRIMARY KEY); \
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent); \
         INSERT INTO ri_full VALUES (1, 'dup', NULL), (1, 'dup', NULL), (2, NULL, 'x');";
    let twins = Twins::start(bin, schema).await;
    // Green's own sequence moved on: RESTART IDENTITY must reset it.
    each(&twins.g, &["SELECT setval('parent_id_seq', 100)"]).await;
    let running = start(&twins, twins.config()).await;
    each(
        &twins.b,
        &[
            "INSERT INTO ri_default SELECT i, 'v' || i FROM generate_series(1, 100) i",
            "UPDATE ri_default SET v = 'changed' WHERE id % 3 = 0",
            "UPDATE ri_default SET id = id + 1000 WHERE id % 10 = 0",
            "DELETE FROM ri_default WHERE id % 7 = 0",
            // FULL without a key: one of two identical rows, and NULLs in the identity.
            "UPDATE ri_full SET v = 'one' WHERE ctid = (SELECT min(ctid) FROM ri_full WHERE v = 'dup')",
            "DELETE FROM ri_full WHERE v IS NULL",
            "INSERT INTO ri_index VALUES (1, 1, 'x'), (1, 2, 'y')",
            "UPDATE ri_index SET b = 3 WHERE b = 2",
            "UPDATE ri_index SET v = 'z'",
            "DELETE FROM ri_index WHERE b = 1",
            "INSERT INTO ri_index SELECT i, 10, 'm' FROM generate_series(100, 140) i",
            "UPDATE ri_index SET v = 'n' WHERE b = 10",
            "DELETE FROM ri_index WHERE b = 10 AND a % 2 = 0",
            "INSERT INTO docs SELECT i, string_agg(md5(i::text || g::text), ''), 0 FROM generate_series(1, 20) i, generate_series(1, 7000) g GROUP BY i",
            // Unchanged TOAST: green must keep the value blue did not resend.
            "UPDATE docs SET n = n + 1",
            "UPDATE docs SET body = 'short' WHERE id = 1",
            "INSERT INTO parent DEFAULT VALUES",
            "INSERT INTO child VALUES (1, 1)",
            "TRUNCATE parent RESTART IDENTITY CASCADE",
            "INSERT INTO parent DEFAULT VALUES",
        ],
    )
    .await;
    twins
        .assert_converged(
            &[
                "ri_default",
                "ri_full",
                "ri_index",
                "docs",
                "parent",
                "child",
            ],
            WAIT,
        )
        .await;
    let next_id: i32 = twins
        .g
        .query_one("SELECT nextval('parent_id_seq')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next_id, 1, "RESTART IDENTITY reset green's sequence too");
    let stats = running.stop().await;
    // Set-based: ri_default's 33 updates, ri_index's 41 updates (two-column
    // key) and 21 deletes, docs' 20 updates leaving TOASTed bodies alone
    // (doc 1's left out when the update that sets its whole row is in the
    // same green transaction).
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        load(&stats.set_based_rows) + load(&stats.superseded_updates),
        33 + 41 + 21 + 20
    );
}
on_every_server!(replica_identities_toast_and_truncate_on_green);

async fn big_streamed_transaction_and_schema_change(bin: &PgBin) {
    let twins = Twins::start(bin, "CREATE TABLE big (id bigint PRIMARY KEY, payload text); CREATE TABLE s (id int PRIMARY KEY, a text)").await;
    let mut config = twins.config();
    config.assembler.max_memory = 16 * 1024 * 1024;
    let running = start(&twins, config).await;
    each(
        &twins.b,
        &["BEGIN; \
           INSERT INTO big SELECT i, 'row ' || i FROM generate_series(1, 300000) i; \
           SAVEPOINT s; INSERT INTO big SELECT i, 'rolled back' FROM generate_series(900001, 901000) i; ROLLBACK TO SAVEPOINT s; \
           UPDATE big SET payload = 'updated' WHERE id % 1000 = 0; \
           DELETE FROM big WHERE id % 999 = 0; \
           COMMIT;"],
    )
    .await;
    twins
        .assert_converged(&["big"], Duration::from_secs(180))
        .await;
    // Schema changes as an operator makes them: a column is added on green
    // first (green may have extra columns) and dropped on blue first (blue
    // stops sending it), so teal keeps streaming throughout.
    each(&twins.g, &["ALTER TABLE s ADD COLUMN b int DEFAULT 5"]).await;
    each(
        &twins.b,
        &[
            "INSERT INTO s VALUES (0, 'before')",
            "ALTER TABLE s ADD COLUMN b int DEFAULT 5",
        ],
    )
    .await;
    each(
        &twins.b,
        &[
            "INSERT INTO s VALUES (1, 'x', 7)",
            "UPDATE s SET b = 8 WHERE id = 0",
        ],
    )
    .await;
    each(
        &twins.b,
        &["ALTER TABLE s DROP COLUMN a", "INSERT INTO s VALUES (2, 9)"],
    )
    .await;
    twins.assert_converged(&[], WAIT).await;
    each(&twins.g, &["ALTER TABLE s DROP COLUMN a"]).await;
    // A new definition of the table in the middle of a run of inserts (which
    // travels by COPY): the COPY must end before green's catalog is read.
    each(&twins.g, &["ALTER TABLE s ADD COLUMN c text"]).await;
    each(
        &twins.b,
        &[
            "BEGIN; INSERT INTO s SELECT i, i FROM generate_series(100, 199) i; \
           ALTER TABLE s ADD COLUMN c text; \
           INSERT INTO s SELECT i, i, 'c' || i FROM generate_series(200, 299) i; COMMIT;",
        ],
    )
    .await;
    twins.assert_converged(&["s"], WAIT).await;
    running.stop().await;
}
on_every_server!(big_streamed_transaction_and_schema_change);

async fn schema_drift_stops_then_resumes_after_the_fix(bin: &PgBin) {
    let twins = Twins::start(bin, "CREATE TABLE ledger (id int PRIMARY KEY, memo text)").await;
    each(&twins.b, &["ALTER TABLE ledger ADD COLUMN amount numeric"]).await;
    let running = start(&twins, twins.config()).await;
    each(
        &twins.b,
        &[
            "INSERT INTO ledger VALUES (1, 'a', 1.5)",
            "INSERT INTO ledger VALUES (2, 'b', 2.5)",
        ],
    )
    .await;
    let err = running.failure().await.to_string();
    assert!(
        err.contains("public.ledger")
            && err.contains("\"amount\"")
            && err.contains("ALTER TABLE \"public\".\"ledger\" ADD COLUMN \"amount\" numeric"),
        "{err}"
    );
    let (count, _) = crate::support::twins::checksum(&twins.g, "ledger").await;
    assert_eq!(
        count, 0,
        "nothing of the failing transactions was committed"
    );
    each(&twins.g, &["ALTER TABLE ledger ADD COLUMN amount numeric"]).await;
    let running = start(&twins, twins.config()).await;
    twins.assert_converged(&["ledger"], WAIT).await;
    running.stop().await;

    // A type green cannot take.
    each(
        &twins.g,
        &["ALTER TABLE ledger ALTER COLUMN memo TYPE int USING 0"],
    )
    .await;
    let running = start(&twins, twins.config()).await;
    each(&twins.b, &["INSERT INTO ledger VALUES (3, 'c', 3.5)"]).await;
    let err = running.failure().await.to_string();
    assert!(
        err.contains("\"memo\"") && err.contains("integer") && err.contains("text"),
        "{err}"
    );
}
on_every_server!(schema_drift_stops_then_resumes_after_the_fix);

async fn conflict_policies(bin: &PgBin) {
    let schema = "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text); \
                  CREATE TABLE c (id int PRIMARY KEY, v text);";
    let twins = Twins::start(bin, schema).await;
    // Green diverged: rows blue does not have, and rows missing that blue has.
    each(
        &twins.b,
        &[
            "INSERT INTO a VALUES (2, 'blue'), (3, 'blue')",
            "INSERT INTO b VALUES (2, 'blue'), (3, 'blue')",
            "INSERT INTO a SELECT i, 'blue' FROM generate_series(100, 139) i",
        ],
    )
    .await;
    each(
        &twins.g,
        &["INSERT INTO a SELECT i, 'green' FROM generate_series(100, 139) i WHERE i <> 120"],
    )
    .await;
    each(
        &twins.g,
        &[
            "INSERT INTO a VALUES (1, 'green')",
            "INSERT INTO b VALUES (1, 'green')",
            "INSERT INTO c VALUES (1, 'green')",
        ],
    )
    .await;
    let mut config = twins.config();
    config.apply.conflicts.default = ConflictPolicy::SourceWins;
    config.apply.conflicts.tables.insert(
        teal::event::QualifiedName {
            namespace: "public".into(),
            name: "b".into(),
        },
        ConflictPolicy::TargetWins,
    );
    let running = start(&twins, config).await;
    each(
        &twins.b,
        &[
            "INSERT INTO a VALUES (1, 'blue')", // exists on green: source wins
            "INSERT INTO b VALUES (1, 'blue')", // exists on green: target wins
            "UPDATE a SET v = 'blue2' WHERE id = 2", // missing on green: inserted
            "UPDATE b SET v = 'blue2' WHERE id = 2", // missing on green: skipped
            "DELETE FROM a WHERE id = 3",       // missing on green: skipped
            "INSERT INTO a VALUES (10, 'plain')", // no conflict
            // One set-based statement for 40 rows finds 39: row 120 is inserted.
            "UPDATE a SET v = 'blue3' WHERE id >= 100",
        ],
    )
    .await;
    let target = twins
        .b
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    until_row(
        &twins.g,
        "SELECT 1 FROM teal.progress WHERE end_lsn >= $1::text::pg_lsn",
        &[&target],
        WAIT,
        &format!("green's progress reached {target}"),
    )
    .await;
    let rows = |t: &'static str| {
        let g = &twins.g;
        async move {
            g.query(
                &format!("SELECT id, v FROM {t} WHERE id < 100 ORDER BY id"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        rows("a").await,
        [
            (1, "blue".into()),
            (2, "blue2".into()),
            (10, "plain".into())
        ]
    );
    assert_eq!(rows("b").await, [(1, "green".into())]);
    let log = twins
        .g
        .query(
            "SELECT table_name, kind, policy, resolution, key::text, source_row->>'v', target_row->>'v' FROM teal.conflicts ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let log: Vec<(String, String, String)> =
        log.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        log,
        [
            (
                "public.a".into(),
                "insert_exists".into(),
                "source-wins".into()
            ),
            (
                "public.b".into(),
                "insert_exists".into(),
                "target-wins".into()
            ),
            (
                "public.a".into(),
                "update_missing".into(),
                "source-wins".into()
            ),
            (
                "public.b".into(),
                "update_missing".into(),
                "target-wins".into()
            ),
            (
                "public.a".into(),
                "delete_missing".into(),
                "source-wins".into()
            ),
            (
                "public.a".into(),
                "update_missing".into(),
                "source-wins".into()
            ),
        ]
    );
    let updated: i64 = twins
        .g
        .query_one(
            "SELECT count(*) FROM a WHERE id >= 100 AND v = 'blue3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(updated, 40);
    let stats = running.stop().await;
    assert_eq!(
        stats.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        6
    );

    // The default policy, error: stop, report, commit nothing of it.
    let mut config = twins.config();
    config.apply.conflicts.default = ConflictPolicy::Error;
    let running = start(&twins, config).await;
    each(&twins.b, &["INSERT INTO c VALUES (1, 'blue')"]).await;
    let err = running.failure().await.to_string();
    assert!(
        err.contains("insert_exists") && err.contains("public.c") && err.contains("policy error"),
        "{err}"
    );
    let row = twins
        .g
        .query_one(
            "SELECT policy, resolution, source_row->>'v', target_row->>'v', key::text FROM teal.conflicts WHERE table_name = 'public.c'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(4)
        ),
        (
            "error".into(),
            "blue".into(),
            "green".into(),
            r#"{"id": "1"}"#.into()
        )
    );
    let v: String = twins
        .g
        .query_one("SELECT v FROM c WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "green");
}
on_every_server!(conflict_policies);

/// Commit origin (roident, 0 = local) of each row of `acct`, by id.
async fn commit_origins(g: &tokio_postgres::Client) -> Vec<(i32, i64)> {
    g.query(
        "SELECT id, (pg_xact_commit_timestamp_origin(xmin)).roident::bigint FROM acct ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn replication_origin_marks_green_commits(bin: &PgBin) {
    let mut green = Options::default();
    green
        .settings
        .push(("track_commit_timestamp".into(), "on".into()));
    let twins = Twins::start_with(
        bin,
        bin,
        "CREATE TABLE acct (id int PRIMARY KEY, v int)",
        Options::default(),
        green,
    )
    .await;
    // A role that may apply (session_replication_role) but not use origins.
    each(
        &twins.g,
        &[
            "CREATE ROLE applier LOGIN PASSWORD 'applier-secret'",
            "GRANT SET ON PARAMETER session_replication_role TO applier",
            "GRANT CREATE ON DATABASE postgres TO applier",
            "GRANT ALL ON acct TO applier",
        ],
    )
    .await;
    let mut config = twins.config();
    config.apply.target = teal::config::ConnInfo::parse_with_env(
        &twins
            .green
            .url_for("applier", "applier-secret", "sslmode=disable"),
        &|_| None,
    )
    .unwrap();
    let running = start(&twins, config).await;
    each(
        &twins.b,
        &["INSERT INTO acct SELECT i, i FROM generate_series(1, 3) i"],
    )
    .await;
    twins.assert_converged(&["acct"], WAIT).await;
    running.stop().await;
    let origins: i64 = twins
        .g
        .query_one("SELECT count(*) FROM pg_replication_origin", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(origins, 0, "the unprivileged role created no origin");
    assert_eq!(commit_origins(&twins.g).await, vec![(1, 0), (2, 0), (3, 0)]);

    // A superuser: the origin is created and every teal commit carries it.
    let running = start(&twins, twins.config()).await;
    each(
        &twins.b,
        &[
            "INSERT INTO acct SELECT i, i FROM generate_series(4, 5) i",
            "UPDATE acct SET v = v + 10 WHERE id = 1",
        ],
    )
    .await;
    twins.assert_converged(&["acct"], WAIT).await;
    running.stop().await;
    let row = twins
        .g
        .query_one(
            "SELECT o.roident::bigint, s.remote_lsn::text, p.commit_lsn::text, p.end_lsn::text,                     s.remote_lsn > p.commit_lsn AND s.remote_lsn <= p.end_lsn                FROM pg_replication_origin o                JOIN pg_replication_origin_status s ON s.local_id = o.roident                CROSS JOIN teal.progress p               WHERE o.roname = $1 AND p.slot = 'teal_slot'",
            &[&teal::apply::origin_name("teal_slot")],
        )
        .await
        .expect("origin teal_teal_slot exists with progress");
    let ident: i64 = row.get(0);
    assert!(
        row.get::<_, bool>(4),
        "origin's remote_lsn {} is the end of the last applied transaction (commit {}, progress end {})",
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        row.get::<_, String>(3)
    );
    assert_eq!(
        commit_origins(&twins.g).await,
        vec![(1, ident), (2, 0), (3, 0), (4, ident), (5, ident)]
    );
}
on_every_server!(replication_origin_marks_green_commits);

/// Interleaved small transactions over three tables (pgbench-like), many
/// per green transaction: each table's changes are applied together, the
/// ten tellers' repeated updates collapse to their last whole-row update,
/// history inserts become one statement; green still equals blue, and a
/// TOASTed column left unchanged by later updates keeps its value.
/// Where green fires a trigger on apply, blue's order is kept: the trigger
/// sees each change exactly where blue made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_apply_per_table_and_keep_each_row_in_order() {
    let schema = "CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL);
         CREATE TABLE teller (id int PRIMARY KEY, bal bigint NOT NULL, doc text);
         CREATE TABLE hist (id bigint PRIMARY KEY, acct int, teller int, delta int);
         CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
         CREATE TABLE ticks (id bigint PRIMARY KEY);
         INSERT INTO acct SELECT i, 0 FROM generate_series(1, 1000) i;
         INSERT INTO teller SELECT i, 0, CASE WHEN i <= 5 THEN (SELECT string_agg(md5(i::text || g), '') FROM generate_series(1, 400) g) END
           FROM generate_series(1, 10) i;
         INSERT INTO counter VALUES (1, 0);";
    let twins = Twins::start(&crate::support::cluster::default_bin(), schema).await;
    // On green only: a trigger enabled ALWAYS on counter that records how
    // many ticks green has when counter changes.
    each(
        &twins.g,
        &["CREATE TABLE seen (n bigint);
           CREATE FUNCTION note_ticks() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO seen SELECT count(*) FROM ticks; RETURN NEW; END $$;
           CREATE TRIGGER note_ticks AFTER UPDATE ON counter FOR EACH ROW EXECUTE FUNCTION note_ticks();
           ALTER TABLE counter ENABLE ALWAYS TRIGGER note_ticks;"],
    )
    .await;
    let mut config = twins.config();
    // Many source transactions per green transaction.
    config.apply.batch_max_delay = Duration::from_millis(1000);
    let running = start(&twins, config).await;
    // Blue's order where green fires a trigger on apply.
    let mut ticks = String::new();
    for n in 1..=100 {
        ticks.push_str(&format!(
            "BEGIN; UPDATE acct SET bal = bal + 1 WHERE id = {n}; INSERT INTO ticks VALUES ({n}); \
             UPDATE counter SET n = n + 1 WHERE id = 1; COMMIT;"
        ));
    }
    twins.b.batch_execute(&ticks).await.unwrap();
    twins.assert_converged(&["counter", "ticks"], WAIT).await;
    let mut script = String::new();
    for n in 1..=300 {
        let (acct, teller, delta) = (1 + (n * 7919) % 1000, 1 + n % 10, n % 17 - 8);
        script.push_str(&format!(
            "BEGIN; UPDATE acct SET bal = bal + {delta} WHERE id = {acct}; \
             UPDATE teller SET bal = bal + {delta} WHERE id = {teller}; \
             INSERT INTO hist VALUES ({n}, {acct}, {teller}, {delta}); "
        ));
        if n % 9 == 0 {
            // A whole-row update of a TOASTed teller, later ones leave doc alone.
            script.push_str(&format!(
                "UPDATE teller SET doc = (SELECT string_agg(md5({n}::text || g), '') FROM generate_series(1, 400) g) WHERE id = {};",
                1 + n % 5
            ));
        }
        script.push_str("COMMIT;");
    }
    twins.b.batch_execute(&script).await.unwrap();
    twins
        .assert_converged(&["acct", "teller", "hist", "counter", "ticks"], WAIT)
        .await;
    let seen: Vec<i64> = twins
        .g
        .query("SELECT n FROM seen ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seen,
        (1..=100).collect::<Vec<i64>>(),
        "the ALWAYS trigger saw every counter update right after its tick"
    );
    let stats = running.stop().await;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&stats.conflicts), 0);
    assert!(
        load(&stats.superseded_updates) > 100,
        "repeated teller updates collapsed: {}",
        load(&stats.superseded_updates)
    );
    assert!(
        load(&stats.set_based_rows) > 300,
        "accounts and history went set-based: {}",
        load(&stats.set_based_rows)
    );
    assert!(
        load(&stats.batches) < 80,
        "several source transactions per green transaction: {} batches",
        load(&stats.batches)
    );
}

/// Unix-socket hosts (`host=/dir`, as libpq): the replication connection to
/// blue and the apply sessions on green both go through the servers'
/// socket directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_hosts_for_blue_and_green() {
    let bin = crate::support::cluster::default_bin();
    let twins = Twins::start(&bin, "CREATE TABLE u (id int PRIMARY KEY, v text)").await;
    let socket = |c: &teal::local::Cluster| {
        teal::config::ConnInfo::parse_with_env(
            &format!(
                "host={} port={} user=postgres dbname=postgres",
                c.dir().display(),
                c.port
            ),
            &|_| None,
        )
        .unwrap()
    };
    let mut config = twins.config();
    config.source.conninfo = socket(&twins.blue);
    config.apply.target = socket(&twins.green);
    let running = start(&twins, config).await;
    each(
        &twins.b,
        &[
            "INSERT INTO u SELECT g, 'v' || g FROM generate_series(1, 50) g",
            "UPDATE u SET v = 'w' WHERE id % 2 = 0",
        ],
    )
    .await;
    twins.assert_converged(&["u"], WAIT).await;
    // Both sessions really came over the sockets (client_addr is NULL).
    let over_socket: i64 = twins
        .b
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'teal%' AND client_addr IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        over_socket, 1,
        "the replication connection came over blue's socket"
    );
    running.stop().await;
}

/// `--binary auto`: binary for built-in types the same on both sides,
/// text for an array, a user type, a type that differs, masking or Kafka;
/// a stream in auto runs in binary (the walsender's command says so) and
/// converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_auto_is_binary_only_where_safe() {
    let twins = Twins::start(
        &crate::support::cluster::default_bin(),
        "CREATE TABLE a (id int PRIMARY KEY, v numeric, at timestamptz, note text)",
    )
    .await;
    let mut config = twins.config();
    config.binary_auto = true;
    assert!(teal::ops::binary::safe(&config).await, "built-in types");
    let mut kafka = config.clone();
    kafka.kafka = Some(teal::sink::kafka::KafkaConfig::new(
        "127.0.0.1:1",
        "postgres",
    ));
    assert!(!teal::ops::binary::safe(&kafka).await, "Kafka: text");
    let running = start(&twins, config.clone()).await;
    let command: String = twins
        .b
        .query_one(
            "SELECT query FROM pg_stat_activity WHERE backend_type = 'walsender'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(command.contains("binary 'true'"), "{command}");
    each(
        &twins.b,
        &[
            "INSERT INTO a SELECT i, i / 3.0, '2026-01-01'::timestamptz + i * interval '1 hour', 'n' || i FROM generate_series(1, 100) i",
            "UPDATE a SET v = v * 2, note = note || ' ✓'",
            "DELETE FROM a WHERE id % 4 = 0",
        ],
    )
    .await;
    twins.assert_converged(&["a"], WAIT).await;
    let stats = running.stop().await;
    assert_eq!(
        stats
            .set_based_rows
            .load(std::sync::atomic::Ordering::Relaxed)
            + stats
                .superseded_updates
                .load(std::sync::atomic::Ordering::Relaxed),
        100 + 25,
        "binary updates and deletes went set-based"
    );
    // Another type on green, an array, a type of its own: text.
    twins
        .g
        .batch_execute("ALTER TABLE a ALTER COLUMN v TYPE float8")
        .await
        .unwrap();
    assert!(!teal::ops::binary::safe(&config).await, "types differ");
    twins
        .g
        .batch_execute("ALTER TABLE a ALTER COLUMN v TYPE numeric")
        .await
        .unwrap();
    for side in [&twins.b, &twins.g] {
        side.batch_execute("ALTER TABLE a ADD COLUMN tags text[]")
            .await
            .unwrap();
    }
    assert!(!teal::ops::binary::safe(&config).await, "an array");
    for side in [&twins.b, &twins.g] {
        side.batch_execute(
            "ALTER TABLE a DROP COLUMN tags; CREATE TYPE mood AS ENUM ('ok'); ALTER TABLE a ADD COLUMN m mood",
        )
        .await
        .unwrap();
    }
    assert!(!teal::ops::binary::safe(&config).await, "a user type");
}
