//! One frontend/backend protocol connection on tokio, framed with
//! `postgres-protocol`.
//!
//! ```text
//! connect ─▶ [SSLRequest ─▶ TLS handshake] ─▶ StartupMessage ─▶ auth ─▶ ReadyForQuery
//!         ─▶ simple queries / replication commands ─▶ [CopyBoth stream]
//! ```
//!
//! Startup sets what the text output of every type depends on (DateStyle,
//! IntervalStyle, extra_float_digits, TimeZone, bytea_output, UTF-8), the way
//! PostgreSQL's own subscriber does, so a blue with unusual defaults cannot
//! change the values teal receives.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use crate::config::{ConnInfo, Host, HostAddr, SslMode};

use super::error::{ServerError, SourceError};
use super::frame::frame_header;
use crate::tls;

/// Bytes of read buffer allocated at a time. The frames read are slices of
/// it, so a chunk lives as long as any change still holds one of its
/// values: smaller chunks hold less memory idle behind a few live changes.
/// The read pacer (`stream.rs`) still reads up to its budget per turn, in
/// as many reads as it takes, so blue's walsender fills its socket buffer
/// and sends big packets.
const READ_CHUNK: usize = 256 * 1024;

pub(super) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A backend message, with the two copy-mode messages framed here
/// (`postgres-protocol` does not parse CopyBothResponse).
pub(crate) enum Frame {
    /// CopyData payload.
    CopyData(Bytes),
    /// CopyBothResponse: START_REPLICATION succeeded.
    CopyBoth,
    /// Anything else.
    Message(Message),
}

/// One text-format result row of a simple query.
#[derive(Debug)]
pub(crate) struct Row(Vec<Option<String>>);

impl Row {
    /// Column `i`, `None` for NULL or past the end.
    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        self.0.get(i).and_then(|v| v.as_deref())
    }
}

/// An open, authenticated connection.
pub(crate) struct Connection {
    /// Whether the server authenticated this session (longer messages are
    /// allowed from then on, see `frame::frame_header`).
    pub(super) authenticated: bool,
    pub(super) stream: Stream,
    read_buf: BytesMut,
    pub(super) write_buf: BytesMut,
    pub(super) host: String,
    parameters: HashMap<String, String>,
    pub(super) tls: bool,
}

