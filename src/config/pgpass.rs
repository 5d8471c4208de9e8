//! The libpq password file (`~/.pgpass`, or `PGPASSFILE`).
//!
//! Format (<https://www.postgresql.org/docs/current/libpq-pgpass.html>): one
//! `hostname:port:database:username:password` per line, `*` matches anything,
//! `\:` and `\\` escape, `#` starts a comment. Like libpq, a file readable by
//! group or others is ignored with a warning, and a Unix-socket connection to
//! the default socket directory also matches `localhost`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::conninfo::{Host, HostAddr};

/// The password of the first matching line, if the file exists and is private.
pub(crate) fn lookup(file: &Path, host: &Host, dbname: &str, user: &str) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less, ignoring it"
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    find(&text, host, dbname, user)
}

fn find(text: &str, host: &Host, dbname: &str, user: &str) -> Option<String> {
    let (host_names, port) = match &host.addr {
        HostAddr::Tcp(h) => (vec![h.clone()], host.port),
        HostAddr::Unix(dir) => (
            vec![dir.to_string_lossy().into_owned(), "localhost".to_owned()],
            host.port,
        ),
    };
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split_fields(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            let host_ok = host_names.iter().any(|h| matches(&fields[0], h));
            (host_ok
                && matches(&fields[1], &port)
                && matches(&fields[2], dbname)
                && matches(&fields[3], user))
            .then(|| fields[4].clone())
        })
}

/// Splits on unescaped `:`, removing the backslash escapes.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(h: &str, port: u16) -> Host {
        Host {
            addr: HostAddr::Tcp(h.into()),
            port,
        }
    }

    #[test]
    fn first_matching_line_wins() {
        let text = "# comment\n\
                    other:5432:*:*:nope\n\
                    127.0.0.1:5433:ledger:teal:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            find(text, &tcp("127.0.0.1", 5433), "ledger", "teal").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            find(text, &tcp("127.0.0.1", 5434), "ledger", "teal").as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn unix_sockets_match_localhost() {
        let host = Host {
            addr: HostAddr::Unix("/var/run/postgresql".into()),
            port: 5432,
        };
        assert_eq!(
            find("localhost:5432:db:u:pw\n", &host, "db", "u").as_deref(),
            Some("pw")
        );
        assert_eq!(find("elsewhere:5432:db:u:pw\n", &host, "db", "u"), None);
    }

    #[test]
    fn world_readable_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&file, &tcp("h", 1), "d", "u"), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(&file, &tcp("h", 1), "d", "u").as_deref(),
            Some("secret")
        );
    }
}
