//! The two spellings of a libpq connection string: a URL
//! (`postgresql://user:pw@host1:5432,host2/db?sslmode=require`) and
//! `key=value` pairs (quoted values, backslash escapes), read into the
//! parameters as written; [`super::conninfo`] applies defaults and checks them.

use super::conninfo::ConnInfoError;

/// The parameters as written, before defaults.
#[derive(Default)]
pub(super) struct Raw {
    pub(super) hosts: Vec<(String, Option<String>)>,
    pub(super) params: Vec<(String, String)>,
}

pub(super) fn parse_url(s: &str) -> Result<Raw, ConnInfoError> {
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    let mut raw = Raw::default();
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                raw.params.push(("user".into(), percent_decode(user)?));
            }
            if let Some(p) = password {
                raw.params.push(("password".into(), percent_decode(p)?));
            }
            hostspec
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        for part in hostspec.split(',') {
            raw.hosts.push(split_host_port(part)?);
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        raw.params.push(("dbname".into(), percent_decode(db)?));
    }
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ConnInfoError::Syntax(format!("query parameter {pair:?} has no '=' and value"))
        })?;
        raw.params.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(raw)
}

fn split_host_port(part: &str) -> Result<(String, Option<String>), ConnInfoError> {
    if let Some(inner) = part.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(|| {
            ConnInfoError::Syntax(format!("unterminated IPv6 address in {part:?}"))
        })?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| ConnInfoError::Syntax(format!("unexpected {p:?} after ']'")))?
                    .to_owned(),
            ),
        };
        return Ok((host.to_owned(), port));
    }
    match part.rsplit_once(':') {
        Some((h, p)) => Ok((percent_decode(h)?, Some(p.to_owned()))),
        None => Ok((percent_decode(part)?, None)),
    }
}

fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ConnInfoError::Syntax(format!("invalid percent-encoding in {s:?}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConnInfoError::Syntax(format!("percent-decoded {s:?} is not UTF-8")))
}

pub(super) fn parse_key_value(s: &str) -> Result<Raw, ConnInfoError> {
    let mut raw = Raw::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after {key:?} in connection info string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| {
                        ConnInfoError::Syntax("unterminated quoted string".into())
                    })?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError::Syntax("unterminated quoted string".into()));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        raw.params.push((key, value));
    }
    Ok(raw)
}