impl Connection {
    /// Opens a logical replication session (`replication=database`, which
    /// also accepts plain SQL) on the first host that accepts, as libpq does.
    pub async fn connect(conninfo: &ConnInfo) -> Result<Connection, SourceError> {
        let mut last = None;
        for host in &conninfo.hosts {
            let attempt = connect_host(conninfo, host);
            let result = match conninfo.connect_timeout {
                Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
                    Err(SourceError::ConnectTimeout {
                        host: host.to_string(),
                        secs: t.as_secs(),
                    })
                }),
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    tracing::debug!(host = %host, error = %crate::error::Report(&e), "connection attempt failed");
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| SourceError::Setup("the connection string lists no host".into())))
    }

    /// Lets the kernel end the connection when what teal sent stays
    /// unacknowledged for `timeout` (`TCP_USER_TIMEOUT`), and probe an idle
    /// one from half of it on: a peer that vanished (host down, a cable, a
    /// NAT entry dropped) is noticed even while teal sends nothing.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        let socket = match &self.stream {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::Unix(_) => return,
        };
        let Some(timeout) = timeout else { return };
        let keepalive = socket2::TcpKeepalive::new()
            .with_time((timeout / 2).max(Duration::from_secs(1)))
            .with_interval((timeout / 6).max(Duration::from_secs(1)));
        let socket = socket2::SockRef::from(socket);
        let set = socket
            .set_tcp_keepalive(&keepalive)
            .and_then(|()| socket.set_tcp_user_timeout(Some(timeout)));
        if let Err(e) = set {
            tracing::debug!(host = %self.host, error = %crate::error::Report(&e), "cannot set TCP keepalive and user timeout");
        }
    }

    /// Whether the session runs over TCP (with or without TLS).
    pub(crate) fn is_tcp(&self) -> bool {
        !matches!(self.stream, Stream::Unix(_))
    }

    /// Bytes waiting unread in the socket's receive queue (TCP only).
    pub(crate) fn unread(&self) -> usize {
        use std::os::fd::AsRawFd;
        let fd = match &self.stream {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.get_ref().0.as_raw_fd(),
            Stream::Unix(_) => return 0,
        };
        let mut value: libc::c_int = 0;
        // SAFETY: FIONREAD on an open socket writes one c_int.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, std::ptr::addr_of_mut!(value)) };
        if rc != 0 {
            0
        } else {
            usize::try_from(value).unwrap_or(0)
        }
    }

    /// Host and port, for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A parameter the server reported (`server_version`, `integer_datetimes`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version (10, 11, ... 18), from `server_version`.
    pub fn server_major_version(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    fn io_error(&self, source: io::Error) -> SourceError {
        SourceError::Io {
            host: self.host.clone(),
            source,
        }
    }

    pub(super) fn protocol(&self, what: impl Into<String>) -> SourceError {
        SourceError::Protocol {
            host: self.host.clone(),
            what: what.into(),
        }
    }

    /// Reads more bytes from the socket (cancel-safe); returns how many.
    pub(crate) async fn fill(&mut self) -> Result<usize, SourceError> {
        self.fill_at_most(usize::MAX).await
    }

    /// Like [`fill`](Self::fill), reading at most `limit` bytes.
    pub(crate) async fn fill_at_most(&mut self, limit: usize) -> Result<usize, SourceError> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let mut buf = bytes::BufMut::limit(&mut self.read_buf, limit);
        match self.stream.read_buf(&mut buf).await {
            Ok(0) => Err(self.io_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ))),
            Ok(n) => Ok(n),
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// Reads whatever more the socket holds right now, without waiting, up
    /// to about `limit` bytes; returns how many were read.
    pub(crate) fn drain_ready(&mut self, limit: usize) -> Result<usize, SourceError> {
        use futures_util::FutureExt;
        let mut total = 0;
        while total < limit {
            match self.fill_at_most(limit - total).now_or_never() {
                None => break,
                Some(read) => total += read?,
            }
        }
        Ok(total)
    }

    /// The next complete frame already buffered, without I/O.
    pub(crate) fn try_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let (tag, total) = match frame_header(&self.read_buf, self.authenticated) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(what) => return Err(self.protocol(what)),
        };
        if self.read_buf.len() < total {
            self.read_buf.reserve(total - self.read_buf.len());
            return Ok(None);
        }
        match tag {
            b'd' => {
                let mut frame = self.read_buf.split_to(total);
                frame.advance(5);
                Ok(Some(Frame::CopyData(frame.freeze())))
            }
            b'W' => {
                self.read_buf.advance(total);
                Ok(Some(Frame::CopyBoth))
            }
            _ => match Message::parse(&mut self.read_buf) {
                Ok(Some(m)) => Ok(Some(Frame::Message(m))),
                Ok(None) => Ok(None),
                Err(e) => Err(self.protocol(e.to_string())),
            },
        }
    }

    /// The next frame, reading as needed. Notices and parameter changes are
    /// handled here and not returned.
    pub(crate) async fn next_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            match self.try_frame()? {
                Some(Frame::Message(Message::NoticeResponse(body))) => {
                    log_notice(&self.host, body.fields());
                }
                Some(Frame::Message(Message::ParameterStatus(body))) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                Some(frame) => return Ok(frame),
                None => {
                    self.fill().await?;
                }
            }
        }
    }

    /// Queues a CopyData message.
    pub(crate) fn queue_copy_data(&mut self, data: &[u8]) -> Result<(), SourceError> {
        frontend::CopyData::new(data)
            .map_err(|e| self.protocol(e.to_string()))?
            .write(&mut self.write_buf);
        Ok(())
    }

    /// Queues a CopyDone message.
    pub(crate) fn queue_copy_done(&mut self) {
        frontend::copy_done(&mut self.write_buf);
    }

    /// Sends everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        let result = async {
            self.stream.write_all(&self.write_buf).await?;
            self.stream.flush().await
        }
        .await;
        self.write_buf.clear();
        result.map_err(|e| self.io_error(e))
    }

    /// Runs one statement with the simple query protocol; rows come back as text.
    pub(crate) async fn simple_query(
        &mut self,
        sql: &str,
        context: &str,
    ) -> Result<Vec<Row>, SourceError> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_frame().await? {
                Frame::Message(Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let values = row
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect()
                        .map_err(|e| self.protocol(e.to_string()))?;
                    rows.push(Row(values));
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    error = Some(Box::new(server_error(body.fields())));
                }
                Frame::Message(Message::ReadyForQuery(_)) => break,
                Frame::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse,
                ) => {}
                Frame::CopyBoth | Frame::CopyData(_) => {
                    return Err(self.protocol("copy data in answer to a simple query"));
                }
                Frame::Message(_) => return Err(self.protocol("unexpected message type")),
            }
        }
        match error {
            Some(error) => Err(SourceError::Server {
                context: context.to_owned(),
                error,
            }),
            None => Ok(rows),
        }
    }

    /// Sends a command that answers with CopyBothResponse (START_REPLICATION).
    pub(crate) async fn start_copy_both(
        &mut self,
        sql: &str,
        context: &str,
    ) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        loop {
            match self.next_frame().await? {
                Frame::CopyBoth => return Ok(()),
                Frame::Message(Message::ErrorResponse(body)) => {
                    let error = Box::new(server_error(body.fields()));
                    // Drain to ReadyForQuery so the connection stays usable.
                    while !matches!(
                        self.next_frame().await?,
                        Frame::Message(Message::ReadyForQuery(_))
                    ) {}
                    return Err(SourceError::Server {
                        context: context.to_owned(),
                        error,
                    });
                }
                Frame::Message(Message::RowDescription(_) | Message::DataRow(_)) => {}
                _ => return Err(self.protocol("unexpected message before CopyBothResponse")),
            }
        }
    }

    /// Says goodbye (Terminate) and closes; errors are irrelevant by now.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write_buf);
        // A peer that stopped reading must not keep teal here.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

