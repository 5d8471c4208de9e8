//! Delivery reports served on the sink's own task, not on a polling
//! thread of their own.
//!
//! ```text
//! broker thread ──report──▶ librdkafka's main queue ──(empty → not empty) one byte──▶ pipe
//! sink task: after each batch of events, and whenever the pipe is readable
//!            ──serve: poll until the queue is empty──▶ Counting::delivery
//! ```
//!
//! A polling thread (rdkafka's `ThreadedProducer`) frees every record on a
//! thread other than the one that allocated it, so each record's
//! allocation and librdkafka's message count contend for locks with the
//! sink, and the thread wakes once per report: a fifth of the sink's CPU
//! in the Kafka bench. Served here, they are freed where they were made.
//! librdkafka writes to the pipe when a report arrives in a queue nobody
//! served since its last write, so an idle sink sleeps until Kafka answers.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::acker::Counting;
use super::config::KafkaSinkError;

/// The producer; its delivery reports are served by [`Deliveries`].
pub(super) type KafkaProducer = Arc<BaseProducer<Counting>>;

/// Serves `producer`'s delivery reports (see the module documentation).
pub(super) struct Deliveries {
    /// A handle on librdkafka's main queue (where reports arrive), kept
    /// for the queue's length and to turn the wake-ups off.
    queue: Queue,
    /// The pipe's read end, registered with the runtime.
    wake: AsyncFd<std::fs::File>,
    /// The pipe's write end, librdkafka's to write to.
    _write: OwnedFd,
    /// Declared last: dropped after `Drop::drop` has released the queue.
    producer: KafkaProducer,
}

