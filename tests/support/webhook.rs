//! A webhook endpoint for tests: a real HTTP server on 127.0.0.1 that
//! checks every delivery's Standard Webhooks signature with its own
//! implementation of the scheme (written here from the specification, not
//! taken from trackrelay), and records what arrived.
#![allow(dead_code)]

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: i64,
    pub signature_ok: bool,
    pub body: serde_json::Value,
    pub status_sent: u16,
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// The status to answer with (200 = up; 503 = down).
    pub answer: Arc<AtomicU16>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The specification: the key is the base64 after `whsec_`; the signed
/// content is `{webhook-id}.{webhook-timestamp}.{body}`; the header holds
/// space-separated `v1,<base64 HMAC-SHA256>` entries, any of which may match.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(b64) = secret.strip_prefix("whsec_") else {
        return false;
    };
    let Ok(key) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    let mut content = Vec::new();
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
        &content,
    );
    let expected = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    header
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .any(|sig| sig == expected)
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(AtomicU16::new(200));
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let secret = secret.to_string();
        let task = {
            let answer = answer.clone();
            let deliveries = deliveries.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let answer = answer.clone();
                    let deliveries = deliveries.clone();
                    let secret = secret.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let answer = answer.clone();
                            let deliveries = deliveries.clone();
                            let secret = secret.clone();
                            async move {
                                let h = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_string()
                                };
                                let (id, ts, sig) = (
                                    h("webhook-id"),
                                    h("webhook-timestamp"),
                                    h("webhook-signature"),
                                );
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let status = answer.load(Ordering::SeqCst);
                                let now = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap()
                                    .as_secs() as i64;
                                let timestamp: i64 = ts.parse().unwrap_or(0);
                                // The specification's replay window: five minutes.
                                let fresh = (now - timestamp).abs() <= 300;
                                let ok = fresh && verify(&secret, &id, &ts, &body, &sig);
                                deliveries.lock().unwrap().push(Delivery {
                                    id,
                                    timestamp,
                                    signature_ok: ok,
                                    body: serde_json::from_slice(&body)
                                        .unwrap_or(serde_json::Value::Null),
                                    status_sent: status,
                                });
                                let mut resp = Response::new(Full::new(Bytes::from_static(b"")));
                                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            })
        };
        Receiver {
            addr,
            answer,
            deliveries,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Deliveries answered 2xx.
    /// The event types accepted per email id; panics on a bad signature.
    pub fn types_by_email_id(
        &self,
    ) -> std::collections::HashMap<String, std::collections::HashSet<String>> {
        let mut m: std::collections::HashMap<String, std::collections::HashSet<String>> =
            std::collections::HashMap::new();
        for d in self.accepted() {
            assert!(d.signature_ok, "a webhook with a bad signature: {}", d.id);
            let id = d.body["data"]["email_id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            m.entry(id)
                .or_default()
                .insert(d.body["type"].as_str().unwrap_or("").to_string());
        }
        m
    }

    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| (200..300).contains(&d.status_sent))
            .collect()
    }

    pub fn set_answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }
}
