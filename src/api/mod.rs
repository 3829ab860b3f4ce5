//! The admin HTTP API on `api.listen`: JSON over HTTP/1.1 (keep-alive),
//! every path but `/healthz` behind the Bearer token.
//!
//! ```text
//! GET /v1/emails/{id}          the email, its recipients and their delivery state
//! GET /v1/emails/{id}/events   its events             ?type=&since=&until=&limit=&after=
//! GET /v1/events               all events, paged      ?type=&since=&until=&limit=&after=
//! GET /v1/stats                counts and rates       ?domain=&since=&until=
//! GET /v1/suppressions         the suppression list, paged  ?domain=&limit=&after=
//! POST /v1/suppressions        add one: {"address", "domain"?, "reason"?}
//! DELETE /v1/suppressions/{address}  remove one            ?domain=
//! GET /v1/reports/{id}         a received bounce/complaint: metadata and raw message
//! GET /v1/tls-reports          TLS reports (RFC 8460) per policy domain and day  ?day=&domain=&limit=
//! GET /v1/domains              every configured domain's verification status and records
//! GET /v1/domains/{name}       one domain, with its status history
//! GET /metrics                 Prometheus text
//! GET /healthz                 "ok" when the store can take writes (no token)
//! ```
//! `/`, `/login`, `/logout`, `/emails`, `/queue`, `/suppressions`, `/webhooks`
//! (and below them) and `/assets/...` are the dashboard's (src/ui), which
//! has its own login.
//! Errors are `{"error": "..."}` with the status that fits. A request body
//! is read only for an authenticated POST, and only up to 64 KiB.

pub(crate) mod auth;
mod domains;
mod params;
pub(crate) mod reply;
mod reports;
mod routes;
mod suppressions;
mod tls_reports;

pub use routes::email_json;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::{IdleConns, TrackedConn};
use crate::store::Store;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use reply::{ApiError, Reply};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Open connections, for all listeners, so a misbehaving client cannot take
/// every file descriptor. At the limit the idlest connection is closed to
/// make room for a new one.
const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no request in flight for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Api {
    store: Store,
    metrics: Arc<Metrics>,
    tokens: auth::TokenCheck,
    /// The configured domains, for `/v1/domains` and the status gauges.
    domains: Vec<crate::config::DomainConfig>,
    /// The dashboard (src/ui): the paths `ui::owns`.
    ui: crate::ui::Ui,
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
            store: store.clone(),
            metrics,
            tokens: auth::TokenCheck::new(hash),
            domains: config.domains.clone(),
            ui: crate::ui::Ui::new(config, store),
        })
    }

    /// The dashboard's retry wakes the delivery runner through this.
    pub fn with_queue_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.ui.set_queue_wake(wake);
        self
    }

    /// Answers one request; every answer's time goes into `api_latency`.
    async fn respond(&self, req: Request<Incoming>, peer: IpAddr) -> Reply {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let reply = self
            .dispatch(&parts.method, &parts.uri, &parts.headers, peer, body)
            .await;
        self.metrics.api_latency.observe(started.elapsed());
        reply
    }

    async fn dispatch(
        &self,
        method: &Method,
        uri: &hyper::Uri,
        headers: &HeaderMap,
        peer: IpAddr,
        body: Incoming,
    ) -> Reply {
        let read_only = method == Method::GET || method == Method::HEAD;
        // Load balancers and systemd probes have no token.
        if uri.path() == "/healthz" {
            return if read_only {
                routes::healthz(self).await
            } else {
                reply::method_not_allowed()
            };
        }
        if crate::ui::owns(uri.path()) {
            // As for the API: a body is read only for the login form or
            // from a logged-in browser.
            let body = if method == Method::POST && self.ui.may_post(uri.path(), headers) {
                match read_body(body).await {
                    Ok(b) => b,
                    Err(e) => return e.reply(),
                }
            } else {
                hyper::body::Bytes::new()
            };
            let req = crate::ui::Req {
                method,
                path: uri.path(),
                query: uri.query(),
                headers,
                peer,
                body,
            };
            return self.ui.handle(req, &self.tokens).await;
        }
        match self.tokens.check(headers, peer).await {
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
            auth::Outcome::Throttled => {
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many wrong tokens from this address; try again in a minute",
                )
                .reply()
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
        if let Some(refused) = endpoint.refuses(method) {
            return refused;
        }
        let body = if method == Method::POST {
            match read_body(body).await {
                Ok(b) => b,
                Err(e) => return e.reply(),
            }
        } else {
            hyper::body::Bytes::new()
        };
        endpoint
            .run(self, method, uri.query(), &body)
            .await
            .unwrap_or_else(|e| e.reply())
    }
}

/// Largest request body read (a suppression is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

async fn read_body(body: Incoming) -> Result<hyper::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {MAX_BODY} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// Serves on the given listeners until `shutdown` turns true (or its sender
/// is dropped); then stops accepting, lets requests in flight finish, closes
/// idle connections, and returns when every connection is closed.
pub async fn serve(api: Arc<Api>, listeners: Vec<TcpListener>, shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let idle = Arc::new(IdleConns::default());
    let mut loops = JoinSet::new();
    for listener in listeners {
        let (api, idle, shutdown) = (api.clone(), idle.clone(), shutdown.clone());
        let room = idle.clone();
        loops.spawn(crate::net::accept_loop(
            "admin API",
            listener,
            shutdown.clone(),
            Some(slots.clone()),
            move || {
                // Keep-alive connections nobody uses must not keep a new
                // client out: the one idle longest goes.
                if !room.close_idlest() {
                    tracing::warn!(
                        "admin API: {MAX_CONNECTIONS} connections busy; a new one waits"
                    );
                }
            },
            move |tcp, peer| connection(api.clone(), tcp, peer, idle.register(), shutdown.clone()),
        ));
    }
    while loops.join_next().await.is_some() {}
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
}

async fn connection(
    api: Arc<Api>,
    tcp: TcpStream,
    peer: SocketAddr,
    tracked: TrackedConn,
    mut shutdown: watch::Receiver<bool>,
) {
    let tracked = Arc::new(tracked);
    let in_service = tracked.clone();
    let service = service_fn(move |req| {
        let api = api.clone();
        let busy = in_service.busy();
        async move {
            let reply = api.respond(req, peer.ip()).await;
            drop(busy);
            Ok::<_, Infallible>(reply)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    loop {
        // While a request is answered, look again a timeout later.
        let idle_until = tracked.idle_since().unwrap_or_else(Instant::now) + IDLE_TIMEOUT;
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!("admin API connection: {e}");
                }
                return;
            }
            _ = turned_true(&mut shutdown) => break,
            _ = tracked.asked_to_close() => break,
            _ = tokio::time::sleep_until(idle_until.into()) => {
                if tracked.idle_since().is_some_and(|t| t.elapsed() >= IDLE_TIMEOUT) {
                    break;
                }
            }
        }
    }
    // Never used: no response can be in flight, and hyper would wait for
    // a first request before closing.
    if !tracked.served() {
        return;
    }
    // Finishes the response in flight, if any, then closes.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
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
