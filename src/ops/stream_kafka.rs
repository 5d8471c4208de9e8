//! The Kafka sink of one `teal stream` attempt: its scope (producer name,
//! transaction size, what it checks at start) and the task that runs it on
//! the input the fan-out gives it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ops::stream::StreamConfig;
use crate::pipeline::KafkaInput;
use crate::sink::kafka::{KafkaConfig, KafkaSinkError};

/// The Kafka sink of one attempt, started on its input.
pub(crate) struct KafkaRun {
    pub(crate) config: KafkaConfig,
    pub(crate) scope: crate::sink::kafka::Scope,
    pub(crate) consumer: crate::progress::Consumer,
    pub(crate) stats: Arc<crate::sink::kafka::KafkaStats>,
    pub(crate) lag: Option<Arc<crate::progress::Lag>>,
}

impl KafkaRun {
    pub(crate) async fn run(self, input: KafkaInput) -> Result<(), KafkaSinkError> {
        let KafkaRun {
            config,
            scope,
            consumer,
            stats,
            lag,
        } = self;
        match input {
            KafkaInput::Owned(events) => {
                crate::sink::kafka::run(config, scope, consumer, events, stats, lag).await
            }
            KafkaInput::Shared(events) => {
                crate::sink::kafka::run(config, scope, consumer, events, stats, lag).await
            }
        }
    }
}

/// The Kafka sink's producer name and transaction size (`--kafka-transaction-max-*`).
pub(crate) fn kafka_scope(config: &StreamConfig) -> crate::sink::kafka::Scope {
    crate::sink::kafka::Scope {
        slot: config.source.slot.clone(),
        max_records: config
            .kafka
            .as_ref()
            .map_or(config.apply.batch_max_changes, |k| {
                k.transaction_max_records
            }),
        max_delay: config
            .kafka
            .as_ref()
            .map_or(config.apply.batch_max_delay, |k| k.transaction_max_delay),
        blue: config.source.conninfo.clone(),
        publications: config.source.publications.clone(),
        tables: config.assembler.tables.clone(),
        ledger: None,
        dropped: CancellationToken::new(),
    }
}
