//! libpq connection strings: `postgresql://` URLs and `key=value` strings.
//!
//! Follows libpq's rules (<https://www.postgresql.org/docs/current/libpq-connect.html>):
//! percent-decoding in URLs, single-quoted values with backslash escapes in
//! `key=value` strings, several hosts tried in order, the `PG*` environment
//! variables as defaults, and the password file (`PGPASSFILE` or `~/.pgpass`)
//! consulted last. An unknown parameter is an error naming it: silently
//! ignoring, say, `target_session_attrs` would connect somewhere the user did
//! not ask for.
//!
//! The password never appears in `Debug` or `Display` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A connection string could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// The string is neither a `postgresql://` URL nor `key=value` pairs.
    #[error("invalid connection string: {0}")]
    Syntax(String),
    /// A parameter libpq does not know, or teal does not implement.
    #[error("unsupported connection parameter {0:?}")]
    UnknownParameter(String),
    /// A known parameter with a value outside its domain.
    #[error("invalid value for connection parameter {name}: {reason}")]
    InvalidValue {
        /// The parameter's name, as written in the connection string.
        name: String,
        /// What is wrong with the value.
        reason: String,
    },
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// Plain first; TLS if the server refuses plain connections.
    Allow,
    /// TLS if the server offers it, plain otherwise (libpq's default).
    Prefer,
    /// TLS; the chain is verified only when a root certificate is available.
    Require,
    /// TLS with the server chain verified against the root certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "{s:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

impl SslMode {
    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddr {
    /// A host name or IP address reached over TCP.
    Tcp(String),
    /// A directory holding the server's Unix-domain socket.
    Unix(PathBuf),
}

/// A host and port, as listed in the connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Where to connect.
    pub addr: HostAddr,
    /// The TCP port, or the suffix of the socket file name.
    pub port: u16,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            HostAddr::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            HostAddr::Tcp(h) => write!(f, "{h}:{}", self.port),
            HostAddr::Unix(dir) => write!(f, "{}/.s.PGSQL.{}", dir.display(), self.port),
        }
    }
}

/// A secret that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Password {
        Password(s.into())
    }

    /// The password itself, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never use SCRAM channel binding.
    Disable,
    /// Use it when the server and the TLS session allow.
    Prefer,
    /// Refuse to authenticate without it.
    Require,
}

/// Everything needed to open a connection, after defaults were applied.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Hosts tried in order until one accepts.
    pub hosts: Vec<Host>,
    /// Role to log in as.
    pub user: String,
    /// Password from the string or `PGPASSWORD`; `.pgpass` is read at connect time.
    pub password: Option<Password>,
    /// Database to connect to.
    pub dbname: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// Trusted roots; `None` when none were given and `~/.postgresql/root.crt` is absent.
    pub sslrootcert: Option<RootCert>,
    /// Client certificate (PEM) presented when the server asks.
    pub sslcert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    pub sslkey: Option<PathBuf>,
    /// SCRAM channel binding policy.
    pub channel_binding: ChannelBinding,
    /// Shown in `pg_stat_activity`.
    pub application_name: Option<String>,
    /// Command-line options sent at startup (`-c name=value ...`).
    pub options: Option<String>,
    /// Give up on a host after this long.
    pub connect_timeout: Option<Duration>,
    /// Password file to consult when no password was given.
    pub passfile: Option<PathBuf>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

impl fmt::Display for ConnInfo {
    /// A URL without the password, safe for logs and the audit trail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql://{}@", percent_encode(&self.user))?;
        for (i, host) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &host.addr {
                HostAddr::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", host.port)?,
                HostAddr::Tcp(h) => write!(f, "{}:{}", percent_encode(h), host.port)?,
                HostAddr::Unix(dir) => write!(
                    f,
                    "{}:{}",
                    percent_encode(&dir.to_string_lossy()),
                    host.port
                )?,
            }
        }
        write!(
            f,
            "/{}?sslmode={}",
            percent_encode(&self.dbname),
            self.sslmode.as_str()
        )
    }
}

/// Reads an environment variable; injected so parsing is testable.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    /// Parses with the process environment supplying defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnInfo::parse_with_env(s, &|k| std::env::var(k).ok())
    }
}

