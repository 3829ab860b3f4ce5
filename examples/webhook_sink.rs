//! A fast local webhook receiver for trackrelay's benchmarks (bench/relay.sh
//! WEBHOOKS=1): answers every POST with 204, checks the Standard Webhooks
//! signature (HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}",
//! keyed with the base64-decoded part of the `whsec_` secret), and counts.
//!
//!   cargo run --release --example webhook_sink -- --listen 127.0.0.1:8099 \
//!       [--secret whsec_...]
//!
//! `GET /count` answers one JSON line:
//!   {"received":N,"unique_ids":N,"bad_signatures":N,"by_type":{"email.sent":N,...}}
//! Runs until killed.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

#[derive(Default)]
struct Counts {
    received: u64,
    bad_signatures: u64,
    ids: HashSet<String>,
    by_type: BTreeMap<String, u64>,
}

fn usage() -> ! {
    eprintln!("usage: webhook_sink --listen 127.0.0.1:PORT [--secret whsec_...]");
    std::process::exit(2)
}

fn expected_signature(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
    use base64::Engine;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut msg = Vec::with_capacity(body.len() + 64);
    msg.extend_from_slice(id.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    base64::engine::general_purpose::STANDARD.encode(aws_lc_rs::hmac::sign(&key, &msg).as_ref())
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    key: Arc<Option<Vec<u8>>>,
    counts: Arc<Mutex<Counts>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.method() == hyper::Method::GET && req.uri().path() == "/count" {
        let c = counts.lock().unwrap();
        let body = serde_json::json!({
            "received": c.received,
            "unique_ids": c.ids.len(),
            "bad_signatures": c.bad_signatures,
            "by_type": c.by_type,
        });
        return Ok(Response::new(Full::new(Bytes::from(
            body.to_string() + "\n",
        ))));
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = req.into_body().collect().await?.to_bytes();
    let good = match key.as_ref() {
        None => true,
        Some(k) => {
            let want = expected_signature(k, &id, &ts, &body);
            sig.split(' ')
                .any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
        }
    };
    let ty = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "(unparsable)".into());
    {
        let mut c = counts.lock().unwrap();
        c.received += 1;
        if !good {
            c.bad_signatures += 1;
        }
        c.ids.insert(id);
        *c.by_type.entry(ty).or_default() += 1;
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

#[tokio::main]
async fn main() {
    let (mut listen, mut secret) = (String::new(), None::<String>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--secret" => secret = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    if listen.is_empty() {
        usage()
    }
    let key = Arc::new(secret.map(|s| {
        use base64::Engine;
        let b64 = s.strip_prefix("whsec_").unwrap_or_else(|| usage());
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| usage())
    }));
    let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    let counts = Arc::new(Mutex::new(Counts::default()));
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let (key, counts) = (key.clone(), counts.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(req, key.clone(), counts.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
