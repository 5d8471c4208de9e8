//! `teal tail`: print the decoded stream, confirming only what was flushed.
//!
//! ```text
//! capture ──Vec<Event>──▶ format (json | text) ──▶ stdout ──flush──▶ confirm(end_lsn)
//! ```
//!
//! A transaction's end LSN is confirmed to blue only after its last line was
//! written and stdout flushed, so `tail` is itself a durable consumer: after
//! a crash it prints from the first transaction not yet confirmed (possibly
//! repeating the few printed since the last status update), never skipping.
//!
//! JSON lines (names kept stable for the tools that parse them):
//! `begin` {xid, final_lsn, commit_ts, end_lsn, origin, streamed, changes},
//! `change` {op, schema, table, new | key, old, lsn} or {op: truncate, tables,
//! cascade, restart_identity}, `message` {prefix, content_base64,
//! transactional, lsn}, `commit` {xid, commit_lsn, end_lsn, commit_ts}.
//! Values: PostgreSQL text as a JSON string, `null`, `{"unchanged_toast":true}`,
//! or `{"binary_base64":"..."}`.

use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::assembler::AssemblerStats;
use crate::config::{AssemblerConfig, SourceConfig};
use crate::event::{
    Change, ChangeKind, Event, InvalidUtf8, LogicalMessage, OldRow, Relation, RowImage, TxnMeta,
    Value,
};
use crate::lsn::Lsn;
use crate::pipeline::{PipelineError, start_capture};
use crate::progress::{Consumer, FlushLsn};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "text" => Ok(Format::Text),
            _ => Err(format!("{s:?} is not one of json, text")),
        }
    }
}

/// Why `tail` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Capturing from blue failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Writing the output failed (e.g. the reader of a pipe went away).
    #[error("cannot write the stream to the output: {0}")]
    Output(#[source] io::Error),
    /// A text value is not UTF-8.
    #[error("{error} (change at LSN {lsn})")]
    InvalidUtf8 {
        /// Which value.
        #[source]
        error: InvalidUtf8,
        /// The change's LSN.
        lsn: Lsn,
    },
}

/// What a `tail` run printed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TailSummary {
    /// Transactions printed.
    pub transactions: u64,
    /// Changes printed.
    pub changes: u64,
    /// Non-transactional messages printed.
    pub messages: u64,
    /// The last LSN confirmed to blue.
    pub confirmed_lsn: Lsn,
}

/// Streams `source` to `out` until `shutdown` or an error.
pub async fn run(
    source: SourceConfig,
    assembler: AssemblerConfig,
    format: Format,
    out: Box<dyn Write + Send>,
    shutdown: CancellationToken,
) -> Result<(TailSummary, Arc<AssemblerStats>), TailError> {
    let progress = FlushLsn::new();
    let consumer = progress.register();
    let (events, capture) = start_capture(
        source,
        assembler,
        progress,
        Arc::default(),
        shutdown.clone(),
    )?;
    let stats = capture.stats();
    let printer = tokio::task::spawn_blocking(move || print(events, out, consumer, format));
    let printed = printer
        .await
        .unwrap_or_else(|_| Err(TailError::Pipeline(PipelineError::Panicked("printer"))));
    if printed.is_err() {
        // Stop reading blue; the printer's handle is gone, so nothing more is confirmed.
        shutdown.cancel();
    }
    let captured = capture.wait().await;
    let summary = printed?;
    captured?;
    Ok((summary, stats))
}

fn print(
    mut events: mpsc::Receiver<Vec<Event>>,
    out: Box<dyn Write + Send>,
    consumer: Consumer,
    format: Format,
) -> Result<TailSummary, TailError> {
    let mut w = BufWriter::with_capacity(256 * 1024, out);
    let mut summary = TailSummary::default();
    while let Some(batch) = events.blocking_recv() {
        let mut confirm = None;
        for event in batch {
            match event {
                Event::Begin(meta) => write_begin(&mut w, &meta, format),
                Event::Changes(changes) => {
                    summary.changes += changes.len() as u64;
                    changes
                        .iter()
                        .try_for_each(|c| write_change(&mut w, c, format))?;
                    Ok(())
                }
                Event::Commit(meta) => {
                    summary.transactions += 1;
                    confirm = Some(meta.end_lsn);
                    write_commit(&mut w, &meta, format)
                }
                Event::Message(m) => {
                    summary.messages += 1;
                    write_message(&mut w, &m, format)
                }
                Event::Idle { wal_end } => {
                    confirm = confirm.max(Some(wal_end));
                    Ok(())
                }
            }
            .map_err(TailError::Output)?;
        }
        w.flush().map_err(TailError::Output)?;
        if let Some(lsn) = confirm {
            consumer.confirm(lsn);
            summary.confirmed_lsn = summary.confirmed_lsn.max(lsn);
        }
    }
    Ok(summary)
}

