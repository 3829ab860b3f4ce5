//! Certificates for the tracking hosts (current and previous), issued and
//! renewed by `serve` with ACME (RFC 8555) when `[acme] enabled`.
//!
//! - [`client`]: the protocol (JWS ES256 on aws-lc-rs, HTTPS on hyper-rustls).
//! - [`caa`]: whether CAA records let the CA issue (pure).
//! - [`store`]: account key and certificates in `data_dir/acme/`, 0600.
//! - [`manager`]: the background task: issue once dns-check shows the name
//!   points here and CAA allows it, renew at two thirds of the lifetime,
//!   back off on failure.
//!
//! [`Acme`] is what the tracking listener reads: certificates by name
//! (swapped in place when one is issued, so no restart) and the HTTP-01
//! answers in flight.

pub mod caa;
pub mod client;
pub mod manager;
pub mod store;

use crate::config::Config;
use crate::metrics::Metrics;
use rustls::sign::CertifiedKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use store::Issued;

/// The path HTTP-01 challenges are fetched at (RFC 8555 8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 (RFC 8737): a handshake offering it
/// gets the challenge certificate and no HTTP.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

pub struct Acme {
    config: Config,
    metrics: Arc<Metrics>,
    certs: RwLock<HashMap<String, Issued>>,
    /// token → key authorization, while the CA validates.
    challenges: RwLock<HashMap<String, String>>,
    /// name → TLS-ALPN-01 certificate, while the CA validates.
    alpn_certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Acme {
    /// None when ACME is off. Loads the certificates saved by earlier runs,
    /// so they are served from the first connection.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Arc<Acme>>, String> {
        if !config.acme.enabled {
            return Ok(None);
        }
        let acme = Acme {
            config: config.clone(),
            metrics,
            certs: RwLock::new(HashMap::new()),
            challenges: RwLock::new(HashMap::new()),
            alpn_certs: RwLock::new(HashMap::new()),
        };
        for name in names(config) {
            match store::load(&config.server.data_dir, &name) {
                Ok(Some(issued)) => acme.install(&name, issued),
                Ok(None) => {}
                // Unusable files are replaced by the next issuance.
                Err(e) => tracing::warn!("acme: saved certificate for {name}: {e}"),
            }
        }
        Ok(Some(Arc::new(acme)))
    }

    /// The ACME certificate for a server name (SNI), if one was issued.
    pub fn cert_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs.get(&name.to_ascii_lowercase()).map(|i| i.key.clone())
    }

    /// The key authorization for an HTTP-01 token being validated.
    pub fn challenge(&self, token: &str) -> Option<String> {
        let ch = self.challenges.read().unwrap_or_else(|p| p.into_inner());
        ch.get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for a name being validated.
    pub fn alpn_cert_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.alpn_certs.read().unwrap_or_else(|p| p.into_inner());
        certs.get(&name.to_ascii_lowercase()).cloned()
    }

    fn set_alpn_cert(&self, name: &str, cert: Option<Arc<CertifiedKey>>) {
        let mut certs = self.alpn_certs.write().unwrap_or_else(|p| p.into_inner());
        match cert {
            Some(c) => certs.insert(name.to_string(), c),
            None => certs.remove(name),
        };
    }

    fn issued(&self, name: &str) -> Option<Issued> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs.get(name).cloned()
    }

    fn install(&self, name: &str, issued: Issued) {
        self.metrics
            .certificate_expiry
            .set(name, issued.not_after / 1000);
        let mut certs = self.certs.write().unwrap_or_else(|p| p.into_inner());
        certs.insert(name.to_string(), issued);
    }

    fn set_challenge(&self, token: &str, key_authorization: Option<String>) {
        let mut ch = self.challenges.write().unwrap_or_else(|p| p.into_inner());
        match key_authorization {
            Some(k) => ch.insert(token.to_string(), k),
            None => ch.remove(token),
        };
    }
}

/// Every name to hold a certificate for: each domain's tracking host and
/// its previous ones (links already sent still point there), lower case.
pub fn names(config: &Config) -> Vec<String> {
    let hostname = config
        .acme
        .submission_hostname
        .then(|| config.server.hostname.clone());
    let mut out: Vec<String> = config
        .domains
        .iter()
        .flat_map(|d| {
            d.tracking_host()
                .into_iter()
                .chain(d.previous_tracking_hosts())
        })
        .chain(hostname)
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `trackrelay_certificate_expiry_timestamp_seconds{name}`: notAfter of
/// each ACME certificate being served.
#[derive(Debug, Default)]
pub struct ExpiryGauges(RwLock<BTreeMap<String, i64>>);

impl ExpiryGauges {
    pub fn set(&self, name: &str, unix_seconds: i64) {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        m.insert(name.to_string(), unix_seconds);
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let m = self.0.read().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return;
        }
        let name = "trackrelay_certificate_expiry_timestamp_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} notAfter of the ACME certificate served for each tracking host\n# TYPE {name} gauge"
        );
        for (host, t) in m.iter() {
            // Host names from the config: no quotes or backslashes to escape.
            let _ = writeln!(out, "{name}{{name=\"{host}\"}} {t}");
        }
    }
}

