//! TLS mechanics for outbound SMTP: the rustls client configuration (aws-lc-rs,
//! TLS 1.2+, no certificate verification) and the memory of hosts whose TLS
//! is broken.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::ProtocolVersion;

/// The handshake-signature half of a `ServerCertVerifier`, identical for
/// every verifier here: they differ in how they judge certificates, never in
/// how they check that the peer holds the certificate's key. `$provider` is
/// the field holding the aws-lc-rs `CryptoProvider`.
macro_rules! ring_handshake_signatures {
    ($provider:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use ring_handshake_signatures;

/// Accepts any certificate, like Postfix's `encrypt` level: most MX hosts
/// present certificates that would fail WebPKI checks, and refusing them
/// would only push mail back to plaintext. Handshake signatures are still
/// checked, so the peer must hold the key of the certificate it shows.
/// Certificate checks belong to MTA-STS/DANE, which build on this.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    ring_handshake_signatures!(0);
}

/// One configuration for the whole process, so TLS sessions resume across
/// connections to the same host.
pub(crate) fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                // TLS 1.2 is the floor for both policies; TLS 1.0/1.1 are
                // not even offered.
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| format!("TLS configuration: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// A client configuration with `verifier` (one per connection when it
/// records what it saw; see `tls_policy::RecordingVerifier`).
pub(crate) fn config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The trust anchors of verified outbound TLS (MTA-STS policy fetches and
/// MX hosts under MTA-STS): the Mozilla roots of webpki-roots, plus the
/// certificates of `delivery.extra_ca_file` (PEM) for private CAs and tests.
pub fn root_store(extra_ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            format!(
                "delivery.extra_ca_file: cannot read {}: {e}",
                path.display()
            )
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert
                .map_err(|e| format!("delivery.extra_ca_file: {}: bad PEM: {e}", path.display()))?;
            roots.add(cert).map_err(|e| {
                format!(
                    "delivery.extra_ca_file: {}: unusable certificate: {e}",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "delivery.extra_ca_file: {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    Ok(roots)
}

/// WebPKI verification against [`root_store`].
pub fn webpki_verifier(
    extra_ca_file: Option<&Path>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(root_store(extra_ca_file)?),
        provider,
    )
    .build()
    .map_err(|e| format!("TLS verifier: {e}"))?;
    Ok(verifier)
}

/// SNI is the MX host name; an unusable name (or an IP literal) falls back
/// to the address, for which rustls sends no SNI.
pub(crate) fn server_name(name: &str, addr: SocketAddr) -> ServerName<'static> {
    let name = name.trim_end_matches('.');
    ServerName::try_from(name.to_string()).unwrap_or_else(|_| ServerName::from(addr.ip()))
}

pub(crate) fn version_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

/// TLS 1.2 or later, the minimum the `enforced` policy accepts.
pub(crate) fn version_acceptable(version: ProtocolVersion) -> bool {
    matches!(version, ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3)
}

/// Hosts whose STARTTLS handshake failed recently. While an address is
/// remembered, opportunistic delivery to it goes straight to plaintext
/// instead of failing the handshake and reconnecting every time; after the
/// expiry, TLS is tried again. Enforced delivery ignores this memory.
///
/// Shared between deliveries (`&TlsMemory` is enough: it locks inside).
#[derive(Debug)]
pub struct TlsMemory {
    ttl: Duration,
    hosts: Mutex<HashMap<SocketAddr, (Instant, String)>>,
}

impl Default for TlsMemory {
    /// Four hours: long enough to spare a broken host a failed handshake on
    /// every queue run, short enough to notice a repaired one the same day.
    fn default() -> Self {
        Self::new(Duration::from_secs(4 * 3600))
    }
}

impl TlsMemory {
    pub fn new(ttl: Duration) -> Self {
        TlsMemory {
            ttl,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn mark_broken(&self, addr: SocketAddr, reason: impl Into<String>) {
        let now = Instant::now();
        let mut hosts = self.lock();
        hosts.retain(|_, (until, _)| *until > now);
        hosts.insert(addr, (now + self.ttl, reason.into()));
    }

    pub fn is_broken(&self, addr: SocketAddr) -> bool {
        self.broken_reason(addr).is_some()
    }

    /// Why TLS to `addr` is considered broken, while it is.
    pub fn broken_reason(&self, addr: SocketAddr) -> Option<String> {
        let mut hosts = self.lock();
        match hosts.get(&addr) {
            Some((until, reason)) if *until > Instant::now() => Some(reason.clone()),
            Some(_) => {
                hosts.remove(&addr);
                None
            }
            None => None,
        }
    }

    pub fn forget(&self, addr: SocketAddr) {
        self.lock().remove(&addr);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (Instant, String)>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_expires() {
        let addr: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let memory = TlsMemory::new(Duration::from_millis(30));
        assert!(!memory.is_broken(addr));
        memory.mark_broken(addr, "handshake failed");
        assert_eq!(
            memory.broken_reason(addr).as_deref(),
            Some("handshake failed")
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(!memory.is_broken(addr));
        memory.mark_broken(addr, "again");
        memory.forget(addr);
        assert!(!memory.is_broken(addr));
    }

    #[test]
    fn sni_falls_back_to_address() {
        let addr: SocketAddr = "192.0.2.1:25".parse().unwrap();
        assert_eq!(
            server_name("mx.example.net.", addr),
            ServerName::try_from("mx.example.net").unwrap()
        );
        assert_eq!(server_name("not a name", addr), ServerName::from(addr.ip()));
    }

    #[test]
    fn config_builds() {
        assert!(client_config().is_ok());
        assert!(version_acceptable(ProtocolVersion::TLSv1_2));
        assert!(!version_acceptable(ProtocolVersion::TLSv1_1));
        assert_eq!(version_name(ProtocolVersion::TLSv1_3), "TLSv1.3");
    }
}
