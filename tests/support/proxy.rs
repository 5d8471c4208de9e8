//! A TCP proxy in front of a test server, for link faults. `freeze_open`
//! makes every connection open at that moment go silent (bytes held both
//! ways, nothing closed: a network partition or a dead NAT entry looks like
//! that to both ends), while connections made later pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub port: u16,
    /// The upstream superuser's password.
    password: String,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: &teal::local::Cluster) -> Proxy {
        let (upstream_port, password) = (upstream.port, upstream.password().to_owned());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (frozen, counter, stopped) =
            (Arc::clone(&frozen_below), Arc::clone(&next), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let (frozen, stopped) = (Arc::clone(&frozen), stopped.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let is_frozen = move || id < frozen.load(Ordering::SeqCst);
                    tokio::select! {
                        () = pump(cr, sw, is_frozen.clone()) => {}
                        () = pump(sr, cw, is_frozen) => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            password,
            frozen_below,
            next,
            stop,
        }
    }

    /// The upstream server through this proxy, as `Cluster::url` gives it.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
            self.password, self.port
        )
    }

    /// Every connection open now goes silent for good; later ones pass.
    pub fn freeze_open(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies `from` to `to` until either end closes; once frozen, holds what
/// it read and reads no more (keeping both sockets open).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen() {
            return std::future::pending().await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen() {
            return std::future::pending().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
