//! Just enough of PostgreSQL's lexical rules to split a query string into
//! its statements and find its words: quoted strings ('...', E'...' with
//! backslashes), quoted identifiers ("..."), dollar quotes ($tag$...$tag$),
//! comments (-- and nested /* */), and semicolons outside all of them.

/// A word (keyword or identifier, upper-cased) or a piece of punctuation,
/// with its byte range in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) word: Option<String>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The tokens of `text` (strings, quoted identifiers and dollar-quoted
/// bodies are tokens without a word; comments and blanks are skipped).
pub(crate) fn tokens(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        let quoted = if c == b'\'' || c == b'"' {
            Some((c, false, i + 1))
        } else if (c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'') {
            Some((b'\'', true, i + 2))
        } else {
            None
        };
        if let Some((quote, escapes, from)) = quoted {
            i = past_quoted(b, from, quote, escapes);
            out.push(Token {
                word: None,
                start,
                end: i,
            });
            continue;
        }
        if c == b'$' {
            // $tag$ ... $tag$ (a tag is empty or an identifier); else a parameter.
            let tag_end = b[i + 1..]
                .iter()
                .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_'))
                .map(|p| i + 1 + p);
            if let Some(te) = tag_end.filter(|&te| b.get(te) == Some(&b'$'))
                && !b.get(i + 1).is_some_and(u8::is_ascii_digit)
            {
                let delim = &b[i..=te];
                let body = te + 1;
                let close = b[body..]
                    .windows(delim.len())
                    .position(|w| w == delim)
                    .map_or(b.len(), |p| body + p + delim.len());
                i = close;
                out.push(Token {
                    word: None,
                    start,
                    end: i,
                });
                continue;
            }
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push(Token {
                word: Some(text[start..i].to_ascii_uppercase()),
                start,
                end: i,
            });
            continue;
        }
        // Punctuation, numbers, operators: one byte at a time (a UTF-8
        // character never starts here: those are words above).
        i += 1;
        out.push(Token {
            word: None,
            start,
            end: i,
        });
    }
    out
}

/// Where a quoted string or identifier whose body starts at `i` ends
/// (past its closing `quote`; a doubled quote is one character, and with
/// `escapes` a backslash takes the next byte).
fn past_quoted(b: &[u8], mut i: usize, quote: u8, escapes: bool) -> usize {
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// The statements of `text`, trimmed, empty ones left out.
pub(crate) fn statements(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    for t in tokens(text) {
        if t.word.is_none() && &text[t.start..t.end] == ";" {
            let s = text[from..t.start].trim();
            if !s.is_empty() {
                out.push(s);
            }
            from = t.end;
        }
    }
    let s = text[from..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// The first `n` words of `statement`.
pub(crate) fn leading_words(statement: &str, n: usize) -> Vec<String> {
    tokens(statement)
        .into_iter()
        .take(n)
        .filter_map(|t| t.word)
        .collect()
}

/// `statement` without the word CONCURRENTLY where it follows INDEX
/// (CREATE INDEX, DROP INDEX, REINDEX): green runs it inside a transaction.
pub(crate) fn without_concurrently(statement: &str) -> String {
    let tokens = tokens(statement);
    let mut out = String::with_capacity(statement.len());
    let mut last = 0;
    for (i, t) in tokens.iter().enumerate() {
        if t.word.as_deref() == Some("CONCURRENTLY")
            && i > 0
            && tokens[..i]
                .iter()
                .rev()
                .take(3)
                .any(|p| p.word.as_deref() == Some("INDEX"))
        {
            out.push_str(&statement[last..t.start]);
            last = t.end;
        }
    }
    out.push_str(&statement[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_comments_and_dollar_bodies() {
        let text = "CREATE TABLE \"a;b\" (x text DEFAULT 'x;y');  -- a; comment\n\
                    CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; /* c; /* nested; */ */ \
                    ALTER TABLE t ADD COLUMN e text DEFAULT E'it\\'s;';";
        let s = statements(text);
        assert_eq!(s.len(), 3, "{s:#?}");
        assert!(s[0].starts_with("CREATE TABLE \"a;b\""));
        assert!(s[1].contains("$body$ SELECT 1; $body$"));
        assert!(s[2].ends_with("E'it\\'s;'"));
        assert_eq!(statements("  ; ;SELECT 1"), vec!["SELECT 1"]);
        assert_eq!(
            statements("SELECT $1; SELECT 2").len(),
            2,
            "a parameter is not a dollar quote"
        );
    }

    #[test]
    fn words_and_concurrently() {
        assert_eq!(
            leading_words("create unique index concurrently i on t (x)", 4),
            ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]
        );
        assert_eq!(
            without_concurrently("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (concurrently)"),
            "CREATE INDEX  IF NOT EXISTS i ON t (concurrently)"
        );
        assert_eq!(
            without_concurrently("drop index concurrently i"),
            "drop index  i"
        );
        assert_eq!(
            without_concurrently("ALTER TABLE t ADD COLUMN concurrently int"),
            "ALTER TABLE t ADD COLUMN concurrently int"
        );
    }
}
