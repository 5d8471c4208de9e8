//! `teal stream` running in-process against twins, with its monitor.

use std::sync::Arc;
use std::time::Duration;

use teal::apply::ApplyStats;
use teal::monitor::Monitor;
use teal::ops::stream::{self, StreamConfig, StreamError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::tap::init_logging;
use super::twins::Twins;

/// How long a stream gets to stop.
const STOP_WAIT: Duration = Duration::from_secs(60);

pub struct Running {
    pub task: JoinHandle<Result<Arc<ApplyStats>, StreamError>>,
    pub shutdown: CancellationToken,
    pub monitor: Arc<Monitor>,
}

impl Running {
    /// Starts `teal stream` and waits until it streams from the slot.
    pub async fn start(twins: &Twins, config: StreamConfig) -> Running {
        init_logging();
        let monitor = Arc::new(Monitor::new(config.apply.slot.clone()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stream::run_monitored(
            config,
            shutdown.clone(),
            Arc::clone(&monitor),
        ));
        twins.wait_streaming().await;
        Running {
            task,
            shutdown,
            monitor,
        }
    }

    /// Stops it (SIGTERM's way) and returns its counters.
    pub async fn stop(self) -> Arc<ApplyStats> {
        self.shutdown.cancel();
        tokio::time::timeout(STOP_WAIT, self.task)
            .await
            .expect("stream stopped in time")
            .expect("stream task")
            .expect("stream ended without error")
    }

    /// The error the stream stopped with by itself.
    pub async fn failure(self) -> StreamError {
        tokio::time::timeout(STOP_WAIT, self.task)
            .await
            .expect("stream stopped in time")
            .expect("stream task")
            .expect_err("stream failed")
    }
}
