//! Topic names: `<prefix>.<schema>.<table>`, escaped so that every name is
//! one Kafka accepts and no two tables share a topic.
//!
//! The escaping rule (README, "Kafka audit stream"): in the schema and the
//! table name, ASCII letters, digits, `_` and `-` stay as they are; every
//! other character, `.` included (it separates the parts), becomes `-`
//! followed by the two upper-case hex digits of each of its UTF-8 bytes:
//! `my.table` → `my-2Etable`, `Order Items` → `Order-20Items`, `café` →
//! `caf-C3-A9`. So `a.b` + `c` and `a` + `b.c`, which both read
//! `teal.a.b.c` unescaped, get `teal.a-2Eb.c` and `teal.a.b-2Ec`.
//!
//! Two collisions remain possible, and both stop teal with an error naming
//! the two tables, when it starts (among every published table) or when a
//! table first appears: a name that reads like an escape beside the name
//! it escapes (`a-2Eb` beside `a.b`), and topics that differ only in `.`
//! versus `_` (`teal.a_b.c`, `teal.a.b_c`), which Kafka itself refuses
//! because their metric names would be the same. A name longer than
//! Kafka's 249 characters stops teal too. Delivery to such a topic would
//! otherwise fail on every retry, forever.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::ConfigError;
use crate::event::QualifiedName;

use super::config::{KafkaConfig, KafkaSinkError};

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// A schema or table name as a part of a topic name (see the module
/// documentation for the rule).
pub fn escape(part: &str) -> Cow<'_, str> {
    let keep = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if part.chars().all(keep) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() * 3);
    for c in part.chars() {
        if keep(c) {
            out.push(c);
        } else {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("-{b:02X}"));
            }
        }
    }
    Cow::Owned(out)
}

/// The topic of `table`'s changes.
pub fn table_topic(prefix: &str, table: &QualifiedName) -> String {
    format!(
        "{prefix}.{}.{}",
        escape(&table.namespace),
        escape(&table.name)
    )
}