fn log_notice(host: &str, fields: ErrorFields<'_>) {
    let notice = server_error(fields);
    tracing::info!(host = %host, severity = %notice.severity, code = %notice.code, "server notice: {}", notice.message);
}

pub(crate) fn server_error(mut fields: ErrorFields<'_>) -> ServerError {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

async fn connect_host(conninfo: &ConnInfo, host: &Host) -> Result<Connection, SourceError> {
    let name = host.to_string();
    let HostAddr::Tcp(hostname) = &host.addr else {
        // TLS is never used over Unix-domain sockets (libpq ignores sslmode there).
        let path = host.to_string();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| SourceError::Connect {
                host: name.clone(),
                source,
            })?;
        return startup(Stream::Unix(stream), false, conninfo, host).await;
    };
    match conninfo.sslmode {
        SslMode::Disable => {
            startup(
                Stream::Tcp(tcp(hostname, host.port, &name).await?),
                false,
                conninfo,
                host,
            )
            .await
        }
        SslMode::Allow => {
            let plain = tcp(hostname, host.port, &name).await?;
            match startup(Stream::Tcp(plain), false, conninfo, host).await {
                // pg_hba.conf may accept only TLS (hostssl): try again encrypted.
                Err(SourceError::Server { error, .. }) if error.code == "28000" => {
                    tls_connect(conninfo, host, hostname, &name).await
                }
                other => other,
            }
        }
        SslMode::Prefer => match tls_connect(conninfo, host, hostname, &name).await {
            Err(SourceError::TlsRefused { .. } | SourceError::TlsHandshake { .. }) => {
                let plain = tcp(hostname, host.port, &name).await?;
                startup(Stream::Tcp(plain), false, conninfo, host).await
            }
            other => other,
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tls_connect(conninfo, host, hostname, &name).await
        }
    }
}

