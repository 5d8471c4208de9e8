//! Throwaway local PostgreSQL clusters, for `teal demo` and the tests.
//!
//! ```text
//! server binaries (TEAL_PG_BIN, or the newest /usr/lib/postgresql/*/bin)
//!   ──initdb (or copy of a template)──▶ data directory in a fresh temporary directory (0700)
//!   ──pg_ctl start──▶ 127.0.0.1:<free port>, wal_level = logical
//!   ──over the private socket──▶ a random SCRAM password for `postgres`
//!   ──drop──▶ immediate stop, directory removed
//! ```
//!
//! Other local users get nothing from a throwaway cluster (issue 19.8): TCP
//! connections need the superuser's random password (SCRAM), which only
//! this process knows; trust is granted on the Unix socket alone, whose
//! directory (the cluster's own, mode 0700) only the server's OS user and
//! root can enter.
//!
//! PostgreSQL refuses to run as root, so when teal runs as root the server
//! binaries run as the unprivileged `postgres` user (Debian's package creates
//! it); a build that user cannot reach (under /root, say) is copied once into
//! the system temporary directory, under a name holding our uid, and reused
//! only while everything in it is ours and writable by no one else
//! ([`check_private`]).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod build;

pub use build::{PgBin, check_private, private_dir};

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
    /// A path teal would run or trust is not safely ours.
    #[error("refusing to use {path}: {reason}; remove it (another local user may have planted it)")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Setting the superuser's password failed.
    #[error("setting the password of the throwaway cluster's superuser")]
    Password(#[source] tokio_postgres::Error),
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
/// `postgres` without a password, UTF8, C locale. [`Cluster::start`] replaces
/// its pg_hba.conf and sets a password.
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
    /// pg_hba.conf lines placed before the catch-all `scram-sha-256` lines.
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
    password: String,
}

impl Cluster {
    /// Creates and starts a cluster.
    pub fn start(bin: &PgBin, options: &Options) -> Result<Cluster, LocalError> {
        let owner = server_owner()?;
        let root = tempfile::Builder::new()
            .prefix(options.prefix.as_deref().unwrap_or("teal-local-"))
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        // The socket directory: only the server's user (and root) may enter.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700))
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
        // Trust on the socket alone (its directory is private); TCP needs a
        // password, and until one is set below nobody can log in over TCP.
        let mut hba = String::from("local all all trust\n");
        for line in &options.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
        );
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
             logging_collector = off\npassword_encryption = 'scram-sha-256'\n",
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
            // 122 random bits from the operating system's generator.
            password: uuid::Uuid::new_v4().simple().to_string(),
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
        cluster.set_password()?;
        cluster.write_passfile()?;
        Ok(cluster)
    }

    /// `ALTER ROLE postgres PASSWORD` over the private Unix socket, on a
    /// thread of its own (callers may or may not be inside a runtime).
    fn set_password(&self) -> Result<(), LocalError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.root.path())
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        // A literal, not a parameter: utility statements take none. The
        // password is hex, so it needs no quoting beyond the quotes.
        let sql = format!("ALTER ROLE postgres PASSWORD '{}'", self.password);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(io("starting a runtime to set the password"))?;
                    runtime.block_on(async {
                        let (client, conn) = config
                            .connect(tokio_postgres::NoTls)
                            .await
                            .map_err(LocalError::Password)?;
                        let conn = tokio::spawn(conn);
                        client
                            .batch_execute(&sql)
                            .await
                            .map_err(LocalError::Password)?;
                        drop(client);
                        let _ = conn.await;
                        Ok(())
                    })
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
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

    /// URL for `user` with `password` on database `postgres`, with extra
    /// query parameters.
    pub fn url_for(&self, user: &str, password: &str, query: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// Superuser URL without TLS, its password included: for this process
    /// only (never a command line, a log or a message).
    pub fn url(&self) -> String {
        self.url_for("postgres", &self.password, "sslmode=disable")
    }

    /// Superuser URL without TLS whose password is in a password file
    /// (`passfile=`, mode 0600): for teal's command line, where `ps` would
    /// show a password.
    pub fn cli_url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable&passfile={}",
            self.port,
            self.passfile().display()
        )
    }

    fn passfile(&self) -> PathBuf {
        self.root.path().join("pgpass")
    }

    /// Writes the password file [`Cluster::cli_url`] names (mode 0600).
    fn write_passfile(&self) -> Result<(), LocalError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = self.passfile();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(io(format!("creating {}", file.display())))?;
        std::io::Write::write_all(
            &mut f,
            format!("127.0.0.1:{}:*:postgres:{}\n", self.port, self.password).as_bytes(),
        )
        .map_err(io(format!("writing {}", file.display())))
    }

    /// The superuser's password (random, set at start).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's directory (data directory, socket, log), mode 0700.
    pub fn dir(&self) -> &Path {
        self.root.path()
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
