//! Sockets for the tracking listener: plain HTTP (behind a TLS proxy) and
//! HTTPS with the certificate picked by SNI among the tracking hosts'.

use super::listener::Tracker;
use crate::acme::Acme;
use crate::config::Config;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Open connections beyond this wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 20_000;

/// Serves every listener until shutdown, then lets requests in flight end.
pub async fn serve(
    tracker: Arc<Tracker>,
    plain: Vec<TcpListener>,
    tls: Vec<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    acme: Option<Arc<Acme>>,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = Vec::new();
    for l in plain {
        tasks.push(tokio::spawn(accept_loop(
            tracker.clone(),
            l,
            None,
            acme.clone(),
            shutdown.clone(),
            slots.clone(),
        )));
    }
    if let Some(acceptor) = acceptor {
        for l in tls {
            tasks.push(tokio::spawn(accept_loop(
                tracker.clone(),
                l,
                Some(acceptor.clone()),
                acme.clone(),
                shutdown.clone(),
                slots.clone(),
            )));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        slots.acquire_many(MAX_CONNECTIONS as u32),
    )
    .await;
}

async fn accept_loop(
    tracker: Arc<Tracker>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    acme: Option<Arc<Acme>>,
    shutdown: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    let rx = shutdown.clone();
    crate::net::accept_loop(
        "tracking",
        listener,
        shutdown,
        Some(slots),
        || {},
        move |tcp, peer| {
            let (tracker, tls, shutdown) = (tracker.clone(), tls.clone(), rx.clone());
            let acme = acme.clone();
            async move {
                match tls {
                    None => connection(tracker, acme, TokioIo::new(tcp), peer, shutdown).await,
                    Some(acceptor) => {
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                                .await
                        {
                            // TLS-ALPN-01: the handshake was the answer.
                            if stream.get_ref().1.alpn_protocol()
                                == Some(crate::acme::ACME_TLS_ALPN)
                            {
                                return;
                            }
                            connection(tracker, acme, TokioIo::new(stream), peer, shutdown).await;
                        }
                    }
                }
            }
        },
    )
    .await
}

async fn connection<I>(
    tracker: Arc<Tracker>,
    acme: Option<Arc<Acme>>,
    io: I,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let tracker = tracker.clone();
        let acme = acme.clone();
        async move {
            // ACME HTTP-01 (see src/acme): the CA fetches the key authorization.
            if let Some(acme) = &acme {
                if let Some(token) = req.uri().path().strip_prefix(crate::acme::CHALLENGE_PREFIX) {
                    return Ok(acme.challenge_response(token));
                }
            }
            if req.uri().path().starts_with(super::unsubscribe::PREFIX) {
                if let Some(u) = tracker.unsubscriber() {
                    return Ok::<_, std::convert::Infallible>(u.handle(req, peer).await);
                }
            }
            Ok(tracker.handle(&req, peer).await)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that sends its request a byte a minute is not a mail client.
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        }
    }
}

/// Certificates by server name: each tracking host (current and previous)
/// gets the first of its domain's certificates that is valid for it; the
/// default certificate answers anything else.
///
/// With ACME, its certificates come first (looked up per handshake, so a
/// renewal is served at once); the configured ones are the fallback.
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    acme: Option<Arc<Acme>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.by_name.keys())
            .field("acme", &self.acme.is_some())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        if let Some(acme) = &self.acme {
            if hello
                .alpn()
                .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN))
            {
                return acme.alpn_cert_for(name?);
            }
        }
        name.and_then(|n| self.acme.as_ref()?.cert_for(n))
            .or_else(|| name.and_then(|n| self.by_name.get(&n.to_ascii_lowercase()).cloned()))
            .or_else(|| self.default.clone())
    }
}

/// The HTTPS acceptor for `tracking.listen_tls`, or None when no
/// certificate is configured (then `listen_tls` must be empty; checked here).
pub fn acceptor(config: &Config, acme: Option<Arc<Acme>>) -> Result<Option<TlsAcceptor>, String> {
    let t = &config.tracking;
    let default = match (&t.tls_cert, &t.tls_key) {
        (Some(c), Some(k)) => {
            Some(crate::tls::certified_key(c, k).map_err(|e| format!("tracking.tls_cert: {e}"))?)
        }
        _ => None,
    };
    let mut by_name = HashMap::new();
    for (i, d) in config.domains.iter().enumerate() {
        let (Some(c), Some(k)) = (&d.tracking_tls_cert, &d.tracking_tls_key) else {
            continue;
        };
        let ck = crate::tls::certified_key(c, k)
            .map_err(|e| format!("domains[{i}].tracking_tls_cert: {e}"))?;
        let hosts = d
            .tracking_host()
            .into_iter()
            .chain(d.previous_tracking_hosts());
        for host in hosts {
            let mut check = rustls::server::ResolvesServerCertUsingSni::new();
            if check.add(&host, ck.as_ref().clone()).is_err() {
                tracing::warn!("domains[{i}].tracking_tls_cert does not cover {host}; clients will refuse it there");
            }
            by_name.insert(host.to_ascii_lowercase(), ck.clone());
        }
    }
    if by_name.is_empty() && default.is_none() && acme.is_none() {
        if t.listen_tls.is_empty() {
            return Ok(None);
        }
        return Err("tracking.listen_tls: no certificate (set tracking.tls_cert or a domain's tracking_tls_cert)".into());
    }
    let resolver = Arc::new(SniResolver {
        by_name,
        default,
        acme,
    });
    let alpn: &[&[u8]] = match resolver.acme {
        Some(_) => &[b"http/1.1", crate::acme::ACME_TLS_ALPN],
        None => &[b"http/1.1"],
    };
    let config = crate::tls::server_config_with_resolver(resolver, alpn)?;
    Ok(Some(TlsAcceptor::from(config)))
}
