//! DDL in the stream: the `teal.ddl` messages blue's event trigger emits
//! (`teal ddl install`, see `ops::ddl`) arrive in commit order with the
//! data; apply runs the ones it supports on green at that point of the
//! same green transaction, and stops with the statement to run for the rest.
//!
//! ```text
//! message {tag, published, objects, statement (the client's query string), search_path}
//!   not published (another schema, an unpublished table, a temporary object) → skipped
//!   statement → this command's statement (the k-th trigger-firing statement of a
//!               query string holding several; its words must match the tag)
//!   tag supported → CONCURRENTLY dropped, run under blue's search_path,
//!                   recorded in teal.ddl with the batch (exactly once, like the data)
//!   else, or green refuses it → stop: the statement, and `teal ddl resolve`
//! ```

pub(crate) mod lex;

use std::collections::HashMap;

use serde::Deserialize;
use tokio_postgres::Client;

use crate::event::{LogicalMessage, TxnMeta};
use crate::lsn::Lsn;
use crate::store::Store;

/// The prefix of the trigger's messages.
pub const PREFIX: &str = "teal.ddl";

/// Command tags teal runs on green.
const SUPPORTED: &[&str] = &[
    "CREATE TABLE",
    "ALTER TABLE",
    "DROP TABLE",
    "CREATE INDEX",
    "ALTER INDEX",
    "DROP INDEX",
    "CREATE SEQUENCE",
    "ALTER SEQUENCE",
    "DROP SEQUENCE",
    "COMMENT",
];

/// Tags whose statements may hold a password: never shown.
const SECRET_TAGS: &[&str] = &["USER MAPPING", "SERVER", "SUBSCRIPTION"];

/// Leading words of statements that fire no event trigger (global objects).
const NO_TRIGGER: &[&str] = &["ROLE", "USER", "GROUP", "DATABASE", "TABLESPACE", "SYSTEM"];

/// One message of the trigger.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DdlMessage {
    pub(crate) tag: String,
    #[serde(default)]
    pub(crate) published: bool,
    pub(crate) statement: String,
    #[serde(default)]
    pub(crate) search_path: String,
}

/// Why a DDL message stops apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlStop {
    /// The message's LSN.
    pub lsn: Lsn,
    /// Its command tag.
    pub tag: String,
    /// The statement to run on green (withheld when it may hold a secret).
    pub statement: Option<String>,
    /// Why teal did not run it.
    pub reason: String,
}

impl std::fmt::Display for DdlStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blue ran DDL at LSN {} that teal did not apply on green ({}: {}). ",
            self.lsn, self.tag, self.reason
        )?;
        match &self.statement {
            Some(s) => write!(f, "Run it on green yourself:\n    {s};\n")?,
            None => write!(
                f,
                "Its statement is not shown (it may hold a password): run the same on green. "
            )?,
        }
        write!(
            f,
            "then record that it is done and restart teal: teal ddl resolve --target URL --slot SLOT --lsn {}",
            self.lsn
        )
    }
}

/// What apply does with DDL messages within a source transaction.
#[derive(Default)]
pub(crate) struct Ddl {
    /// The transaction the counts are for.
    txn: Option<Lsn>,
    /// Messages seen per query string in that transaction.
    seen: HashMap<String, usize>,
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Not published: nothing.
    Skip,
    /// Run this statement on green under this search_path.
    Run {
        statement: String,
        search_path: String,
        tag: String,
    },
}

impl Ddl {
    /// Decides what `message` (in `txn`) asks of green.
    pub(crate) fn decide(
        &mut self,
        message: &LogicalMessage,
        txn: &TxnMeta,
    ) -> Result<Action, DdlStop> {
        let stop = |tag: &str, statement: Option<String>, reason: String| DdlStop {
            lsn: message.lsn,
            tag: tag.to_owned(),
            statement,
            reason,
        };
        let m: DdlMessage = serde_json::from_slice(&message.content).map_err(|e| {
            stop("?", None, format!("the message does not read ({e}); was the trigger installed by this version of teal?"))
        })?;
        if self.txn != Some(txn.commit_lsn) {
            self.txn = Some(txn.commit_lsn);
            self.seen.clear();
        }
        let k = {
            let n = self.seen.entry(m.statement.clone()).or_default();
            *n += 1;
            *n - 1
        };
        let secret = SECRET_TAGS.iter().any(|s| m.tag.contains(s));
        let statement = one_statement(&m.statement, &m.tag, k);
        if !m.published {
            return Ok(Action::Skip);
        }
        let shown = |s: &str| (!secret).then(|| s.to_owned());
        let statement = statement.map_err(|reason| stop(&m.tag, shown(&m.statement), reason))?;
        if !SUPPORTED.contains(&m.tag.as_str()) {
            return Err(stop(
                &m.tag,
                shown(&statement),
                "teal applies CREATE/ALTER/DROP TABLE, INDEX and SEQUENCE, and COMMENT".into(),
            ));
        }
        let words = lex::leading_words(&statement, 64);
        if m.tag == "CREATE TABLE"
            && words.iter().any(|w| w == "AS")
            && words
                .iter()
                .any(|w| w == "SELECT" || w == "VALUES" || w == "EXECUTE")
        {
            return Err(stop(
                &m.tag,
                shown(&statement),
                "CREATE TABLE AS would compute its rows on green as well as receive them; create the table on green WITH NO DATA".into(),
            ));
        }
        Ok(Action::Run {
            statement: lex::without_concurrently(&statement),
            search_path: m.search_path,
            tag: m.tag,
        })
    }
}

