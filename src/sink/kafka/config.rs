//! `--kafka-*` settings, the producer they make, and why the sink stops.

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::lsn::Lsn;

/// `--kafka-*` settings.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `--kafka-brokers`.
    pub brokers: String,
    /// `--kafka-topic-prefix`: topics are `<prefix>.<schema>.<table>`.
    pub topic_prefix: String,
    /// `--kafka-transactions-topic` (default `<prefix>.transactions`).
    pub transactions_topic: Option<String>,
    /// `--kafka-property key=value`: passed to librdkafka last.
    pub properties: Vec<(String, String)>,
    /// A tombstone (null value) after each delete, for log compaction.
    pub tombstones: bool,
    /// Blue's database (`source.db`).
    pub db: String,
    /// `--kafka-exactly-once`: a transactional producer (see the module docs).
    pub exactly_once: bool,
    /// `--kafka-progress-topic` (default `<prefix>.teal_progress`; the flag
    /// and topic keep their names): where exactly-once keeps teal's
    /// position in Kafka; best created with `cleanup.policy=compact`.
    pub position_topic: Option<String>,
    /// `--kafka-max-behind`: how far (bytes of WAL) green may get ahead of
    /// what Kafka acknowledged before apply waits (`None`: no limit beyond
    /// the channels between them).
    pub max_behind: Option<u64>,
    /// `--kafka-drop-on-wal-risk`: when blue would invalidate the slot
    /// within this long (or its `wal_status` is `unreserved`) while Kafka,
    /// not green, holds it back, Kafka is dropped from the slot's watermark
    /// for the rest of the run (`None`: never).
    pub drop_on_wal_risk: Option<std::time::Duration>,
    /// `--kafka-transaction-max-records` / `--kafka-transaction-max-delay`:
    /// with `--kafka-exactly-once`, a Kafka transaction commits once it
    /// holds this many records or is this old (between source
    /// transactions). Each commit waits for every record of the
    /// transaction, so longer transactions cost fewer drains; consumers
    /// reading committed records see them that much later.
    pub transaction_max_records: u64,
    /// See [`Self::transaction_max_records`].
    pub transaction_max_delay: std::time::Duration,
}

impl std::fmt::Debug for KafkaConfig {
    /// Property values may be secrets (sasl.password, ssl.key.password): names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("transactions_topic", &self.transactions_topic)
            .field(
                "properties",
                &self.properties.iter().map(|p| &p.0).collect::<Vec<_>>(),
            )
            .field("tombstones", &self.tombstones)
            .field("exactly_once", &self.exactly_once)
            .field("max_behind", &self.max_behind)
            .field("drop_on_wal_risk", &self.drop_on_wal_risk)
            .field("transaction_max_records", &self.transaction_max_records)
            .field("transaction_max_delay", &self.transaction_max_delay)
            .finish_non_exhaustive()
    }
}

impl KafkaConfig {
    /// Defaults for `brokers`: prefix `teal`, tombstones on.
    pub fn new(brokers: impl Into<String>, db: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: "teal".into(),
            transactions_topic: None,
            properties: Vec::new(),
            tombstones: true,
            db: db.into(),
            exactly_once: false,
            position_topic: None,
            max_behind: None,
            drop_on_wal_risk: None,
            transaction_max_records: Self::DEFAULT_TRANSACTION_MAX_RECORDS,
            transaction_max_delay: Self::DEFAULT_TRANSACTION_MAX_DELAY,
        }
    }

    /// `--kafka-transaction-max-records` default.
    pub const DEFAULT_TRANSACTION_MAX_RECORDS: u64 = 100_000;
    /// `--kafka-transaction-max-delay` default.
    pub const DEFAULT_TRANSACTION_MAX_DELAY: std::time::Duration =
        std::time::Duration::from_millis(500);

    /// The topic of exactly-once's position.
    pub fn position_topic(&self) -> String {
        self.position_topic
            .clone()
            .unwrap_or_else(|| format!("{}.teal_progress", self.topic_prefix))
    }

    /// The transaction metadata topic.
    pub fn transactions_topic(&self) -> String {
        self.transactions_topic
            .clone()
            .unwrap_or_else(|| format!("{}.transactions", self.topic_prefix))
    }

    /// Checks the topic names the flags give (see `sink::kafka::topics`).
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        super::topics::validate(self)
    }

    /// Parses `key=value` (for `--kafka-property`). The value may be a
    /// secret: an error never shows it.
    pub fn parse_property(s: &str) -> Result<(String, String), String> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            Some(_) => Err("a property has no key before '='".into()),
            None => Err("a property is not key=value (no '=')".into()),
        }
    }
}

