//! The CopyBoth loop of one replication session.
//!
//! ```text
//! socket ─read (big chunks)─▶ XLogData 'w' / keepalive 'k' ─▶ batch ─▶ channel (bounded)
//!    ▲                                                          │ while the channel is full,
//!    └── standby status 'r' (write, flush, apply) ◀─────────────┘ status updates continue
//! ```
//!
//! A status update goes out at once when a keepalive asks for one, soon after
//! the flush LSN moves (at most every [`MIN_STATUS_GAP`]), and at least every
//! `status_interval`. The flush position is only ever what consumers
//! confirmed; the write position is the furthest WAL end blue reported.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postgres_protocol::message::backend::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::lsn::{Lsn, PgTimestamp};
use crate::progress::Liveness;

use super::SourceEvent;
use super::conn::{CLOSE_TIMEOUT, Connection, Frame, server_error};
use super::error::SourceError;

/// Shortest gap between two status updates sent because the flush LSN moved.
pub(crate) const MIN_STATUS_GAP: Duration = Duration::from_millis(100);

/// Reads from blue are paced: at most one read per `READ_PACE`, of at most
/// `ReadPacer::budget` bytes. Blue's walsender sends one small packet per
/// message while its peer's window is open (it flushes after every message),
/// and that costs it about twice the CPU per row as when the window is
/// closed and its messages coalesce in the kernel's send queue. A consumer
/// that drains the socket as fast as it can keeps the window open and makes
/// the walsender, the bottleneck, twice as slow (measured: 8-10 us/row against
/// 4-5 for PostgreSQL's own subscriber, which is slow enough to keep the
/// window closed). So the budget grows while the socket is found full (the
/// walsender is ahead and coalescing) and shrinks while it is not, keeping
/// the receive queue near full.
const READ_PACE: Duration = Duration::from_millis(1);

/// On shutdown, how long consumers get to finish what they received before
/// the final status update is sent anyway.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a session's stream ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// SIGINT/SIGTERM or the caller's cancellation.
    Shutdown,
    /// The receiving side of the channel was dropped.
    ConsumerGone,
}

pub(crate) struct StreamLoop<'a> {
    conn: Connection,
    /// Taken (closing the channel) when shutting down.
    out: &'a mut Option<mpsc::Sender<Vec<SourceEvent>>>,
    flush: &'a mut watch::Receiver<Lsn>,
    shutdown: &'a CancellationToken,
    status_interval: Duration,
    /// Furthest WAL end blue reported (the "write" position).
    received: Lsn,
    last_status: Instant,
    flush_moved: bool,
    pacer: ReadPacer,
    /// `--replication-timeout`.
    timeout: Option<Duration>,
    /// When blue was last heard: bytes read, or the end of a wait for room
    /// downstream (time spent not reading is not blue's silence).
    heard: Instant,
    /// A status update asking blue for a reply went out since `heard`.
    pinged: bool,
    liveness: Arc<Liveness>,
}

impl<'a> StreamLoop<'a> {
    pub(crate) fn new(
        conn: Connection,
        out: &'a mut Option<mpsc::Sender<Vec<SourceEvent>>>,
        flush: &'a mut watch::Receiver<Lsn>,
        shutdown: &'a CancellationToken,
        config: &SourceConfig,
        start_lsn: Lsn,
        liveness: Arc<Liveness>,
    ) -> Self {
        StreamLoop {
            conn,
            out,
            flush,
            shutdown,
            status_interval: config.status_interval,
            received: start_lsn,
            last_status: Instant::now(),
            flush_moved: false,
            pacer: ReadPacer::new(),
            timeout: config.replication_timeout,
            heard: Instant::now(),
            pinged: false,
            liveness,
        }
    }

    /// Streams until shutdown, the consumer leaving, or an error; always
    /// closes the connection. On shutdown, consumers first finish what they
    /// received, so the final status update confirms all of it.
    pub(crate) async fn run(mut self) -> Result<StreamEnd, SourceError> {
        let result = self.pump().await;
        match result {
            Ok(end) => {
                if end == StreamEnd::Shutdown {
                    self.drain().await;
                }
                self.stop().await;
                Ok(end)
            }
            Err(e) => {
                self.conn.close().await;
                Err(e)
            }
        }
    }