/// Receive buffer of replication sockets. Fixed (no autotuning to tens of
/// megabytes): the read pacer in `stream.rs` keeps this queue near full so
/// that blue's walsender coalesces its messages (see `READ_PACE`).
pub(crate) const RECEIVE_BUFFER: u32 = 1024 * 1024;

async fn tcp(hostname: &str, port: u16, name: &str) -> Result<TcpStream, SourceError> {
    let connect_error = |source| SourceError::Connect {
        host: name.to_owned(),
        source,
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((hostname, port))
        .await
        .map_err(connect_error)?
    {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(connect_error)?;
        // Before connecting, so the window scale is negotiated for it.
        if let Err(e) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
            tracing::debug!(host = %name, error = %crate::error::Report(&e), "cannot set the receive buffer size");
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                // Replication streams are long-lived; let the kernel notice a dead peer
                // (libpq's keepalives=1 default).
                let tuned = stream
                    .set_nodelay(true)
                    .and_then(|()| socket2::SockRef::from(&stream).set_keepalive(true));
                if let Err(e) = tuned {
                    tracing::debug!(host = %name, error = %crate::error::Report(&e), "cannot set TCP_NODELAY and SO_KEEPALIVE");
                }
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(connect_error(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the host name resolves to no address",
        )
    })))
}

async fn tls_connect(
    conninfo: &ConnInfo,
    host: &Host,
    hostname: &str,
    name: &str,
) -> Result<Connection, SourceError> {
    let config = tls::client_config(conninfo)?;
    let mut stream = tcp(hostname, host.port, name).await?;
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    let io_err = |source| SourceError::Io {
        host: name.to_owned(),
        source,
    };
    stream.write_all(&buf).await.map_err(io_err)?;
    let answer = stream.read_u8().await.map_err(io_err)?;
    match answer {
        b'S' => {}
        b'N' => {
            return Err(SourceError::TlsRefused {
                host: name.to_owned(),
                mode: conninfo.sslmode.as_str(),
            });
        }
        other => {
            return Err(SourceError::Protocol {
                host: name.to_owned(),
                what: format!("answer 0x{other:02x} to SSLRequest"),
            });
        }
    }
    let server_name = tls::server_name(hostname)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(server_name, stream)
        .await
        .map_err(|source| SourceError::TlsHandshake {
            host: name.to_owned(),
            source,
        })?;
    startup(Stream::Tls(Box::new(tls)), true, conninfo, host).await
}

async fn startup(
    stream: Stream,
    tls: bool,
    conninfo: &ConnInfo,
    host: &Host,
) -> Result<Connection, SourceError> {
    let mut conn = Connection {
        authenticated: false,
        stream,
        read_buf: BytesMut::with_capacity(READ_CHUNK),
        write_buf: BytesMut::new(),
        host: host.to_string(),
        parameters: HashMap::new(),
        tls,
    };
    let app = conninfo.application_name.as_deref().unwrap_or("teal");
    let mut params: Vec<(&str, &str)> = vec![
        ("user", &conninfo.user),
        ("database", &conninfo.dbname),
        ("application_name", app),
    ];
    // Values arrive in one canonical text form.
    params.push(("client_encoding", "UTF8"));
    params.extend(crate::config::CANONICAL_FORMATS);
    params.push(("replication", "database"));
    if let Some(options) = &conninfo.options {
        params.push(("options", options));
    }
    frontend::startup_message(params, &mut conn.write_buf)
        .map_err(|e| conn.protocol(e.to_string()))?;
    conn.flush().await?;
    super::auth::authenticate(&mut conn, conninfo, host).await?;
    conn.authenticated = true;
    loop {
        match conn.next_frame().await? {
            Frame::Message(Message::ReadyForQuery(_)) => return Ok(conn),
            Frame::Message(Message::BackendKeyData(_)) => {}
            Frame::Message(Message::ErrorResponse(body)) => {
                return Err(SourceError::Server {
                    context: format!("starting a session on {}", conn.host),
                    error: Box::new(server_error(body.fields())),
                });
            }
            _ => return Err(conn.protocol("unexpected message after authentication")),
        }
    }
}

/// How long a graceful stop waits for the server to finish the copy.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
