//! The admin HTTP API on `api.listen`: JSON over HTTP/1.1 (keep-alive),
//! every path but `/healthz` behind the Bearer token.
//!
//! ```text
//! GET /v1/emails/{id}          the email, its recipients and their delivery state
//! GET /v1/emails/{id}/events   its events             ?type=&since=&until=&limit=&after=
//! GET /v1/events               all events, paged      ?type=&since=&until=&limit=&after=
//! GET /v1/stats                counts and rates       ?domain=&since=&until=
//! GET /metrics                 Prometheus text
//! GET /healthz                 "ok" when the store can take writes (no token)
//! ```
//! Errors are `{"error": "..."}` with the status that fits. Request bodies
//! are never read.

mod auth;
mod params;
mod reply;
mod routes;

pub use routes::email_json;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use reply::{ApiError, Reply};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Open connections per listener beyond which new ones are closed at once,
/// so a misbehaving client cannot take every file descriptor.
const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's headers within this; it also closes idle
/// keep-alive connections.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Api {
    store: Store,
    metrics: Arc<Metrics>,
    tokens: auth::TokenCheck,
}

impl Api {
    pub fn new(config: &Config, store: Store, metrics: Arc<Metrics>) -> Result<Self, String> {
        let hash = config.api.token_hash.as_deref();
        if let Some(h) = hash {
            argon2::PasswordHash::new(h).map_err(|e| {
                format!("api.token_hash: not a PHC hash string ({e}); make one with `trackrelay hash-password`")
            })?;
        }
        Ok(Api {
            store,
            metrics,
            tokens: auth::TokenCheck::new(hash),
        })
    }

    /// Answers one request; every answer's time goes into `api_latency`.
    async fn respond(&self, req: Request<Incoming>) -> Reply {
        let started = Instant::now();
        let reply = self.dispatch(req.method(), req.uri(), req.headers()).await;
        self.metrics.api_latency.observe(started.elapsed());
        reply
    }

    async fn dispatch(&self, method: &Method, uri: &hyper::Uri, headers: &HeaderMap) -> Reply {
        let read_only = method == Method::GET || method == Method::HEAD;
        // Load balancers and systemd probes have no token.
        if uri.path() == "/healthz" {
            return if read_only {
                routes::healthz(self).await
            } else {
                reply::method_not_allowed()
            };
        }
        match self.tokens.check(headers).await {
            auth::Outcome::Allowed => {}
            auth::Outcome::Missing => {
                return reply::unauthorized(
                    "this API needs an `Authorization: Bearer <token>` header",
                    false,
                )
            }
            auth::Outcome::Invalid => {
                return reply::unauthorized("the bearer token is not valid", true)
            }
            auth::Outcome::NotConfigured => {
                return reply::unauthorized(
                    "no api.token_hash is configured, so the admin API refuses every request",
                    headers.contains_key(hyper::header::AUTHORIZATION),
                )
            }
        }
        let Some(endpoint) = routes::Endpoint::resolve(uri.path()) else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", uri.path()),
            )
            .reply();
        };
        if !read_only {
            return reply::method_not_allowed();
        }
        endpoint
            .run(self, uri.query())
            .await
            .unwrap_or_else(|e| e.reply())
    }
}

/// Serves on the given listeners until `shutdown` turns true (or its sender
/// is dropped); then stops accepting, lets requests in flight finish, closes
/// idle connections, and returns when every connection is closed.
pub async fn serve(api: Arc<Api>, listeners: Vec<TcpListener>, shutdown: watch::Receiver<bool>) {
    let mut loops = JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(api.clone(), listener, shutdown.clone()));
    }
    while loops.join_next().await.is_some() {}
}

async fn accept_loop(api: Arc<Api>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, "admin API: {MAX_CONNECTIONS} connections open; closing a new one");
                        continue;
                    }
                    conns.spawn(connection(api.clone(), tcp, shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!("admin API: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn connection(api: Arc<Api>, tcp: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let service = service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.respond(req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!("admin API connection: {e}");
            }
            return;
        }
        _ = turned_true(&mut shutdown) => {}
    }
    // Finishes the request in flight, if any, then closes.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn turned_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
