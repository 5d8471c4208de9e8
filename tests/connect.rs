//! Authentication and TLS against real servers, with a CA the test generates:
//! SCRAM-SHA-256 (with channel binding), md5, password, client certificates,
//! the password file, and each sslmode's verification rules.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use teal::config::ConnInfo;
use teal::error::{Retry, policy};
use teal::source::{ReplicationClient, SourceError};

use crate::on_every_server;
use crate::support::cluster::{Cluster, Options, PgBin};
use crate::support::tap::{Tap, source_config, text};

/// A CA, a server certificate for db.teal.test and 127.0.0.1, and a client
/// certificate for role `cert_user`, all PEM.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
    ca_cert: String,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "teal test CA");
        let ca = ca.self_signed(&ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["db.teal.test".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server
            .distinguished_name
            .push(DnType::CommonName, "db.teal.test");
        let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client
            .distinguished_name
            .push(DnType::CommonName, "cert_user");
        let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.crt"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Pki {
            dir,
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
            ca_cert: ca.pem(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

async fn tls_cluster(bin: &PgBin, pki: &Pki) -> Cluster {
    let cluster = Cluster::start_with(
        bin,
        Options {
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "'server.crt'".into()),
                ("ssl_key_file".into(), "'server.key'".into()),
                ("ssl_ca_file".into(), "'ca.crt'".into()),
            ],
            hba: vec![
                "hostssl all tls_only 127.0.0.1/32 scram-sha-256".into(),
                "host all tls_only 127.0.0.1/32 reject".into(),
                "hostssl all cert_user 127.0.0.1/32 cert".into(),
                "host all scram_user 127.0.0.1/32 scram-sha-256".into(),
                "host all md5_user 127.0.0.1/32 md5".into(),
                "host all pw_user 127.0.0.1/32 password".into(),
            ],
            files: vec![
                (
                    "server.crt".into(),
                    pki.server_cert.clone().into_bytes(),
                    0o600,
                ),
                (
                    "server.key".into(),
                    pki.server_key.clone().into_bytes(),
                    0o600,
                ),
                ("ca.crt".into(), pki.ca_cert.clone().into_bytes(), 0o600),
            ],
            ..Options::default()
        },
    );
    cluster
        .client()
        .await
        .batch_execute(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-secret'; \
             CREATE ROLE tls_only LOGIN REPLICATION PASSWORD 'tls-secret'; \
             CREATE ROLE cert_user LOGIN REPLICATION; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret'; \
             CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'pw-secret'; \
             CREATE TABLE t (id int PRIMARY KEY); \
             GRANT SELECT ON t TO scram_user, tls_only, cert_user, md5_user, pw_user; \
             CREATE PUBLICATION teal_pub FOR TABLE t;",
        )
        .await
        .expect("roles");
    cluster
}

fn conninfo(url: &str) -> ConnInfo {
    ConnInfo::parse_with_env(url, &|_| None).expect("test URL parses")
}

async fn connect(url: &str) -> Result<ReplicationClient, SourceError> {
    ReplicationClient::connect(&conninfo(url)).await
}

async fn scram_over_verify_full_tls_streams(bin: &PgBin) {
    let pki = Pki::new();
    let cluster = tls_cluster(bin, &pki).await;
    let url = format!(
        "postgresql://tls_only:tls-secret@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}&channel_binding=require",
        cluster.port,
        pki.path("ca.crt").display()
    );
    let mut tap = Tap::start(source_config(&url, "tls_slot", "teal_pub"));
    let session = tap.connected(Duration::from_secs(30)).await;
    assert!(session.tls, "the replication session is encrypted");
    cluster
        .client()
        .await
        .batch_execute("INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    let txn = tap.next_txn(Duration::from_secs(30)).await;
    assert_eq!(text(&txn.changes[0], "id").as_deref(), Some("42"));
    tap.stop().await.unwrap();
}
on_every_server!(scram_over_verify_full_tls_streams);

async fn authentication_methods(bin: &PgBin) {
    let pki = Pki::new();
    let cluster = tls_cluster(bin, &pki).await;
    let port = cluster.port;
    for (user, password) in [
        ("scram_user", "scram-secret"),
        ("md5_user", "md5-secret"),
        ("pw_user", "pw-secret"),
    ] {
        let client = connect(&format!(
            "postgresql://{user}:{password}@127.0.0.1:{port}/postgres?sslmode=disable"
        ))
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(!client.is_tls());
        assert_eq!(client.server_version(), bin.version);
        client.close().await;
    }

    let err = connect(&format!(
        "postgresql://scram_user:wrong@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
    .await
    .err()
    .expect("a wrong password is refused");
    assert_eq!(policy(&err.kind()).retry, Retry::Stop);
    assert!(err.to_string().contains("28P01"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password never appears in errors: {err}"
    );

    let err = connect(&format!(
        "postgresql://scram_user@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
    .await
    .err()
    .expect("no password");
    assert!(err.to_string().contains("none was given"), "{err}");

    // The password file, as libpq reads it.
    let pgpass = pki.path("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{port}:*:scram_user:scram-secret\n"),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let client = connect(&format!(
        "postgresql://scram_user@127.0.0.1:{port}/postgres?sslmode=disable&passfile={}",
        pgpass.display()
    ))
    .await
    .expect("password from the password file");
    client.close().await;

    // A client certificate instead of a password.
    let client = connect(&format!(
        "postgresql://cert_user@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pki.path("ca.crt").display(),
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    ))
    .await
    .expect("client certificate authentication");
    assert!(client.is_tls());
    client.close().await;
}
on_every_server!(authentication_methods);

async fn sslmodes_verify_what_libpq_verifies(bin: &PgBin) {
    let pki = Pki::new();
    let cluster = tls_cluster(bin, &pki).await;
    let port = cluster.port;
    let ca = pki.path("ca.crt");
    let url = |host: &str, query: &str| {
        format!("postgresql://tls_only:tls-secret@{host}:{port}/postgres?{query}")
    };

    // verify-full checks the name: 127.0.0.1 is in the certificate, localhost is not.
    let ok = connect(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
    .await
    .expect("verify-full with a matching name");
    assert!(ok.is_tls());
    ok.close().await;
    let err = connect(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ))
    .await
    .err()
    .expect("verify-full rejects a certificate for another name");
    assert!(matches!(err, SourceError::TlsHandshake { .. }), "{err}");
    assert_eq!(policy(&err.kind()).retry, Retry::Stop);

    // verify-ca checks the chain only.
    let ok = connect(&url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    ))
    .await
    .expect("verify-ca accepts another name");
    ok.close().await;

    // A different CA fails the chain.
    let other = Pki::new();
    let err = connect(&url(
        "127.0.0.1",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            other.path("ca.crt").display()
        ),
    ))
    .await
    .err()
    .expect("verify-ca rejects an unknown issuer");
    assert!(matches!(err, SourceError::TlsHandshake { .. }), "{err}");

    // verify-* without a root certificate is a configuration error.
    let err = connect(&url("127.0.0.1", "sslmode=verify-full"))
        .await
        .err()
        .expect("no root");
    assert!(
        err.to_string().contains("needs a root certificate"),
        "{err}"
    );

    // require and prefer encrypt without a root certificate; allow falls back to TLS
    // when pg_hba.conf rejects the plain connection.
    for mode in ["require", "prefer", "allow"] {
        let ok = connect(&url("127.0.0.1", &format!("sslmode={mode}")))
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        assert!(ok.is_tls(), "sslmode={mode} ends up encrypted");
        ok.close().await;
    }

    // disable: pg_hba.conf rejects this role without TLS.
    let err = connect(&url("127.0.0.1", "sslmode=disable"))
        .await
        .err()
        .expect("rejected");
    assert!(err.to_string().contains("28000"), "{err}");
}
on_every_server!(sslmodes_verify_what_libpq_verifies);

#[tokio::test]
async fn require_fails_against_a_server_without_tls() {
    let cluster = Cluster::start(&crate::support::cluster::default_bin());
    let err = connect(&format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=require",
        cluster.port
    ))
    .await
    .err()
    .expect("no TLS on this server");
    assert!(matches!(err, SourceError::TlsRefused { .. }), "{err}");
    let ok = connect(&format!(
        "postgresql://postgres:{}@127.0.0.1:{}/postgres?sslmode=prefer",
        cluster.password(),
        cluster.port
    ))
    .await
    .expect("prefer falls back to plain");
    assert!(!ok.is_tls());
    ok.close().await;
}

/// Apply sessions run the way PostgreSQL's apply worker does: replica role,
/// generic plans found by index, no JIT (a plan that must scan sequentially
/// costs more than jit_above_cost with seqscans off, and compiling it cost
/// the first changes of a stream over a second), canonical formats; with
/// --replication-timeout, green ends the session when it sits idle in a
/// transaction that long and probes a quiet connection from half of it.
#[tokio::test]
async fn apply_sessions_are_set_up_like_the_apply_worker() {
    let cluster = Cluster::start(&crate::support::cluster::default_bin());
    let green = teal::apply::green_session(
        &conninfo(&cluster.url()),
        "teal-test",
        Some(std::time::Duration::from_secs(60)),
    )
    .await
    .expect("apply session");
    let mut settings = Vec::new();
    for name in [
        "session_replication_role",
        "plan_cache_mode",
        "enable_seqscan",
        "jit",
        "DateStyle",
        "TimeZone",
        "idle_in_transaction_session_timeout",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
    ] {
        let v: String = green
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap()
            .get(0);
        settings.push(v);
    }
    assert_eq!(
        settings,
        [
            "replica",
            "force_generic_plan",
            "off",
            "off",
            "ISO, MDY",
            "UTC",
            "1min",
            "30",
            "10"
        ]
    );
}

/// Issue 19.1: with channel_binding=require, a server that asks for a
/// cleartext or MD5 password gets nothing (libpq does the same): the
/// password never leaves teal, and the server never authorizes the session
/// (its log, with log_connections on, shows no authorization). SCRAM with
/// channel binding over TLS still works, and shows up in the same log.
#[tokio::test]
async fn channel_binding_require_sends_nothing_to_a_password_or_md5_server() {
    let pki = Pki::new();
    let cluster = tls_cluster(&crate::support::cluster::default_bin(), &pki).await;
    let c = cluster.client().await;
    c.batch_execute("ALTER SYSTEM SET log_connections = on")
        .await
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = cluster.port;
    for (user, password) in [("md5_user", "md5-secret"), ("pw_user", "pw-secret")] {
        let err = connect(&format!(
            "postgresql://{user}:{password}@127.0.0.1:{port}/postgres?sslmode=require&channel_binding=require"
        ))
        .await
        .err()
        .unwrap_or_else(|| panic!("{user}: refused"));
        assert!(matches!(err, SourceError::Auth { .. }), "{user}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("channel_binding=require") && message.contains("nothing was sent"),
            "{user}: {message}"
        );
        assert!(!message.contains(password), "{message}");
    }
    let bound = connect(&format!(
        "postgresql://scram_user:scram-secret@127.0.0.1:{port}/postgres?sslmode=require&channel_binding=require"
    ))
    .await
    .expect("SCRAM with channel binding");
    bound.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = cluster.log();
    assert!(
        log.contains("authorized: user=scram_user"),
        "the log shows authorizations:\n{log}"
    );
    for user in ["md5_user", "pw_user"] {
        assert!(
            !log.contains(&format!("authorized: user={user}")),
            "{user} was never authorized:\n{log}"
        );
    }
}

/// Issue 19.1: a server that starts SCRAM and then says AuthenticationOk
/// without its final message (which would prove it knows the password)
/// is refused, whatever channel_binding says. The server here is a test
/// listener speaking just enough of the protocol.
#[tokio::test]
async fn a_server_skipping_scram_final_is_refused() {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // StartupMessage.
        let len = s.read_i32().await.unwrap();
        let mut startup = vec![0; len as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        let message = |tag: u8, body: &[u8]| {
            let mut m = vec![tag];
            m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let mut body = 10i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"SCRAM-SHA-256\0\0");
        s.write_all(&message(b'R', &body)).await.unwrap();
        // SASLInitialResponse: mechanism, then the client-first message.
        assert_eq!(s.read_u8().await.unwrap(), b'p');
        let len = s.read_i32().await.unwrap();
        let mut initial = vec![0; len as usize - 4];
        s.read_exact(&mut initial).await.unwrap();
        let first = String::from_utf8_lossy(&initial).into_owned();
        let nonce = first.rsplit("r=").next().unwrap().to_owned();
        let salt = base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef");
        let mut body = 11i32.to_be_bytes().to_vec();
        body.extend_from_slice(format!("r={nonce}server,s={salt},i=4096").as_bytes());
        s.write_all(&message(b'R', &body)).await.unwrap();
        // SASLResponse (client-final), then "Ok" without SASLFinal.
        assert_eq!(s.read_u8().await.unwrap(), b'p');
        let len = s.read_i32().await.unwrap();
        let mut last = vec![0; len as usize - 4];
        s.read_exact(&mut last).await.unwrap();
        s.write_all(&message(b'R', &0i32.to_be_bytes()))
            .await
            .unwrap();
        s.write_all(&message(b'Z', b"I")).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let err = connect(&format!(
        "postgresql://someone:secret@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
    .await
    .err()
    .expect("refused");
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("without its final message"),
        "{err}"
    );
    server.abort();
}

/// Issue 19.7: a server that announces a 2 GiB message during startup gets
/// a clear refusal at once: teal reserves nothing for it (it reserved the
/// whole length before).
#[tokio::test]
async fn an_oversized_message_before_authentication_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut startup = vec![0; len as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        let mut header = vec![b'R'];
        header.extend_from_slice(&i32::MAX.to_be_bytes());
        s.write_all(&header).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        connect(&format!(
            "postgresql://someone:secret@127.0.0.1:{port}/postgres?sslmode=disable"
        )),
    )
    .await
    .expect("refused at once")
    .err()
    .expect("refused");
    assert!(matches!(err, SourceError::Protocol { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("longer than the server may send here"),
        "{err}"
    );
    server.abort();
}

/// Issue 19.13: with several hosts, each gets its own line of the password
/// file (green's sessions took the first host's for all of them).
#[tokio::test]
async fn each_host_gets_its_own_password_file_line() {
    let pki = Pki::new();
    let cluster = tls_cluster(&crate::support::cluster::default_bin(), &pki).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pgpass = pki.path("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{}:*:scram_user:scram-secret\n", cluster.port),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let target = conninfo(&format!(
        "host=127.0.0.1,127.0.0.1 port={closed},{} user=scram_user dbname=postgres sslmode=disable passfile={}",
        cluster.port,
        pgpass.display()
    ));
    let green = teal::session::connect_plain(&target, "teal-test")
        .await
        .unwrap_or_else(|e| panic!("{}", crate::support::report(&e)));
    let who: String = green
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "scram_user");
}