/// librdkafka's queue handle.
struct Queue(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka's queue handles may be used from any thread (its
// queue operations lock the queue).
unsafe impl Send for Queue {}
// SAFETY: as above; `Deliveries` only calls thread-safe functions on it.
unsafe impl Sync for Queue {}

impl Deliveries {
    /// Turns on librdkafka's wake-ups for `producer`'s reports.
    pub(super) fn new(producer: &KafkaProducer) -> Result<Deliveries, KafkaSinkError> {
        let (read, write) = pipe().map_err(KafkaSinkError::Wakeup)?;
        // SAFETY: the File owns the descriptor: it stays open, the same
        // pipe, for as long as the AsyncFd (which owns the File) lives.
        let wake = unsafe {
            AsyncFd::register_with_interest(std::fs::File::from(read), Interest::READABLE)
        }
        .map_err(|e| KafkaSinkError::Wakeup(e.into()))?;
        // SAFETY: the client pointer is valid while `producer` lives, and
        // `Deliveries` holds `producer` until it has destroyed the handle.
        let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        let queue = Queue(NonNull::new(queue).ok_or_else(|| {
            KafkaSinkError::Wakeup(std::io::Error::other("librdkafka has no main queue"))
        })?);
        const BYTE: &[u8] = b"r";
        // SAFETY: the queue handle is valid; librdkafka copies the payload;
        // the write end stays open until `Drop` turned the wake-ups off.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(
                queue.0.as_ptr(),
                write.as_raw_fd(),
                BYTE.as_ptr().cast(),
                BYTE.len(),
            );
        }
        Ok(Deliveries {
            queue,
            wake,
            _write: write,
            producer: Arc::clone(producer),
        })
    }

    /// Serves every report queued now (delivery callbacks run here).
    pub(super) fn serve(&self) {
        // Polled at least once: a poll marks the queue served, so the next
        // report writes to the pipe again.
        loop {
            self.producer.poll(Duration::ZERO);
            // SAFETY: the queue handle is valid while `self` lives.
            if unsafe { rd::rd_kafka_queue_length(self.queue.0.as_ptr()) } == 0 {
                return;
            }
        }
    }

    /// Runs `work` while serving reports as they arrive: whatever waits
    /// on librdkafka (the acker, a commit's or an abort's flush) needs
    /// them served. Should the pipe fail, reports are served every 10 ms
    /// instead.
    pub(super) async fn serving<T>(&self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        tokio::select! {
            done = &mut work => return done,
            e = self.run() => tracing::warn!(
                error = %crate::error::Report(&e),
                "serving Kafka's delivery reports every 10 ms instead"
            ),
        }
        loop {
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep(Duration::from_millis(10)) => self.serve(),
            }
        }
    }

    /// Serves reports as they arrive, for as long as it is polled; returns
    /// only if the pipe fails.
    async fn run(&self) -> KafkaSinkError {
        loop {
            let mut ready = match self.wake.readable().await {
                Ok(ready) => ready,
                Err(e) => return KafkaSinkError::Wakeup(e),
            };
            let mut buf = [0u8; 64];
            loop {
                match ready.try_io(|f| {
                    let mut pipe = f.get_ref();
                    pipe.read(&mut buf)
                }) {
                    Ok(Ok(n)) if n > 0 => continue,
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(Err(e)) => return KafkaSinkError::Wakeup(e),
                    // Would block: readiness cleared, the pipe is empty.
                    Err(_) => break,
                }
            }
            self.serve();
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        // SAFETY: the handle is valid; turning the wake-ups off takes the
        // queue's lock, so librdkafka writes nothing once it returns and
        // the pipe may close; the handle is destroyed once, here, while
        // the producer (a later field) still lives.
        unsafe {
            rd::rd_kafka_queue_io_event_enable(self.queue.0.as_ptr(), -1, std::ptr::null(), 0);
            rd::rd_kafka_queue_destroy(self.queue.0.as_ptr());
        }
    }
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are open descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::Producer as _;

    use super::super::acker::{Counting, Pending, reported, send, settled};
    use super::*;

    /// A producer to `mock` with `properties`, and its report server.
    fn producer_to(
        mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        properties: &[(&str, &str)],
    ) -> (KafkaProducer, Deliveries) {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", mock.bootstrap_servers());
        for (k, v) in properties {
            config.set(*k, *v);
        }
        let producer: KafkaProducer = Arc::new(
            config
                .create_with_context(Counting::default())
                .expect("a producer"),
        );
        let deliveries = Deliveries::new(&producer).expect("wake-ups");
        (producer, deliveries)
    }

    #[tokio::test]
    async fn reports_are_served_when_they_arrive_not_before() {
        let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
        let (producer, deliveries) = producer_to(&mock, &[("linger.ms", "0")]);
        let woken = settled(&producer);
        let topic: Arc<str> = "t".into();
        let mut pending = Pending::position(crate::lsn::Lsn(1), true);
        send(&producer, &mut pending.records, &topic, None, Some(b"x"))
            .await
            .expect("enqueued");
        let pending = [pending];
        // Nobody serves the queue: the report waits in it.
        let unserved = tokio::time::timeout(Duration::from_millis(500), reported(&woken, &pending));
        assert!(unserved.await.is_err(), "reported without being served");
        // The pipe wakes the idle sink once the report is queued.
        let served = deliveries.serving(reported(&woken, &pending));
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("the report was served");
        // Later reports wake it again (the queue was marked served).
        let mut next = Pending::position(crate::lsn::Lsn(2), true);
        send(&producer, &mut next.records, &topic, None, Some(b"y"))
            .await
            .expect("enqueued");
        let next = [next];
        let served = deliveries.serving(reported(&woken, &next));
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("the second report was served");
        drop(deliveries);
        assert_eq!(Arc::strong_count(&producer), 1, "the producer is released");
    }

    /// librdkafka's abort (and commit) flushes: it waits for the
    /// application to serve the reports of what is in flight.
    #[tokio::test]
    async fn an_abort_completes_while_reports_are_served() {
        let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
        let properties = [("transactional.id", "teal-test"), ("linger.ms", "1000")];
        let (producer, deliveries) = producer_to(&mock, &properties);
        let p = Arc::clone(&producer);
        tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("init");
        let topic: Arc<str> = "t".into();
        let abort = |timeout| {
            let p = Arc::clone(&producer);
            tokio::task::spawn_blocking(move || p.abort_transaction(timeout))
        };
        let produce = async |n: u8| {
            producer.begin_transaction().expect("begin");
            let mut pending = Pending::position(crate::lsn::Lsn(1), true);
            send(&producer, &mut pending.records, &topic, None, Some(&[n]))
                .await
                .expect("enqueued");
        };
        // Nobody serves: the abort's flush gives up.
        produce(1).await;
        let unserved = abort(Duration::from_secs(2)).await.unwrap();
        assert!(unserved.is_err(), "aborted without its reports served");
        deliveries.serve();
        let p = Arc::clone(&producer);
        tokio::task::spawn_blocking(move || p.abort_transaction(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("the abort completes once served");
        // Served meanwhile: it completes.
        produce(2).await;
        let served = deliveries.serving(abort(Duration::from_secs(30)));
        tokio::time::timeout(Duration::from_secs(20), served)
            .await
            .expect("the abort completed")
            .unwrap()
            .expect("aborted");
    }
}
