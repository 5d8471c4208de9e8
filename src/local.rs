//! Throwaway local PostgreSQL clusters, for `teal demo` and the tests.
//!
//! ```text
//! server binaries (TEAL_PG_BIN, or the newest /usr/lib/postgresql/*/bin)
//!   ──initdb (or copy of a template)──▶ data directory in a fresh temporary directory
//!   ──pg_ctl start──▶ 127.0.0.1:<free port>, wal_level = logical
//!   ──drop──▶ immediate stop, directory removed
//! ```
//!
//! PostgreSQL refuses to run as root, so when teal runs as root the server
//! binaries run as the unprivileged `postgres` user (Debian's package creates
//! it); a build that user cannot reach (under /root, say) is copied once into
//! the system temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where server builds are looked for when `TEAL_PG_BIN` is not set.
const SEARCH_ROOTS: &[&str] = &["/usr/lib/postgresql", "/usr/local/pgsql"];

/// A local cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No server build found.
    #[error(
        "no PostgreSQL server binaries found ({looked}); install them (Debian/Ubuntu: apt-get install -y postgresql) or set TEAL_PG_BIN to a directory holding postgres, initdb and pg_ctl"
    )]
    NoBinaries {
        /// Where teal looked.
        looked: String,
    },
    /// Running as root without a user to run the server as.
    #[error(
        "running as root, but PostgreSQL refuses to run as root and there is no 'postgres' user to run it as (apt-get install -y postgresql creates it)"
    )]
    NoServerUser,
    /// A file-system or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A server program failed.
    #[error("{what} failed:\n{output}")]
    Failed {
        /// What was being done.
        what: String,
        /// Its output (and the server log, when there is one).
        output: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// A PostgreSQL server build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    /// The directory holding `postgres`, `initdb`, `pg_ctl`.
    pub dir: PathBuf,
    /// Major version.
    pub version: u32,
}