impl Acme {
    /// The answer to `GET /.well-known/acme-challenge/{token}`: the key
    /// authorization while that token is being validated, else 404.
    pub fn challenge_response(
        &self,
        token: &str,
    ) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        let (status, body) = match self.challenge(token) {
            Some(k) => (hyper::StatusCode::OK, k),
            None => (hyper::StatusCode::NOT_FOUND, "not found\n".to_string()),
        };
        let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/octet-stream"),
        );
        resp
    }
}

/// With `acme.submission_hostname`: `tls` (the submission listeners'
/// config) answering with the hostname's ACME certificate once there is
/// one, and with its own certificate until then.
pub fn submission_tls(
    config: &Config,
    acme: Option<&Arc<Acme>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Option<Arc<rustls::ServerConfig>> {
    let (Some(acme), Some(tls)) = (acme, &tls) else {
        return tls;
    };
    if !config.acme.submission_hostname {
        return Some(tls.clone());
    }
    let mut with_acme = (**tls).clone();
    with_acme.cert_resolver = Arc::new(HostnameResolver {
        acme: acme.clone(),
        hostname: config
            .server
            .hostname
            .trim_end_matches('.')
            .to_ascii_lowercase(),
        fallback: tls.cert_resolver.clone(),
    });
    Some(Arc::new(with_acme))
}

/// Mail clients may send no SNI, or another name for the same server:
/// the hostname's certificate answers whatever they ask.
struct HostnameResolver {
    acme: Arc<Acme>,
    hostname: String,
    fallback: Arc<dyn rustls::server::ResolvesServerCert>,
}

impl std::fmt::Debug for HostnameResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostnameResolver")
            .field("hostname", &self.hostname)
            .finish()
    }
}

impl rustls::server::ResolvesServerCert for HostnameResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.acme
            .cert_for(&self.hostname)
            .or_else(|| self.fallback.resolve(hello))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(acme: &str, tracking: &str) -> Result<Config, String> {
        let text = format!(
            "[server]\nhostname = \"relay.example.com\"\n[tracking]\n{tracking}\n\
             [[domains]]\nname = \"example.com\"\ntracking_subdomain = \"t\"\n\
             previous_tracking_subdomains = [\"old\"]\n[acme]\n{acme}\n"
        );
        Config::parse(&text, Path::new("/etc/trackrelay/c.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn config_defaults_and_problems_name_their_key() {
        let c = parse("", "").unwrap();
        assert!(!c.acme.enabled);
        assert_eq!(
            c.acme.directory,
            "https://acme-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(c.acme.challenge, "http-01");
        assert_eq!(c.acme.caa_identity, "letsencrypt.org");
        assert!(c.acme.ca_file().is_none());
        let c = parse("enabled = true\nca_file = \"pebble.pem\"", "").unwrap();
        assert_eq!(
            c.acme.ca_file(),
            Some(Path::new("/etc/trackrelay/pebble.pem"))
        );
        for (acme, tracking, key) in [
            (
                "enabled = true\ndirectory = \"http://ca.test/dir\"",
                "",
                "acme.directory",
            ),
            (
                "enabled = true\ncontact = \"ops@example.com\"",
                "",
                "acme.contact",
            ),
            (
                "enabled = true\nchallenge = \"dns-01\"",
                "",
                "acme.challenge",
            ),
            ("enabled = true", "listen = []", "acme.challenge: http-01"),
            (
                "enabled = true\nchallenge = \"tls-alpn-01\"",
                "",
                "acme.challenge: tls-alpn-01",
            ),
            (
                "enabled = true\nretry_interval = \"0s\"",
                "",
                "acme.retry_interval",
            ),
        ] {
            let e = parse(acme, tracking).unwrap_err();
            assert!(e.contains(key), "{acme}: {e}");
        }
        // Off, nothing about it is checked.
        assert!(parse("challenge = \"dns-01\"", "").is_ok());
    }

    #[test]
    fn names_are_every_tracking_host_and_optionally_the_hostname() {
        let c = parse("", "").unwrap();
        assert_eq!(names(&c), ["old.example.com", "t.example.com"]);
        let c = parse("submission_hostname = true", "").unwrap();
        assert_eq!(
            names(&c),
            ["old.example.com", "relay.example.com", "t.example.com"]
        );
    }
}