    async fn pump(&mut self) -> Result<StreamEnd, SourceError> {
        let paced = self.conn.is_tcp();
        let mut next_read_at = Instant::now();
        loop {
            let (batch, reply_requested) = self.drain_buffered()?;
            if !batch.is_empty() && !self.send(batch).await? {
                return Ok(StreamEnd::ConsumerGone);
            }
            if reply_requested {
                self.send_status(false).await?;
            }
            let deadline = self.next_status_at();
            let silence = self.silence_check_at();
            let budget = if paced { self.pacer.budget } else { usize::MAX };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(StreamEnd::Shutdown),
                read = async {
                    tokio::time::sleep_until(next_read_at).await;
                    self.conn.fill_at_most(budget).await
                } => {
                    let n = read?;
                    self.heard_at(Instant::now());
                    if paced {
                        let waiting = n + self.conn.unread();
                        self.conn.drain_ready(budget - n)?;
                        self.pacer.observe(waiting);
                        next_read_at = Instant::now() + READ_PACE;
                    }
                }
                changed = self.flush.changed() => {
                    if changed.is_err() {
                        return Ok(StreamEnd::ConsumerGone);
                    }
                    self.flush_moved = true;
                }
                () = tokio::time::sleep_until(deadline) => self.send_status(false).await?,
                () = sleep_until_some(silence) => self.check_silence().await?,
            }
        }
    }

    /// Blue was heard at `at`.
    fn heard_at(&mut self, at: Instant) {
        self.heard = self.heard.max(at);
        self.pinged = false;
        self.liveness.heard(self.heard.into_std());
    }

    /// When blue's silence is next looked at: half the timeout after it was
    /// last heard (to ask for a reply), then the whole timeout.
    fn silence_check_at(&self) -> Option<Instant> {
        let t = self.timeout?;
        Some(self.heard + if self.pinged { t } else { t / 2 })
    }

    /// What PostgreSQL's walreceiver does with `wal_receiver_timeout`: after
    /// half of it without a word from blue, a status update that asks for a
    /// reply; after all of it, the session is over.
    async fn check_silence(&mut self) -> Result<(), SourceError> {
        let Some(t) = self.timeout else {
            return Ok(());
        };
        if self.heard.elapsed() >= t {
            return Err(SourceError::Timeout {
                host: self.conn.host().to_owned(),
                doing: "streaming changes",
                after: t,
            });
        }
        if !self.pinged {
            tracing::debug!(
                silent_ms = self.heard.elapsed().as_millis() as u64,
                "blue is silent; asking for a reply"
            );
            self.send_status(true).await?;
            self.pinged = true;
        }
        Ok(())
    }

    fn next_status_at(&self) -> Instant {
        if self.flush_moved {
            self.last_status + MIN_STATUS_GAP
        } else {
            self.last_status + self.status_interval
        }
    }

    /// Frames already read, as one batch; and whether blue asked for a reply.
    fn drain_buffered(&mut self) -> Result<(Vec<SourceEvent>, bool), SourceError> {
        let mut batch = Vec::new();
        let mut reply = false;
        while let Some(frame) = self.conn.try_frame()? {
            match frame {
                Frame::CopyData(data) => match data.first() {
                    Some(b'w') => {
                        let (wal_start, wal_end, send_time) = self.xlog_header(&data)?;
                        self.received = self.received.max(wal_end);
                        batch.push(SourceEvent::XLogData {
                            wal_start,
                            wal_end,
                            send_time,
                            data: data.slice(25..),
                        });
                    }
                    Some(b'k') => {
                        let (wal_end, send_time, reply_requested) = self.keepalive(&data)?;
                        self.received = self.received.max(wal_end);
                        reply |= reply_requested;
                        batch.push(SourceEvent::Keepalive { wal_end, send_time });
                    }
                    other => {
                        return Err(self.protocol(format!(
                            "unknown CopyData message type {:?} in the replication stream",
                            other.map(|b| char::from(*b))
                        )));
                    }
                },
                Frame::Message(Message::ErrorResponse(body)) => {
                    return Err(SourceError::Server {
                        context: "streaming changes from blue".into(),
                        error: Box::new(server_error(body.fields())),
                    });
                }
                // A shutting-down walsender ends the stream with CommandComplete
                // once the client confirmed everything (WalSndDone), or CopyDone.
                Frame::Message(Message::CopyDone | Message::CommandComplete(_)) => {
                    return Err(SourceError::Io {
                        host: self.conn.host().to_owned(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "blue ended the replication stream (server shutting down?)",
                        ),
                    });
                }
                Frame::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                Frame::Message(_) | Frame::CopyBoth => {
                    return Err(
                        self.protocol("unexpected message in the replication stream".into())
                    );
                }
            }
        }
        Ok((batch, reply))
    }

    fn protocol(&self, what: String) -> SourceError {
        SourceError::Protocol {
            host: self.conn.host().to_owned(),
            what,
        }
    }

    /// XLogData: 'w', Int64 start, Int64 end, Int64 send time, then the payload.
    fn xlog_header(&self, data: &Bytes) -> Result<(Lsn, Lsn, PgTimestamp), SourceError> {
        let field = |i: usize| {
            data.get(1 + 8 * i..9 + 8 * i)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
        };
        match (field(0), field(1), field(2)) {
            (Some(start), Some(end), Some(time)) => {
                Ok((Lsn(start), Lsn(end), PgTimestamp(time as i64)))
            }
            _ => Err(self.protocol(format!("XLogData message of {} bytes", data.len()))),
        }
    }

    /// Primary keepalive: 'k', Int64 WAL end, Int64 send time, Byte1 reply requested.
    fn keepalive(&self, data: &Bytes) -> Result<(Lsn, PgTimestamp, bool), SourceError> {
        if data.len() != 18 {
            return Err(self.protocol(format!("keepalive message of {} bytes", data.len())));
        }
        let u64_at = |at: usize| {
            data.get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        };
        Ok((Lsn(u64_at(1)), PgTimestamp(u64_at(9) as i64), data[17] != 0))
    }

    /// Closes the channel, then waits until every consumer is done (the flush
    /// watch closes) or [`DRAIN_TIMEOUT`] passes.
    async fn drain(&mut self) {
        drop(self.out.take());
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            tokio::select! {
                changed = self.flush.changed() => if changed.is_err() {
                    return;
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("consumers did not finish within {DRAIN_TIMEOUT:?} of shutdown; confirming what they finished");
                    return;
                }
            }
        }
    }

    /// Sends a batch; while the channel is full, keeps the session alive.
    /// Returns false when the consumer is gone.
    async fn send(&mut self, batch: Vec<SourceEvent>) -> Result<bool, SourceError> {
        // A clone for the wait: the status updates below need `self` mutably.
        let Some(out) = self.out.clone() else {
            return Ok(false);
        };
        let waiting_since = Instant::now();
        loop {
            let deadline = self.last_status + self.status_interval;
            tokio::select! {
                permit = out.reserve() => {
                    // Blue's silence is only counted while teal reads.
                    self.heard_at(self.heard + waiting_since.elapsed());
                    return Ok(match permit {
                        Ok(permit) => {
                            permit.send(batch);
                            true
                        }
                        Err(_) => false,
                    });
                }
                () = tokio::time::sleep_until(deadline) => self.send_status(false).await?,
                () = self.shutdown.cancelled() => return Ok(false),
            }
        }
    }

    /// Standby status update: 'r', write, flush, apply, clock, reply-requested.
    async fn send_status(&mut self, reply: bool) -> Result<(), SourceError> {
        let flush_lsn = *self.flush.borrow_and_update();
        let write_lsn = self.received.max(flush_lsn);
        let mut msg = [0u8; 34];
        msg[0] = b'r';
        msg[1..9].copy_from_slice(&write_lsn.0.to_be_bytes());
        msg[9..17].copy_from_slice(&flush_lsn.0.to_be_bytes());
        msg[17..25].copy_from_slice(&flush_lsn.0.to_be_bytes());
        msg[25..33].copy_from_slice(&PgTimestamp::now().0.to_be_bytes());
        msg[33] = u8::from(reply);
        self.conn.queue_copy_data(&msg)?;
        match self.timeout {
            // A peer that stops reading fills the socket: writes wait too.
            Some(t) => tokio::time::timeout(t, self.conn.flush())
                .await
                .map_err(|_| SourceError::Timeout {
                    host: self.conn.host().to_owned(),
                    doing: "sending a status update",
                    after: t,
                })??,
            None => self.conn.flush().await?,
        }
        self.last_status = Instant::now();
        self.flush_moved = false;
        tracing::trace!(write_lsn = %write_lsn, flush_lsn = %flush_lsn, "sent standby status update");
        Ok(())
    }

    /// Final status update, CopyDone, wait for blue to end the copy, Terminate.
    async fn stop(mut self) {
        let graceful = async {
            self.send_status(false).await?;
            self.conn.queue_copy_done();
            self.conn.flush().await?;
            loop {
                match self.conn.next_frame().await? {
                    Frame::Message(Message::ReadyForQuery(_)) => return Ok(()),
                    Frame::Message(Message::ErrorResponse(body)) => {
                        return Err(SourceError::Server {
                            context: "ending the replication stream".into(),
                            error: Box::new(server_error(body.fields())),
                        });
                    }
                    // Data sent before blue saw our CopyDone, then its CopyDone and CommandComplete.
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, graceful).await {
            Ok(Ok(())) => {
                tracing::debug!(flush_lsn = %*self.flush.borrow(), "replication stream stopped cleanly")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::Report(&e), "replication stream did not stop cleanly")
            }
            Err(_) => tracing::warn!("blue did not end the replication stream in time; closing"),
        }
        self.conn.close().await;
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How much one paced read may take (see [`READ_PACE`]).
#[derive(Debug)]
struct ReadPacer {
    budget: usize,
}

impl ReadPacer {
    /// Smallest budget: 32 KiB per millisecond is about 200,000 small rows a
    /// second, below what a walsender sends when it is slow, so a stream in
    /// the slow regime fills the socket and is pushed out of it.
    const MIN: usize = 32 * 1024;
    /// Largest budget: one receive buffer's worth per millisecond (about
    /// 1 GB/s, beyond any walsender). A budget is also the most one batch
    /// to the decoder holds, so this bounds what the source channel holds.
    const MAX: usize = super::conn::RECEIVE_BUFFER as usize;
    /// The socket counts as full (blue's window closed) from this many
    /// unread bytes: the kernel doubles the receive buffer asked for and
    /// lets about that much payload wait.
    const FULL: usize = super::conn::RECEIVE_BUFFER as usize * 3 / 2;

    fn new() -> Self {
        ReadPacer { budget: Self::MIN }
    }

    /// A read found `waiting` bytes in the socket.
    fn observe(&mut self, waiting: usize) {
        self.budget = if waiting >= Self::FULL {
            (self.budget + self.budget / 4).min(Self::MAX)
        } else {
            (self.budget - self.budget / 8).max(Self::MIN)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::ReadPacer;

    #[test]
    fn pacer_grows_while_full_and_shrinks_back_to_its_floor() {
        let mut p = ReadPacer::new();
        for _ in 0..100 {
            p.observe(ReadPacer::FULL);
        }
        assert_eq!(p.budget, ReadPacer::MAX);
        p.observe(0);
        assert!(p.budget < ReadPacer::MAX);
        for _ in 0..100 {
            p.observe(ReadPacer::FULL - 1);
        }
        assert_eq!(p.budget, ReadPacer::MIN);
    }
}
