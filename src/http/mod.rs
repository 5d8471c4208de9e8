//! The HTTP endpoint of `teal stream`: the dashboard at `/`, `/metrics`
//! (Prometheus text format), `/status` (JSON), `/history` (the last hour,
//! JSON), `/healthz`, `/readyz`; and [`get`], the matching client.
//!
//! ```text
//! GET /metrics, /status, /history, /readyz ──▶ Monitor (crate::monitor): render on request
//! GET /                                    ──▶ the dashboard page (built in, works offline)
//! ```
//!
//! With a bearer token, `/metrics`, `/status` and `/history` need
//! `Authorization: Bearer <token>` (the dashboard takes it from the page's
//! `#token=` fragment, which browsers never send); the page itself and the
//! probes stay open (they reveal nothing). Rendering reads atomics and takes
//! short locks: a scrape never waits on green or blue. No business logic
//! here: what is shown is the monitor's.

mod client;

pub use client::get;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::monitor::{Monitor, RunState};

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--metrics-addr)")]
pub struct HttpError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

#[derive(Clone)]
struct AppState {
    monitor: Arc<Monitor>,
    token: Option<Secret>,
}

/// Listens on `addr` (port 0: any free port; see [`Monitor::addr`]) until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    monitor: Arc<Monitor>,
    token: Option<Secret>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    monitor.set_addr(bound);
    tracing::info!(addr = %bound, "metrics and status on http://{bound}/metrics");
    let state = AppState { monitor, token };
    let sampler = {
        let (monitor, shutdown) = (Arc::clone(&state.monitor), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => monitor.sample(),
                }
            }
        }
    };
    let app = Router::new()
        .route("/", routing::get(dashboard))
        .route("/history", routing::get(history))
        .route("/metrics", routing::get(metrics))
        .route("/status", routing::get(status))
        .route("/healthz", routing::get(healthz))
        .route("/readyz", routing::get(readyz))
        .with_state(state);
    Ok(tokio::spawn(async move {
        tokio::spawn(sampler);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %crate::error::Report(&e), "the metrics endpoint stopped");
        }
    }))
}

/// The endpoint of a `teal verify` run: `/metrics` (`teal_verify_*`,
/// behind the bearer token when one is set) and `/healthz`, on `addr` until
/// `shutdown`. Returns the bound address.
pub async fn serve_verify(
    addr: SocketAddr,
    slot: String,
    progress: Arc<crate::progress::VerifyProgress>,
    token: Option<Secret>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    tracing::info!(addr = %bound, "verify metrics on http://{bound}/metrics");
    let metrics = move |headers: HeaderMap| async move {
        if !authorized(token.as_ref(), &headers) {
            return unauthorized();
        }
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::monitor::verify_metrics_text(&slot, &progress),
        )
            .into_response()
    };
    let app = Router::new()
        .route("/metrics", routing::get(metrics))
        .route("/healthz", routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %crate::error::Report(&e), "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// How often [`Monitor::history`] gets a sample.
const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The dashboard: one page, scripts and styles inline (works offline).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Whether the request carries the token (when one is set).
fn authorized(token: Option<&Secret>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| token.matches(g))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required (--metrics-token)\n",
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(state.token.as_ref(), &headers) {
        return unauthorized();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.monitor.metrics_text(),
    )
        .into_response()
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(state.token.as_ref(), &headers) {
        return unauthorized();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.monitor.status_json().to_string(),
    )
        .into_response()
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    /// Only samples taken after this Unix time in milliseconds.
    #[serde(default)]
    since: u64,
}

async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    if !authorized(state.token.as_ref(), &headers) {
        return unauthorized();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.monitor.history.since_json(q.since).to_string(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.monitor.state() {
        RunState::Failed => (StatusCode::SERVICE_UNAVAILABLE, "failed\n").into_response(),
        _ => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(why) = state.monitor.stalled() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    match state.monitor.effective_state() {
        RunState::Streaming => (StatusCode::OK, "streaming\n").into_response(),
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", serde_json::to_string(&other).unwrap_or_default()),
        )
            .into_response(),
    }
}