/// Why `topic` is not a name Kafka accepts, if it is not.
pub fn invalid_topic(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("it is empty".into());
    }
    if topic == "." || topic == ".." {
        return Some(format!("Kafka does not accept {topic:?} as a topic"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Some(format!(
            "it is {} characters long, Kafka accepts at most {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| {
            format!("{c:?} is not allowed (Kafka accepts ASCII letters, digits, '.', '_' and '-')")
        })
}

/// Checks the names the flags give (before anything connects).
pub fn validate(config: &KafkaConfig) -> Result<(), ConfigError> {
    let flag_error = |flag, reason| Err(ConfigError { flag, reason });
    // The prefix is a part of every topic; a table topic adds at least ".a.b".
    if let Some(reason) = invalid_topic(&config.topic_prefix) {
        return flag_error("--kafka-topic-prefix", reason);
    }
    if config.topic_prefix.len() + 4 > MAX_TOPIC_LEN {
        return flag_error(
            "--kafka-topic-prefix",
            format!("it leaves no room for table names within Kafka's {MAX_TOPIC_LEN} characters"),
        );
    }
    let transactions = config.transactions_topic();
    if let Some(reason) = invalid_topic(&transactions) {
        return flag_error("--kafka-transactions-topic", reason);
    }
    if config.exactly_once {
        let position = config.position_topic();
        if let Some(reason) = invalid_topic(&position) {
            return flag_error("--kafka-progress-topic", reason);
        }
        if collision_key(&position) == collision_key(&transactions) {
            return flag_error(
                "--kafka-progress-topic",
                format!(
                    "{position} collides with the transactions topic {transactions} (Kafka refuses topics that differ only in '.' and '_')"
                ),
            );
        }
    }
    Ok(())
}

/// Topics Kafka considers the same: equal once every `.` is a `_`.
fn collision_key(topic: &str) -> String {
    topic.replace('.', "_")
}

/// Who holds a topic.
#[derive(Debug, Clone)]
enum Holder {
    Table(QualifiedName),
    Flag(&'static str),
}

/// Each table's topic and data-collection name, formatted once per table
/// rather than once per change, and every topic's holder, so that a second
/// table on the same (or a colliding) topic is refused.
#[derive(Debug)]
pub(super) struct Names {
    prefix: String,
    tables: HashMap<QualifiedName, (Arc<str>, Arc<str>)>,
    holders: HashMap<String, (String, Holder)>,
}

impl Names {
    /// No table yet; the transactions and position topics are taken.
    pub(super) fn new(config: &KafkaConfig) -> Names {
        let mut holders = HashMap::new();
        let mut hold = |topic: String, flag| {
            holders.insert(collision_key(&topic), (topic, Holder::Flag(flag)));
        };
        hold(config.transactions_topic(), "--kafka-transactions-topic");
        if config.exactly_once {
            hold(config.position_topic(), "--kafka-progress-topic");
        }
        Names {
            prefix: config.topic_prefix.clone(),
            tables: HashMap::new(),
            holders,
        }
    }

    /// `table`'s topic and data-collection name; an error when its topic
    /// is not one Kafka accepts or collides with another's.
    pub(super) fn of(
        &mut self,
        table: &QualifiedName,
    ) -> Result<(Arc<str>, Arc<str>), KafkaSinkError> {
        if let Some(names) = self.tables.get(table) {
            return Ok(names.clone());
        }
        let topic = table_topic(&self.prefix, table);
        let refuse = |reason: String| KafkaSinkError::Topic {
            table: table.quoted(),
            reason,
        };
        if let Some(reason) = invalid_topic(&topic) {
            return Err(refuse(format!("its topic {topic}: {reason}")));
        }
        let key = collision_key(&topic);
        if let Some((other_topic, holder)) = self.holders.get(&key) {
            let other = match holder {
                Holder::Table(t) => format!("table {}", t.quoted()),
                Holder::Flag(flag) => format!("the topic of {flag}"),
            };
            return Err(refuse(if *other_topic == topic {
                format!("its topic {topic} is also {other}'s (see the escaping rule in README)")
            } else {
                format!(
                    "its topic {topic} collides with {other_topic}, {other} (Kafka refuses topics that differ only in '.' and '_'); leave one of the tables out of the publication"
                )
            }));
        }
        self.holders
            .insert(key, (topic.clone(), Holder::Table(table.clone())));
        let names: (Arc<str>, Arc<str>) = (topic.into(), table.to_string().into());
        self.tables.insert(table.clone(), names.clone());
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: &str, name: &str) -> QualifiedName {
        QualifiedName {
            namespace: schema.into(),
            name: name.into(),
        }
    }

    #[test]
    fn escaping_keeps_plain_names_and_separates_dotted_ones() {
        assert_eq!(
            table_topic("teal", &t("public", "order_items-2")),
            "teal.public.order_items-2"
        );
        assert_eq!(table_topic("teal", &t("a.b", "c")), "teal.a-2Eb.c");
        assert_eq!(table_topic("teal", &t("a", "b.c")), "teal.a.b-2Ec");
        assert_eq!(
            table_topic("teal", &t("public", "Order Items")),
            "teal.public.Order-20Items"
        );
        assert_eq!(
            table_topic("teal", &t("public", "café")),
            "teal.public.caf-C3-A9"
        );
        assert_eq!(table_topic("t", &t("x", "a/b\n")), "t.x.a-2Fb-0A");
        for name in ["a b", "é", "\u{1F600}", "\"quoted\"", "a.b.c"] {
            assert_eq!(
                invalid_topic(&table_topic("teal", &t("s", name))),
                None,
                "{name:?}"
            );
        }
    }

    #[test]
    fn colliding_tables_are_refused_naming_both() {
        let config = KafkaConfig::new("k:9092", "db");
        let mut names = Names::new(&config);
        names.of(&t("a", "b.c")).unwrap();
        names.of(&t("a.b", "c")).unwrap();
        // Same topic again for the same table: fine.
        names.of(&t("a", "b.c")).unwrap();

        // Reads like an escape.
        let err = names.of(&t("a", "b-2Ec")).unwrap_err().to_string();
        assert!(
            err.contains(r#""a"."b-2Ec""#) && err.contains(r#"table "a"."b.c""#),
            "{err}"
        );
        // Differs only in '.' and '_'.
        names.of(&t("x_y", "z")).unwrap();
        let err = names.of(&t("x", "y_z")).unwrap_err().to_string();
        assert!(
            err.contains("teal.x.y_z collides with teal.x_y.z")
                && err.contains(r#"table "x_y"."z""#),
            "{err}"
        );
        // With the transactions topic (--kafka-transactions-topic teal.public_orders).
        let mut config = KafkaConfig::new("k:9092", "db");
        config.transactions_topic = Some("teal.public_orders".into());
        let err = Names::new(&config)
            .of(&t("public", "orders"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--kafka-transactions-topic"), "{err}");
        // Too long (63-byte names of multi-byte characters).
        let long = "é".repeat(31);
        let err = Names::new(&KafkaConfig::new("k", "db"))
            .of(&t(&long, &long))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 249"), "{err}");
    }

    #[test]
    fn flags_with_names_kafka_refuses_are_named() {
        let mut config = KafkaConfig::new("k:9092", "db");
        config.topic_prefix = "my prefix".into();
        let err = validate(&config).unwrap_err();
        assert_eq!(err.flag, "--kafka-topic-prefix");
        assert!(err.reason.contains("' ' is not allowed"), "{}", err.reason);
        config.topic_prefix = "ok".into();
        config.transactions_topic = Some("tx/1".into());
        assert_eq!(
            validate(&config).unwrap_err().flag,
            "--kafka-transactions-topic"
        );
        config.transactions_topic = Some("ok.tx_1".into());
        config.exactly_once = true;
        config.position_topic = Some("ok_tx.1".into());
        assert_eq!(
            validate(&config).unwrap_err().flag,
            "--kafka-progress-topic"
        );
        config.position_topic = None;
        validate(&config).unwrap();
    }
}
