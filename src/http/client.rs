//! The client of teal's endpoint (`teal status`, the tests): hyper's
//! HTTP/1 client on a tokio socket.

use std::net::SocketAddr;

use axum::http::header;

/// `GET path` from a teal endpoint at `addr` (with a bearer token when
/// given): the status code and body. Used by `teal status` and the tests.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut request = hyper::Request::get(path).header(header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec())
        .map(|text| (status, text))
        .map_err(|e| format!("the body is not UTF-8: {e}"))
}
