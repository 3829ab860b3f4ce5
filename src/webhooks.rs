//! Webhook delivery from the store's outbox, signed as the Standard
//! Webhooks specification says: `webhook-id` (the outbox row's id, the same
//! on every retry, so receivers can drop duplicates), `webhook-timestamp`
//! (seconds), and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` keyed with the bytes of the `whsec_` secret.
//!
//! Each endpoint has its own worker and its own concurrency limit. A row is
//! leased while its request is in flight; 2xx settles it, anything else (or
//! a timeout) schedules the next attempt on the endpoint's retry schedule,
//! with jitter, until the schedule is used up and the row is marked failed.
//! Redirects are never followed. After a crash the lease runs out and the
//! row is sent again under the same id.

use crate::config::{Config, WebhookConfig};
use crate::metrics::Metrics;
use crate::store::{self, tracking::OutboxItem, Store};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

const POLL: Duration = Duration::from_millis(250);
const FETCH: usize = 200;

pub struct Endpoint {
    pub url: String,
    uri: hyper::Uri,
    key: Vec<u8>,
    retry: Vec<Duration>,
    timeout: Duration,
    slots: Arc<Semaphore>,
    capacity: u32,
}

/// The HMAC key of a `whsec_...` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("the secret must start with whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .map_err(|_| "the secret after whsec_ is not base64".to_string())
}

/// `v1,<base64 signature>` for one delivery.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    )
}

impl Endpoint {
    pub fn new(w: &WebhookConfig) -> Result<Endpoint, String> {
        Ok(Endpoint {
            url: w.url.clone(),
            uri: w
                .url
                .parse()
                .map_err(|e| format!("webhooks url {:?}: {e}", w.url))?,
            key: secret_key(&w.secret)?,
            retry: w.retry.clone(),
            timeout: w.timeout,
            slots: Arc::new(Semaphore::new(w.max_concurrency.max(1))),
            capacity: w.max_concurrency.max(1) as u32,
        })
    }

    /// When to try again after `attempts` failed attempts, or None to give up.
    fn next_attempt(&self, attempts: u32, now: i64) -> Option<i64> {
        let base = self.retry.get(attempts as usize - 1)?;
        // ±10% jitter spreads a backlog's retries after an outage.
        let jitter = (fastrand_u64() % 200) as f64 / 1000.0 - 0.1;
        let ms = base.as_millis() as f64 * (1.0 + jitter);
        Some(now + ms.max(0.0) as i64)
    }
}

fn fastrand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    store: Store,
    metrics: Arc<Metrics>,
    client: HttpsClient,
}

impl Webhooks {
    pub fn new(config: &Config, store: Store, metrics: Arc<Metrics>) -> Result<Webhooks, String> {
        let endpoints = config
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Endpoint::new(w)
                    .map(Arc::new)
                    .map_err(|e| format!("webhooks[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("webhook TLS: {e}"))?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Webhooks {
            endpoints,
            store,
            metrics,
            client,
        })
    }

    /// One worker per endpoint until shutdown; requests in flight finish.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for ep in &self.endpoints {
            let this = self.clone();
            let ep = ep.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move { this.worker(ep, shutdown).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn worker(self: Arc<Self>, ep: Arc<Endpoint>, mut shutdown: watch::Receiver<bool>) {
        // A lease outlives the request's own timeout, so a slow answer is
        // never raced by a second send of the same row.
        let lease_ms = (ep.timeout.as_millis() as i64) * 2 + 5_000;
        let wake = self.store.outbox_wake();
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Wait for a free slot rather than poll: the endpoint's own
            // pace sets ours, and nothing is claimed that cannot start now.
            let first = tokio::select! {
                p = ep.slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = shutdown.changed() => continue,
            };
            let limit = (1 + ep.slots.available_permits()).min(FETCH);
            let due = self
                .store
                .webhook_claim_due(&ep.url, store::now_ms(), lease_ms, limit)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(endpoint = %ep.url, "reading the webhook outbox: {e}");
                    Vec::new()
                });
            if due.is_empty() {
                drop(first);
                // New rows wake us at once; retries fall due on the poll.
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let mut first = Some(first);
            for item in due {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match ep.slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let this = self.clone();
                let ep = ep.clone();
                tokio::spawn(async move {
                    this.deliver(&ep, item).await;
                    drop(permit);
                });
            }
        }
        // Requests in flight end within their own timeout.
        let _ = tokio::time::timeout(
            ep.timeout + Duration::from_secs(1),
            ep.slots.acquire_many(ep.capacity),
        )
        .await;
    }

    async fn deliver(&self, ep: &Endpoint, item: OutboxItem) {
        let result = self.post(ep, &item).await;
        let now = store::now_ms();
        let id = item.id.as_str();
        let outcome = match result {
            Ok(()) => {
                self.metrics.webhooks_delivered.inc();
                self.store.webhook_delivered(id, now).await
            }
            Err(why) => {
                let attempts = item.attempts + 1;
                let next = ep.next_attempt(attempts, now);
                match next {
                    Some(_) => self.metrics.webhooks_retried.inc(),
                    None => {
                        self.metrics.webhooks_failed.inc();
                        tracing::warn!(endpoint = %ep.url, webhook_id = %item.id, "webhook given up after {attempts} attempt(s): {why}");
                    }
                }
                tracing::debug!(endpoint = %ep.url, webhook_id = %item.id, "webhook attempt {attempts} failed: {why}");
                self.store.webhook_failed(id, &why, next).await
            }
        };
        if let Err(e) = outcome {
            // The lease runs out and the row is sent again: at least once.
            tracing::error!(webhook_id = %item.id, "recording a webhook attempt: {e}");
        }
    }

    async fn post(&self, ep: &Endpoint, item: &OutboxItem) -> Result<(), String> {
        let timestamp = store::now_ms() / 1000;
        let body = Bytes::from(item.payload.clone().into_bytes());
        let req = hyper::Request::post(ep.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("trackrelay/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &item.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&ep.key, &item.id, timestamp, &body),
            )
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {}", crate::text::error_chain(&e)))?;
            let status = resp.status();
            // Read (a bounded part of) the answer so the connection can be reused.
            let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            }
        };
        match tokio::time::timeout(ep.timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", ep.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_specification_example() {
        // The worked example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret_key("whsec_***").is_err());
    }
}