impl ConnInfo {
    /// Parses a URL or `key=value` string, taking defaults from `env`.
    pub fn parse_with_env(s: &str, env: EnvLookup<'_>) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let raw = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            super::conn_string::parse_url(s)?
        } else {
            super::conn_string::parse_key_value(s)?
        };
        build(raw, env)
    }

    /// The password to send: the one given, else the matching `.pgpass` line.
    pub fn password_for(&self, host: &Host) -> Option<Password> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let file = self.passfile.as_deref()?;
        super::pgpass::lookup(file, host, &self.dbname, &self.user).map(Password)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn invalid(name: &str, reason: impl Into<String>) -> ConnInfoError {
    ConnInfoError::InvalidValue {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn parse_port(name: &str, v: &str) -> Result<u16, ConnInfoError> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(name, format!("{v:?} is not a port number")))
}

/// Applies libpq's defaults: parameters, then `PG*` variables, then built-ins.
fn build(raw: super::conn_string::Raw, env: EnvLookup<'_>) -> Result<ConnInfo, ConnInfoError> {
    let mut get = std::collections::HashMap::new();
    let mut hosts = raw.hosts;
    let mut ports: Option<String> = None;
    for (k, v) in raw.params {
        match k.as_str() {
            "host" => hosts = v.split(',').map(|h| (h.to_owned(), None)).collect(),
            "port" => ports = Some(v),
            "user" | "password" | "dbname" | "sslmode" | "sslrootcert" | "sslcert" | "sslkey"
            | "application_name" | "options" | "connect_timeout" | "passfile"
            | "channel_binding" => {
                get.insert(k, v);
            }
            // Accepted for libpq compatibility; they only affect what libpq itself would do
            // with files or the client encoding, which teal fixes to UTF-8.
            "client_encoding" if v.eq_ignore_ascii_case("utf8") || v == "UTF-8" => {}
            "fallback_application_name" => {
                get.entry("application_name".into()).or_insert(v);
            }
            _ => return Err(ConnInfoError::UnknownParameter(k)),
        }
    }
    let value = |name: &str, var: &str| get.get(name).cloned().or_else(|| env(var));

    if hosts.is_empty() || hosts.iter().all(|(h, _)| h.is_empty()) {
        let default_host = env("PGHOST").unwrap_or_else(default_socket_dir);
        hosts = default_host
            .split(',')
            .map(|h| (h.to_owned(), None))
            .collect();
    }
    let port_list: Vec<String> = ports
        .or_else(|| env("PGPORT"))
        .map(|p| p.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    if port_list.len() > 1 && port_list.len() != hosts.len() {
        return Err(invalid(
            "port",
            format!(
                "{} ports given for {} hosts; give one port, or one per host",
                port_list.len(),
                hosts.len()
            ),
        ));
    }
    let mut resolved = Vec::with_capacity(hosts.len());
    for (i, (h, inline_port)) in hosts.into_iter().enumerate() {
        let port = match inline_port.filter(|p| !p.is_empty()) {
            Some(p) => parse_port("port", &p)?,
            None => match port_list.get(i).or(port_list.first()) {
                Some(p) if !p.is_empty() => parse_port("port", p)?,
                _ => 5432,
            },
        };
        let addr = if h.starts_with('/') {
            HostAddr::Unix(PathBuf::from(h))
        } else if h.is_empty() {
            HostAddr::Unix(PathBuf::from(default_socket_dir()))
        } else {
            HostAddr::Tcp(h)
        };
        resolved.push(Host { addr, port });
    }

    let user = match value("user", "PGUSER") {
        Some(u) if !u.is_empty() => u,
        _ => os_user_name().ok_or_else(|| {
            invalid(
                "user",
                "no user given and the operating-system user name is unknown",
            )
        })?,
    };
    let dbname = value("dbname", "PGDATABASE")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let home = env("HOME").map(PathBuf::from);
    let sslrootcert = match value("sslrootcert", "PGSSLROOTCERT") {
        Some(s) if s == "system" => Some(RootCert::System),
        Some(s) => Some(RootCert::File(PathBuf::from(s))),
        None => home
            .as_ref()
            .map(|h| h.join(".postgresql/root.crt"))
            .filter(|p| p.is_file())
            .map(RootCert::File),
    };
    // As libpq 16+: any publicly trusted certificate would pass a CA check
    // against the system's store, so sslrootcert=system means verify-full
    // (the default then) and refuses anything weaker.
    let system_roots = sslrootcert == Some(RootCert::System);
    let sslmode = match value("sslmode", "PGSSLMODE") {
        Some(m) => {
            let mode: SslMode = m.parse().map_err(|e| invalid("sslmode", e))?;
            if system_roots && mode != SslMode::VerifyFull {
                return Err(invalid(
                    "sslmode",
                    format!(
                        "weak sslmode {m:?} may not be used with sslrootcert=system (use verify-full)"
                    ),
                ));
            }
            mode
        }
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    let sslcert = value("sslcert", "PGSSLCERT")
        .map(PathBuf::from)
        .or_else(|| {
            home.as_ref()
                .map(|h| h.join(".postgresql/postgresql.crt"))
                .filter(|p| p.is_file())
        });
    let sslkey = value("sslkey", "PGSSLKEY").map(PathBuf::from).or_else(|| {
        sslcert.as_ref().and_then(|_| {
            home.as_ref()
                .map(|h| h.join(".postgresql/postgresql.key"))
                .filter(|p| p.is_file())
        })
    });
    if sslcert.is_some() != sslkey.is_some() {
        return Err(invalid(
            "sslkey",
            "a client certificate needs both sslcert and sslkey",
        ));
    }
    let channel_binding = match value("channel_binding", "PGCHANNELBINDING").as_deref() {
        None | Some("prefer") => ChannelBinding::Prefer,
        Some("disable") => ChannelBinding::Disable,
        Some("require") => ChannelBinding::Require,
        Some(other) => {
            return Err(invalid(
                "channel_binding",
                format!("{other:?} is not one of disable, prefer, require"),
            ));
        }
    };
    if sslmode == SslMode::Disable && channel_binding == ChannelBinding::Require {
        return Err(invalid(
            "channel_binding",
            "require needs TLS, but sslmode is disable",
        ));
    }
    let connect_timeout = match value("connect_timeout", "PGCONNECT_TIMEOUT") {
        Some(t) => {
            let secs: i64 = t
                .trim()
                .parse()
                .map_err(|_| invalid("connect_timeout", format!("{t:?} is not whole seconds")))?;
            // libpq: zero or negative means wait forever; below 2 s is raised to 2 s.
            (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
        }
        None => None,
    };
    let passfile = value("passfile", "PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".pgpass")));
    Ok(ConnInfo {
        hosts: resolved,
        user,
        password: value("password", "PGPASSWORD").map(Password),
        dbname,
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        channel_binding,
        application_name: value("application_name", "PGAPPNAME"),
        options: value("options", "PGOPTIONS"),
        connect_timeout,
        passfile,
    })
}

/// libpq's compiled-in socket directory: Debian's build uses /var/run/postgresql.
fn default_socket_dir() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".into()
    } else {
        "/tmp".into()
    }
}

/// The name of the effective OS user, as libpq defaults the user.
pub fn os_user_name() -> Option<String> {
    os_user(None).map(|u| u.name)
}

/// An operating-system account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OsUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The account named `name`, or the effective user's: `getpwnam_r` /
/// `getpwuid_r`, which (unlike `getpwnam`/`getpwuid`) are safe while other
/// threads look accounts up too.
pub(crate) fn os_user(name: Option<&std::ffi::CStr>) -> Option<OsUser> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `pwd` and `buf` outlive the call, which writes the record
        // into them; `found` is set to `&pwd` or null.
        let (rc, pwd, found) = unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let rc = match name {
                Some(n) => libc::getpwnam_r(
                    n.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut found,
                ),
                None => libc::getpwuid_r(
                    libc::geteuid(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut found,
                ),
            };
            (rc, pwd, found)
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name points into `buf`, NUL-terminated by getpw*_r.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
            .to_str()
            .ok()?
            .to_owned();
        return Some(OsUser {
            name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> ConnInfo {
        ConnInfo::parse_with_env(s, &no_env).unwrap()
    }

    #[test]
    fn url_with_everything() {
        let c = parse(
            "postgresql://al%40ice:s%3Acret@db.example:6543/ledger%20db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=teal",
        );
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.as_ref().unwrap().expose(), "s:cret");
        assert_eq!(c.dbname, "ledger db");
        assert_eq!(
            c.hosts,
            vec![Host {
                addr: HostAddr::Tcp("db.example".into()),
                port: 6543
            }]
        );
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(RootCert::File("/ca.pem".into())));
        assert_eq!(c.application_name.as_deref(), Some("teal"));
    }

    #[test]
    fn url_with_several_hosts_and_ipv6() {
        let c = parse("postgres://u@h1:1,[::1]:2,h3/db");
        let ports: Vec<_> = c.hosts.iter().map(|h| h.port).collect();
        assert_eq!(ports, vec![1, 2, 5432]);
        assert_eq!(c.hosts[1].addr, HostAddr::Tcp("::1".into()));
        assert_eq!(
            c.to_string(),
            "postgresql://u@h1:1,[::1]:2,h3:5432/db?sslmode=prefer"
        );
    }

    #[test]
    fn key_value_with_quotes() {
        let c = parse(r"host=127.0.0.1 port=5433 user=bob password='a \'b\' c' dbname=d");
        assert_eq!(c.password.unwrap().expose(), "a 'b' c");
        assert_eq!(c.hosts[0].port, 5433);
        assert_eq!(c.dbname, "d");
    }

    #[test]
    fn environment_supplies_defaults() {
        let env = |k: &str| match k {
            "PGHOST" => Some("10.0.0.1".to_owned()),
            "PGPORT" => Some("7777".to_owned()),
            "PGUSER" => Some("envuser".to_owned()),
            "PGPASSWORD" => Some("envpw".to_owned()),
            "PGSSLMODE" => Some("require".to_owned()),
            _ => None,
        };
        let c = ConnInfo::parse_with_env("postgresql:///mydb", &env).unwrap();
        assert_eq!(c.hosts[0].addr, HostAddr::Tcp("10.0.0.1".into()));
        assert_eq!(c.hosts[0].port, 7777);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.unwrap().expose(), "envpw");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.dbname, "mydb");
    }

    #[test]
    fn socket_directories_are_unix_hosts() {
        let c = parse("postgresql://u@%2Fvar%2Frun%2Fpostgresql:5999/db");
        assert_eq!(
            c.hosts[0].addr,
            HostAddr::Unix("/var/run/postgresql".into())
        );
        assert_eq!(c.hosts[0].to_string(), "/var/run/postgresql/.s.PGSQL.5999");
    }

    #[test]
    fn password_never_printed() {
        let c = parse("postgresql://u:hunter2@h/db");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_string().contains("hunter2"));
    }

    /// Issue 19.13: account lookups that other threads may run at once.
    #[test]
    fn os_accounts_are_looked_up_thread_safely() {
        let me = os_user(None).expect("the effective user has an account");
        // SAFETY: geteuid cannot fail.
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        let root = os_user(Some(c"root")).expect("root exists");
        assert_eq!((root.name.as_str(), root.uid), ("root", 0));
        assert_eq!(os_user(Some(c"no-such-user-teal")), None);
        let lookups: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| (os_user(None), os_user(Some(c"root")))))
            .collect();
        for l in lookups {
            assert_eq!(l.join().unwrap(), (Some(me.clone()), Some(root.clone())));
        }
    }

    /// Issue 19.2: as libpq 16+, sslrootcert=system means verify-full.
    #[test]
    fn system_roots_mean_verify_full() {
        let parse = |s: &str| ConnInfo::parse_with_env(s, &no_env);
        let c = parse("host=db.example user=u sslrootcert=system").unwrap();
        assert_eq!(
            (c.sslmode, c.sslrootcert),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        for weak in ["disable", "allow", "prefer", "require", "verify-ca"] {
            let err = parse(&format!("host=db user=u sslrootcert=system sslmode={weak}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("sslmode") && err.contains("verify-full"),
                "{weak}: {err}"
            );
        }
        assert!(parse("host=db user=u sslrootcert=system sslmode=verify-full").is_ok());
    }

    #[test]
    fn bad_input_names_the_parameter() {
        let err = |s: &str| {
            ConnInfo::parse_with_env(s, &no_env)
                .unwrap_err()
                .to_string()
        };
        assert!(err("postgresql://u@h/db?sslmode=sometimes").contains("sslmode"));
        assert!(
            err("postgresql://u@h/db?target_session_attrs=any").contains("target_session_attrs")
        );
        assert!(err("postgresql://u@h:99999/db").contains("port"));
        assert!(err("host=h user").contains("missing \"=\""));
        assert!(
            err("postgresql://u@h/db?channel_binding=require&sslmode=disable")
                .contains("channel_binding")
        );
    }
}
