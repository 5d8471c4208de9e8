//! The two spellings of a libpq connection string: a URL
//! (`postgresql://user:pw@host1:5432,host2/db?sslmode=require`) and
//! `key=value` pairs (quoted values, backslash escapes), read into the
//! parameters as written; [`super::conninfo`] applies defaults and checks them.
//!
//! Errors name the part that is wrong ("the password", "the value of
//! user"), never its text: a malformed string is often a password with a
//! character that needed quoting.

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
    if !authority.contains('@') && path.is_some_and(|p| p.contains('@')) {
        return Err(ConnInfoError::Syntax(
            "a '/' in the user name or password must be percent-encoded (%2F)".into(),
        ));
    }
    let mut raw = Raw::default();
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                raw.params
                    .push(("user".into(), percent_decode(user, "the user name")?));
            }
            if let Some(p) = password {
                raw.params
                    .push(("password".into(), percent_decode(p, "the password")?));
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
        raw.params
            .push(("dbname".into(), percent_decode(db, "the database name")?));
    }
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ConnInfoError::Syntax("a query parameter has no '=' and value".into())
        })?;
        let key = percent_decode(k, "a query parameter's name")?;
        let value = percent_decode(v, &format!("the value of {key}"))?;
        raw.params.push((key, value));
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
        Some((h, p)) => Ok((percent_decode(h, "a host name")?, Some(p.to_owned()))),
        None => Ok((percent_decode(part, "a host name")?, None)),
    }
}

/// `s` percent-decoded; errors name `what` (the part of the URL), not `s`.
fn percent_decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
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
                    ConnInfoError::Syntax(format!("invalid percent-encoding in {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConnInfoError::Syntax(format!("{what} is not UTF-8 once percent-decoded")))
}

pub(super) fn parse_key_value(s: &str) -> Result<Raw, ConnInfoError> {
    let mut raw = Raw::default();
    let mut chars = s.chars().peekable();
    let mut previous: Option<String> = None;
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
            // The word is most likely the rest of a value with a space in it.
            return Err(ConnInfoError::Syntax(match &previous {
                Some(k) => format!(
                    "missing \"=\" in a word after the value of {k} (quote values with spaces: {k}='...')"
                ),
                None => "missing \"=\" in the first word (key=value pairs or a postgresql:// URL)"
                    .into(),
            }));
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
        previous = Some(key.clone());
        raw.params.push((key, value));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19.6: a malformed string is often a password that needed
    /// quoting or encoding: errors name the part, never echo it.
    #[test]
    fn errors_name_the_part_and_never_echo_it() {
        let cases = [
            (
                "postgresql://u:hun%zzter2@h/db",
                "invalid percent-encoding in the password",
            ),
            (
                "postgresql://u:hun/ter2@h/db",
                "must be percent-encoded (%2F)",
            ),
            ("host=h password=hun ter2", "after the value of password"),
            (
                "postgresql://h/db?password=hun%zzter2",
                "in the value of password",
            ),
            ("postgresql://h/db?hunter2", "has no '=' and value"),
        ];
        for (string, expected) in cases {
            let err = match string.starts_with("postgresql://") {
                true => parse_url(string).err(),
                false => parse_key_value(string).err(),
            }
            .unwrap_or_else(|| panic!("{string} is refused"));
            let message = err.to_string();
            assert!(message.contains(expected), "{string}: {message}");
            for secret in ["hun", "ter2", "hunter2"] {
                assert!(!message.contains(secret), "{string}: {message}");
            }
        }
    }
}