/// The `k`-th statement of `text` that fires an event trigger, checked
/// against `tag`.
fn one_statement(text: &str, tag: &str, k: usize) -> Result<String, String> {
    let all = lex::statements(text);
    if all.len() == 1 {
        return Ok(all[0].to_owned());
    }
    let firing: Vec<&str> = all
        .into_iter()
        .filter(|s| {
            let w = lex::leading_words(s, 3);
            matches!(
                w.first().map(String::as_str),
                Some(
                    "CREATE"
                        | "ALTER"
                        | "DROP"
                        | "COMMENT"
                        | "GRANT"
                        | "REVOKE"
                        | "IMPORT"
                        | "SECURITY"
                )
            ) && !w
                .iter()
                .skip(1)
                .take(2)
                .any(|x| NO_TRIGGER.contains(&x.as_str()))
                && !(w.first().map(String::as_str) == Some("CREATE")
                    && w.get(1).map(String::as_str) == Some("EVENT"))
        })
        .collect();
    let Some(s) = firing.get(k) else {
        return Err(format!(
            "the query string holds several statements and teal could not tell which one this is (command {} of {})",
            k + 1,
            firing.len()
        ));
    };
    let words = lex::leading_words(s, 6);
    let tag_words: Vec<&str> = tag.split(' ').collect();
    let fits = words.first().map(String::as_str) == tag_words.first().copied()
        && tag_words
            .last()
            .is_some_and(|last| words.iter().skip(1).any(|w| w == last));
    if !fits {
        return Err(format!(
            "the query string holds several statements and the one in its place does not read as {tag}"
        ));
    }
    Ok((*s).to_owned())
}

/// Runs `statement` on green in the open transaction under `search_path`,
/// and records it in `teal.ddl` (in the same transaction).
pub(crate) async fn run(
    client: &Client,
    store: &Store,
    slot: &str,
    lsn: Lsn,
    action: &Action,
) -> Result<(), DdlStop> {
    let Action::Run {
        statement,
        search_path,
        tag,
    } = action
    else {
        return Ok(());
    };
    let failed = |e: tokio_postgres::Error| DdlStop {
        lsn,
        tag: tag.clone(),
        statement: Some(statement.clone()),
        reason: format!("green refused it: {}", crate::error::describe_postgres(&e)),
    };
    client
        .execute(
            "SELECT pg_catalog.set_config('search_path', $1, true)",
            &[search_path],
        )
        .await
        .map_err(failed)?;
    client.batch_execute(statement).await.map_err(failed)?;
    // Back to the session's own (apply names every table in full).
    client
        .batch_execute("RESET search_path")
        .await
        .map_err(failed)?;
    client
        .execute(
            &format!(
                "INSERT INTO {}.ddl (slot, lsn, tag, statement, how) VALUES ($1, $2::text::pg_lsn, $3, $4, 'applied')",
                store.quoted()
            ),
            &[&slot, &lsn.to_string(), tag, statement],
        )
        .await
        .map_err(failed)?;
    Ok(())
}