impl PgBin {
    /// The build in `dir`.
    pub fn at(dir: &Path) -> Result<PgBin, LocalError> {
        if !["postgres", "initdb", "pg_ctl"]
            .iter()
            .all(|p| dir.join(p).is_file())
        {
            return Err(LocalError::NoBinaries {
                looked: format!("{} lacks postgres, initdb or pg_ctl", dir.display()),
            });
        }
        let out = Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(io(format!("running {}/postgres --version", dir.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "postgres (PostgreSQL) 15.18 (Debian ...)"
        let version = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split(['.', 'b', 'r']).next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| LocalError::Failed {
                what: format!("reading the version of {}/postgres", dir.display()),
                output: text.clone().into_owned(),
            })?;
        Ok(PgBin {
            dir: dir.to_path_buf(),
            version,
        })
    }

    /// The newest build under `root` (`root/*/bin`).
    pub fn newest_under(root: &Path) -> Option<PgBin> {
        let mut found: Vec<PgBin> = std::fs::read_dir(root)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
            .filter_map(|bin| PgBin::at(&bin).ok())
            .collect();
        found.sort_by_key(|b| b.version);
        found.pop()
    }

    /// `TEAL_PG_BIN`, else the newest build under the usual places.
    pub fn find() -> Result<PgBin, LocalError> {
        if let Some(dir) = std::env::var_os("TEAL_PG_BIN") {
            return PgBin::at(Path::new(&dir));
        }
        for root in SEARCH_ROOTS {
            if let Some(bin) = PgBin::newest_under(Path::new(root)) {
                return Ok(bin);
            }
        }
        let direct = Path::new("/usr/local/pgsql/bin");
        if direct.join("postgres").is_file() {
            return PgBin::at(direct);
        }
        Err(LocalError::NoBinaries {
            looked: format!(
                "TEAL_PG_BIN is not set; looked in {}/*/bin and {}",
                SEARCH_ROOTS.join("/*/bin, "),
                direct.display()
            ),
        })
    }

    /// This build, or a copy the server's user can execute.
    pub fn runnable(self) -> Result<PgBin, LocalError> {
        let owner = server_owner()?;
        let mut probe = Command::new(self.dir.join("postgres"));
        probe.arg("--version").current_dir("/");
        if let Some((uid, gid)) = owner {
            probe.uid(uid).gid(gid);
        }
        if probe.output().is_ok_and(|o| o.status.success()) {
            return Ok(self);
        }
        let install = self.dir.parent().unwrap_or(&self.dir);
        let copy = std::env::temp_dir().join(format!(
            "teal-pg{}-{}",
            self.version,
            install.to_string_lossy().replace('/', "_")
        ));
        if !copy.join("bin/postgres").is_file() {
            let staging = copy.with_extension("partial");
            let _ = std::fs::remove_dir_all(&staging);
            run(
                Command::new("cp").arg("-a").arg(install).arg(&staging),
                None,
                "copying the server build",
            )?;
            run(
                Command::new("chmod").args(["-R", "a+rX"]).arg(&staging),
                None,
                "making the server build readable",
            )?;
            if std::fs::rename(&staging, &copy).is_err() {
                // Another process installed it first.
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        Ok(PgBin {
            dir: copy.join("bin"),
            version: self.version,
        })
    }
}

/// uid/gid to run the server as: `postgres` when we are root, else ourselves.
pub fn server_owner() -> Result<Option<(u32, u32)>, LocalError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let user = crate::config::os_user(Some(c"postgres")).ok_or(LocalError::NoServerUser)?;
    Ok(Some((user.uid, user.gid)))
}

/// Runs `cmd` (as `owner` when given); its output, or an error naming `what`.
fn run(cmd: &mut Command, owner: Option<(u32, u32)>, what: &str) -> Result<Output, LocalError> {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().map_err(io(what))?;
    if !out.status.success() {
        return Err(LocalError::Failed {
            what: what.to_owned(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> Result<(), LocalError> {
    if let Some((uid, gid)) = owner {
        run(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(path),
            None,
            &format!("chown {}", path.display()),
        )?;
    }
    Ok(())
}

/// `initdb` into `data` (whose parent the server's user can write): user
/// `postgres`, trust authentication, UTF8, C locale.
pub fn initdb(bin: &PgBin, data: &Path) -> Result<(), LocalError> {
    let owner = server_owner()?;
    let parent = data.parent().unwrap_or(Path::new("/"));
    chown_tree(parent, owner)?;
    run(
        Command::new(bin.dir.join("initdb"))
            .arg("-D")
            .arg(data)
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
            .current_dir(parent),
        owner,
        "initdb",
    )
    .map(drop)
}

fn free_port() -> Result<u16, LocalError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

/// How to set up a cluster.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// postgresql.conf lines (`name = value`), after teal's defaults.
    pub settings: Vec<(String, String)>,
    /// pg_hba.conf lines placed before the catch-all `trust` lines.
    pub hba: Vec<String>,
    /// Files written into the data directory before start (name, contents, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// A data directory from [`initdb`] to copy instead of running initdb.
    pub template: Option<PathBuf>,
    /// Prefix of the temporary directory's name.
    pub prefix: Option<String>,
}

/// A running throwaway cluster; stopped and removed on drop.
pub struct Cluster {
    /// The server build.
    pub bin: PgBin,
    /// Port on 127.0.0.1.
    pub port: u16,
    root: tempfile::TempDir,
    data: PathBuf,
    owner: Option<(u32, u32)>,
}

impl Cluster {
    /// Creates and starts a cluster.
    pub fn start(bin: &PgBin, options: &Options) -> Result<Cluster, LocalError> {
        let owner = server_owner()?;
        let root = tempfile::Builder::new()
            .prefix(options.prefix.as_deref().unwrap_or("teal-local-"))
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("setting permissions of the temporary directory"))?;
        let data = root.path().join("data");
        match &options.template {
            Some(template) => {
                run(
                    Command::new("cp").arg("-a").arg(template).arg(&data),
                    None,
                    "copying the template data directory",
                )?;
            }
            None => initdb(bin, &data)?,
        }
        let mut hba = String::from("local all all trust\n");
        for line in &options.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n");
        let write = |name: &Path, contents: &[u8]| {
            std::fs::write(name, contents).map_err(io(format!("writing {}", name.display())))
        };
        write(&data.join("pg_hba.conf"), hba.as_bytes())?;
        for (name, contents, mode) in &options.files {
            let path = data.join(name);
            write(&path, contents)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                .map_err(io(format!("setting permissions of {}", path.display())))?;
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
        let conf_path = data.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .map_err(io(format!("opening {}", conf_path.display())))?;
        std::io::Write::write_all(&mut file, conf.as_bytes())
            .map_err(io(format!("writing {}", conf_path.display())))?;
        chown_tree(root.path(), owner)?;
        let mut cluster = Cluster {
            bin: bin.clone(),
            port: 0,
            root,
            data,
            owner,
        };
        for attempt in 0.. {
            cluster.port = free_port()?;
            match cluster.start_again() {
                Ok(()) => break,
                // Someone took the port between the probe and the start.
                Err(LocalError::Failed { output, .. })
                    if attempt < 5 && output.contains("could not bind") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(cluster)
    }

    fn pg_ctl(&self, args: &[&str], what: &str) -> Result<(), LocalError> {
        run(
            Command::new(self.bin.dir.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(args)
                .current_dir(self.root.path())
                // Its own process group: a Ctrl-C meant for teal does not
                // reach the server.
                .process_group(0),
            self.owner,
            what,
        )
        .map(drop)
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// Starts the server (again, after [`Cluster::stop`]) on the same port.
    pub fn start_again(&self) -> Result<(), LocalError> {
        let port = format!("-p {}", self.port);
        let log = self.log_path();
        let log_arg = log.to_string_lossy();
        let started = self.pg_ctl(
            &["-l", &log_arg, "-w", "-t", "60", "-o", &port, "start"],
            &format!(
                "starting PostgreSQL {} on port {}",
                self.bin.version, self.port
            ),
        );
        started.map_err(|e| match e {
            LocalError::Failed { what, output } => LocalError::Failed {
                what,
                output: format!("{output}\n{}", self.log()),
            },
            other => other,
        })
    }

    /// Fast shutdown (clients are disconnected, like a maintenance restart).
    pub fn stop(&self) -> Result<(), LocalError> {
        self.pg_ctl(&["-m", "fast", "-w", "stop"], "stopping PostgreSQL")
    }

    /// The server log so far.
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

    /// An ordinary superuser session (no TLS), its connection driven by a
    /// task on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"], "stopping PostgreSQL");
    }
}