fn json_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(&mut *w, s).map_err(io::Error::from)
}

fn write_begin(w: &mut impl Write, m: &TxnMeta, format: Format) -> io::Result<()> {
    match format {
        Format::Json => {
            write!(
                w,
                r#"{{"kind":"begin","xid":{},"final_lsn":"{}","commit_ts":"{}","end_lsn":"{}","streamed":{},"changes":{},"origin":"#,
                m.xid, m.commit_lsn, m.commit_ts, m.end_lsn, m.streamed, m.change_count
            )?;
            match &m.origin {
                Some(o) => {
                    w.write_all(br#"{"name":"#)?;
                    json_str(w, &o.name)?;
                    write!(w, r#","lsn":"{}"}}}}"#, o.lsn)?;
                }
                None => w.write_all(b"null}")?,
            }
            w.write_all(b"\n")
        }
        Format::Text => {
            write!(
                w,
                "BEGIN xid={} final_lsn={} commit_ts={} changes={}{}",
                m.xid,
                m.commit_lsn,
                m.commit_ts,
                m.change_count,
                if m.streamed { " streamed" } else { "" }
            )?;
            if let Some(o) = &m.origin {
                write!(w, " origin={} origin_lsn={}", o.name, o.lsn)?;
            }
            w.write_all(b"\n")
        }
    }
}

fn write_commit(w: &mut impl Write, m: &TxnMeta, format: Format) -> io::Result<()> {
    match format {
        Format::Json => writeln!(
            w,
            r#"{{"kind":"commit","xid":{},"commit_lsn":"{}","end_lsn":"{}","commit_ts":"{}"}}"#,
            m.xid, m.commit_lsn, m.end_lsn, m.commit_ts
        ),
        Format::Text => writeln!(
            w,
            "COMMIT xid={} commit_lsn={} end_lsn={} commit_ts={}",
            m.xid, m.commit_lsn, m.end_lsn, m.commit_ts
        ),
    }
}

fn write_message(w: &mut impl Write, m: &LogicalMessage, format: Format) -> io::Result<()> {
    match format {
        Format::Json => {
            w.write_all(br#"{"kind":"message","prefix":"#)?;
            json_str(w, &m.prefix)?;
            writeln!(
                w,
                r#","content_base64":"{}","transactional":{},"lsn":"{}"}}"#,
                BASE64.encode(&m.content),
                m.transactional,
                m.lsn
            )
        }
        Format::Text => writeln!(
            w,
            "MESSAGE prefix={} transactional={} lsn={} content_base64={}",
            escape(&m.prefix),
            m.transactional,
            m.lsn,
            BASE64.encode(&m.content)
        ),
    }
}

fn write_change(w: &mut impl Write, c: &Change, format: Format) -> Result<(), TailError> {
    let out = |e| TailError::Output(e);
    match &c.kind {
        ChangeKind::Message(m) => write_message(w, m, format).map_err(out),
        ChangeKind::Truncate {
            relations,
            cascade,
            restart_identity,
        } => match format {
            Format::Json => (|| {
                w.write_all(br#"{"kind":"change","op":"truncate","tables":["#)?;
                for (i, r) in relations.iter().enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    json_str(w, &r.name.to_string())?;
                }
                writeln!(
                    w,
                    r#"],"cascade":{cascade},"restart_identity":{restart_identity},"lsn":"{}"}}"#,
                    c.lsn
                )
            })()
            .map_err(out),
            Format::Text => {
                let names: Vec<String> = relations.iter().map(|r| r.name.to_string()).collect();
                writeln!(
                    w,
                    "TRUNCATE {}{}{}",
                    names.join(", "),
                    if *cascade { " CASCADE" } else { "" },
                    if *restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    }
                )
                .map_err(out)
            }
        },
        ChangeKind::Insert { relation, new } => {
            write_row_change(w, c.lsn, "insert", relation, None, Some(new), format)
        }
        ChangeKind::Update { relation, old, new } => write_row_change(
            w,
            c.lsn,
            "update",
            relation,
            Some(old.as_ref()),
            Some(new),
            format,
        ),
        ChangeKind::Delete { relation, old } => {
            write_row_change(w, c.lsn, "delete", relation, Some(Some(old)), None, format)
        }
    }
}

/// Which columns of a row image to print.
#[derive(Clone, Copy)]
enum Columns {
    All,
    KeyOnly,
}

fn write_row_change(
    w: &mut impl Write,
    lsn: Lsn,
    op: &str,
    rel: &Relation,
    old: Option<Option<&OldRow>>,
    new: Option<&RowImage>,
    format: Format,
) -> Result<(), TailError> {
    let out = TailError::Output;
    let (key, full) = match old.flatten() {
        Some(OldRow::Key(k)) => (Some(k), None),
        Some(OldRow::Full(o)) => (None, Some(o)),
        None => (None, None),
    };
    match format {
        Format::Json => {
            w.write_all(br#"{"kind":"change","op":""#).map_err(out)?;
            w.write_all(op.as_bytes()).map_err(out)?;
            w.write_all(br#"","schema":"#).map_err(out)?;
            json_str(w, &rel.name.namespace).map_err(out)?;
            w.write_all(br#","table":"#).map_err(out)?;
            json_str(w, &rel.name.name).map_err(out)?;
            if old.is_some() {
                w.write_all(br#","key":"#).map_err(out)?;
                json_row(w, rel, key, Columns::KeyOnly, lsn)?;
                w.write_all(br#","old":"#).map_err(out)?;
                json_row(w, rel, full, Columns::All, lsn)?;
            }
            if let Some(new) = new {
                w.write_all(br#","new":"#).map_err(out)?;
                json_row(w, rel, Some(new), Columns::All, lsn)?;
            }
            writeln!(w, r#","lsn":"{lsn}"}}"#).map_err(out)
        }
        Format::Text => {
            write!(
                w,
                "{} {}:",
                op.to_ascii_uppercase(),
                escape(&rel.name.to_string())
            )
            .map_err(out)?;
            if let Some(k) = key {
                w.write_all(b" key(").map_err(out)?;
                text_row(w, rel, k, Columns::KeyOnly, lsn)?;
                w.write_all(b")").map_err(out)?;
            }
            if let Some(o) = full {
                w.write_all(b" old(").map_err(out)?;
                text_row(w, rel, o, Columns::All, lsn)?;
                w.write_all(b")").map_err(out)?;
            }
            if let Some(new) = new {
                w.write_all(b" ").map_err(out)?;
                text_row(w, rel, new, Columns::All, lsn)?;
            }
            w.write_all(b"\n").map_err(out)
        }
    }
}

fn selected<'a>(
    rel: &'a Relation,
    row: &'a RowImage,
    which: Columns,
) -> impl Iterator<Item = (&'a str, Value<'a>)> + 'a {
    rel.columns
        .iter()
        .zip(row.values())
        .filter(move |(col, _)| matches!(which, Columns::All) || col.is_key)
        .map(|(col, v)| (col.name.as_str(), v))
}

fn utf8<'a>(rel: &Relation, column: &str, bytes: &'a [u8], lsn: Lsn) -> Result<&'a str, TailError> {
    std::str::from_utf8(bytes).map_err(|_| TailError::InvalidUtf8 {
        error: InvalidUtf8 {
            table: rel.name.clone(),
            column: column.to_owned(),
        },
        lsn,
    })
}

fn json_row(
    w: &mut impl Write,
    rel: &Relation,
    row: Option<&RowImage>,
    which: Columns,
    lsn: Lsn,
) -> Result<(), TailError> {
    let value = match row {
        Some(row) => rel
            .row_json(row, matches!(which, Columns::KeyOnly))
            .map_err(|e| TailError::InvalidUtf8 { error: e, lsn })?,
        None => serde_json::Value::Null,
    };
    serde_json::to_writer(w, &value).map_err(|e| TailError::Output(e.into()))
}

fn text_row(
    w: &mut impl Write,
    rel: &Relation,
    row: &RowImage,
    which: Columns,
    lsn: Lsn,
) -> Result<(), TailError> {
    let out = TailError::Output;
    for (i, (name, value)) in selected(rel, row, which).enumerate() {
        if i > 0 {
            w.write_all(b" ").map_err(out)?;
        }
        let name = escape(name);
        match value {
            Value::Null => write!(w, "{name}=NULL"),
            Value::UnchangedToast => write!(w, "{name}=(unchanged toast)"),
            Value::Text(t) => write!(
                w,
                "{name}='{}'",
                escape(utf8(rel, name.as_ref(), t, lsn)?).replace('\'', "''")
            ),
            Value::Binary(b) => write!(w, "{name}=(binary {})", BASE64.encode(b)),
        }
        .map_err(out)?;
    }
    Ok(())
}

/// `s` for a terminal line: control characters (newlines, escape
/// sequences, C1 controls) and backslashes written as escapes, so row data
/// can neither forge lines nor drive the terminal.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod text_tests {
    use super::escape;

    /// Issue 19.12: row data cannot forge lines or drive the terminal.
    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(escape("plain 'text' ✓"), "plain 'text' ✓");
        assert_eq!(
            escape("a\nINSERT public.t: id='9'\r\t\\"),
            "a\\nINSERT public.t: id='9'\\r\\t\\\\"
        );
        assert_eq!(
            escape("\u{1b}[31mred\u{9b}2J\u{7f}"),
            "\\u{1b}[31mred\\u{9b}2J\\u{7f}"
        );
        assert!(!escape("x\u{1b}\n\u{85}").chars().any(char::is_control));
    }
}