/// Whether `lsn`'s DDL was resolved by hand (`teal ddl resolve`).
pub(crate) async fn resolved(
    client: &Client,
    store: &Store,
    slot: &str,
    lsn: Lsn,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            &format!(
                "SELECT 1 FROM {}.ddl WHERE slot = $1 AND lsn = $2::text::pg_lsn AND how = 'resolved'",
                store.quoted()
            ),
            &[&slot, &lsn.to_string()],
        )
        .await?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(lsn: u64, json: serde_json::Value) -> LogicalMessage {
        LogicalMessage {
            transactional: true,
            lsn: Lsn(lsn),
            prefix: PREFIX.into(),
            content: bytes::Bytes::from(json.to_string()),
        }
    }

    fn txn(commit: u64) -> TxnMeta {
        TxnMeta {
            xid: crate::lsn::Xid(7),
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 1),
            commit_ts: crate::lsn::PgTimestamp::now(),
            origin: None,
            streamed: false,
            change_count: 0,
        }
    }

    fn ddl(tag: &str, statement: &str, published: bool) -> serde_json::Value {
        serde_json::json!({"tag": tag, "published": published, "statement": statement, "search_path": "public"})
    }

    #[test]
    fn one_statement_runs_as_it_is_without_concurrently() {
        let mut d = Ddl::default();
        let a = d
            .decide(
                &message(
                    10,
                    ddl("CREATE INDEX", "CREATE INDEX CONCURRENTLY i ON t (x)", true),
                ),
                &txn(100),
            )
            .unwrap();
        assert_eq!(
            a,
            Action::Run {
                statement: "CREATE INDEX  i ON t (x)".into(),
                search_path: "public".into(),
                tag: "CREATE INDEX".into()
            }
        );
        assert_eq!(
            d.decide(
                &message(11, ddl("ALTER TABLE", "ALTER TABLE other ADD c int", false)),
                &txn(100)
            )
            .unwrap(),
            Action::Skip
        );
    }

    #[test]
    fn several_statements_in_one_query_string_are_taken_in_order() {
        let text = "CREATE TABLE a (x int); INSERT INTO a VALUES (1); CREATE ROLE r; ALTER TABLE a ADD y int; CREATE INDEX ON a (y)";
        let mut d = Ddl::default();
        let run = |d: &mut Ddl, lsn, tag, commit| match d
            .decide(&message(lsn, ddl(tag, text, true)), &txn(commit))
        {
            Ok(Action::Run { statement, .. }) => statement,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            run(&mut d, 1, "CREATE TABLE", 100),
            "CREATE TABLE a (x int)"
        );
        assert_eq!(
            run(&mut d, 2, "ALTER TABLE", 100),
            "ALTER TABLE a ADD y int"
        );
        assert_eq!(run(&mut d, 3, "CREATE INDEX", 100), "CREATE INDEX ON a (y)");
        // A fourth firing has no statement: stop.
        let e = d
            .decide(&message(4, ddl("CREATE INDEX", text, true)), &txn(100))
            .unwrap_err();
        assert!(e.reason.contains("could not tell"), "{e}");
        // A new transaction counts from the start again.
        assert_eq!(
            run(&mut d, 5, "CREATE TABLE", 101),
            "CREATE TABLE a (x int)"
        );
        // A tag that does not fit the statement in its place: stop.
        let mut d = Ddl::default();
        let e = d
            .decide(&message(6, ddl("ALTER TABLE", text, true)), &txn(200))
            .unwrap_err();
        assert!(e.reason.contains("does not read as ALTER TABLE"), "{e}");
    }

    #[test]
    fn unsupported_commands_stop_with_the_statement_and_secrets_are_withheld() {
        let mut d = Ddl::default();
        let e = d
            .decide(
                &message(
                    0x10,
                    ddl(
                        "CREATE FUNCTION",
                        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                        true,
                    ),
                ),
                &txn(1),
            )
            .unwrap_err();
        let said = e.to_string();
        assert!(
            said.contains("CREATE FUNCTION f()")
                && said.contains("teal ddl resolve")
                && said.contains("0/10"),
            "{said}"
        );
        let e = d
            .decide(
                &message(
                    0x11,
                    ddl(
                        "CREATE USER MAPPING",
                        "CREATE USER MAPPING FOR u SERVER s OPTIONS (password 'hunter2')",
                        true,
                    ),
                ),
                &txn(1),
            )
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = d
            .decide(
                &message(
                    0x12,
                    ddl("CREATE TABLE", "CREATE TABLE x AS SELECT * FROM y", true),
                ),
                &txn(1),
            )
            .unwrap_err();
        assert!(e.reason.contains("WITH NO DATA"), "{e}");
        let bad = LogicalMessage {
            transactional: true,
            lsn: Lsn(1),
            prefix: PREFIX.into(),
            content: bytes::Bytes::from_static(b"not json"),
        };
        assert!(d.decide(&bad, &txn(1)).is_err());
    }
}