/// Why the Kafka sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// The producer could not be created (a bad property, most likely).
    #[error("cannot create the Kafka producer: {0}")]
    Config(KafkaError),
    /// librdkafka refused a record.
    #[error("producing to Kafka topic {topic}")]
    Produce {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// A record was not delivered.
    #[error("Kafka did not take a record of the transaction ending at {lsn}")]
    Delivery {
        /// End LSN of its transaction.
        lsn: Lsn,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// A step of the transactional producer failed (`--kafka-exactly-once`).
    #[error("Kafka transaction ({step}, through the source transaction ending at {lsn})")]
    Transaction {
        /// init, begin, commit or abort.
        step: &'static str,
        /// End LSN of the last source transaction in it (0/0 before any).
        lsn: Lsn,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// Blue's catalog could not be read (a table's primary key, the
    /// published tables).
    #[error("reading {what} on blue")]
    Catalog {
        /// What was being read.
        what: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// librdkafka's wake-ups for delivery reports could not be set up or
    /// read (a pipe; see `sink::kafka::deliveries`).
    #[error("waiting for Kafka's delivery reports")]
    Wakeup(#[source] std::io::Error),
    /// A task of the sink panicked (a bug: please report it with the log).
    #[error("the Kafka {0} panicked")]
    Panicked(&'static str),
    /// A table's topic is not one Kafka accepts, or another's too
    /// (see `sink::kafka::topics`).
    #[error("no Kafka topic for table {table}: {reason}")]
    Topic {
        /// The table, quoted.
        table: String,
        /// What is wrong and with which other table.
        reason: String,
    },
    /// The position topic could not be read back (`--kafka-exactly-once`).
    #[error("reading teal's position from Kafka topic {topic}: {reason}")]
    Position {
        /// The position topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
}

impl KafkaSinkError {
    /// What kind of failure it is (see [`crate::error::policy`]): a producer
    /// that cannot be made will not be next time either; what librdkafka
    /// gave up is retried from the slot.
    pub fn kind(&self) -> crate::error::Kind {
        match self {
            KafkaSinkError::Config(_) => crate::error::Kind::KafkaSetup,
            KafkaSinkError::Panicked(_) => crate::error::Kind::Bug,
            KafkaSinkError::Topic { .. } => crate::error::Kind::Setup,
            _ => crate::error::Kind::KafkaDelivery,
        }
    }
}

/// The producer: idempotent, `acks=all`; transactional with exactly-once.
pub(super) fn producer(
    config: &KafkaConfig,
    slot: &str,
) -> Result<super::deliveries::KafkaProducer, KafkaSinkError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("client.id", "teal");
    if config.exactly_once {
        // Records time out with their transaction (transaction.timeout.ms),
        // which then aborts; the stream restarts from Kafka's progress.
        c.set("transactional.id", format!("teal-{slot}"));
    } else {
        // Never give a record up: an outage pauses confirmation instead.
        c.set("message.timeout.ms", "0");
    }
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c.create_with_context(super::acker::Counting::default())
        .map(std::sync::Arc::new)
        .map_err(KafkaSinkError::Config)
}

/// Properties the progress reader takes from `--kafka-property` (security
/// and connection settings; producer settings would only draw warnings).
pub(super) fn consumer_property(key: &str) -> bool {
    [
        "security.",
        "sasl.",
        "ssl.",
        "ssl_",
        "client.dns",
        "socket.",
        "broker.",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}
