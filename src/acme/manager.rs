//! The background task: for each name, issue when there is no
//! certificate, renew at two thirds of its lifetime; after a failure at
//! the CA wait `retry_interval`, doubling up to [`MAX_BACKOFF_MS`]. A name
//! whose DNS does not point here (or whose CAA forbids the CA) is
//! re-checked every `domain_checks.interval` without asking the CA.

use super::client::Client;
use super::{store, Acme};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest wait between attempts for one name.
const MAX_BACKOFF_MS: i64 = 6 * 3600 * 1000;

#[derive(Default, Clone, Copy)]
struct Attempts {
    next_at: i64,
    failures: u32,
}

impl Acme {
    /// Runs until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let resolver = match crate::dns::resolver(&self.config) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("acme: {e}; no certificates will be issued");
                return;
            }
        };
        let names = super::names(&self.config);
        let mut attempts: HashMap<String, Attempts> = HashMap::new();
        let mut client: Option<Client> = None;
        loop {
            let now = crate::time::now_ms();
            let mut next_wake = i64::MAX;
            for name in &names {
                let a = attempts.entry(name.clone()).or_default();
                let due = match self.issued(name) {
                    Some(i) => a.next_at.max(i.renew_at()),
                    None => a.next_at,
                };
                if due > now {
                    next_wake = next_wake.min(due);
                    continue;
                }
                if *shutdown.borrow() {
                    return;
                }
                // Never ask the CA for a name that does not reach us (or that
                // CAA keeps from it): the validation would fail and count
                // against its rate limits. DNS is re-checked on the domain
                // checks' schedule, at no cost to the CA.
                let issuable = tokio::select! {
                    r = crate::dnscheck::issuable(&self.config, &resolver, name) => r,
                    _ = shutdown.changed() => return,
                };
                if let Err(e) = issuable {
                    let a = attempts.entry(name.clone()).or_default();
                    let wait = self.config.domain_checks.interval.as_millis() as i64;
                    a.next_at = crate::time::now_ms() + wait;
                    next_wake = next_wake.min(a.next_at);
                    // Not saved as the last error: dns-check finds it itself.
                    tracing::info!(name = %name, "acme: not issuing: {e}");
                    continue;
                }
                // An attempt can poll the CA for minutes: shutdown must not wait.
                let result = tokio::select! {
                    r = self.attempt(&mut client, name) => r,
                    _ = shutdown.changed() => return,
                };
                let a = attempts.entry(name.clone()).or_default();
                match result {
                    Ok(issued) => {
                        tracing::info!(
                            name = %name,
                            expires = %crate::time::rfc3339(issued.not_after),
                            "acme: certificate issued, now served"
                        );
                        *a = Attempts::default();
                        next_wake = next_wake.min(issued.renew_at());
                        self.install(name, issued);
                    }
                    Err(e) => {
                        let wait = backoff(self.config.acme.retry_interval, a.failures);
                        a.failures = a.failures.saturating_add(1);
                        a.next_at = crate::time::now_ms() + wait;
                        next_wake = next_wake.min(a.next_at);
                        tracing::warn!(name = %name, retry_in_s = wait / 1000, "acme: {e}");
                        store::save_last_error(&self.config.server.data_dir, name, &e);
                        // A failed connection may be a stale one: start afresh.
                        client = None;
                    }
                }
            }
            let wait = (next_wake - crate::time::now_ms()).clamp(0, MAX_BACKOFF_MS);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }

    async fn attempt(
        &self,
        client: &mut Option<Client>,
        name: &str,
    ) -> Result<store::Issued, String> {
        if client.is_none() {
            let acme = &self.config.acme;
            let key = store::account_key(&self.config.server.data_dir)?;
            let mut c = Client::connect(&acme.directory, acme.ca_file(), &key).await?;
            let contact: Vec<String> = (!acme.contact.is_empty())
                .then(|| acme.contact.clone())
                .into_iter()
                .collect();
            c.account(&contact).await?;
            *client = Some(c);
        }
        let Some(c) = client.as_ref() else {
            return Err("no ACME client".into());
        };
        self.issue(c, name).await
    }

    async fn issue(&self, c: &Client, name: &str) -> Result<store::Issued, String> {
        tracing::info!(name = %name, "acme: ordering a certificate");
        let (order_url, order) = c.new_order(name).await?;
        for authz_url in &order.authorizations {
            let authz = c.authorization(authz_url).await?;
            if authz.status == "valid" {
                continue;
            }
            let kind = self.config.acme.challenge.as_str();
            let ch = authz
                .challenges
                .iter()
                .find(|ch| ch.kind == kind)
                .ok_or_else(|| format!("the CA offers no {kind} challenge for {name}"))?;
            let key_auth = c.key_authorization(&ch.token);
            if kind == "tls-alpn-01" {
                self.set_alpn_cert(name, Some(alpn_cert(name, &key_auth)?));
            } else {
                self.set_challenge(&ch.token, Some(key_auth));
            }
            let result = async {
                c.ready(&ch.url).await?;
                c.wait_authorization(authz_url).await
            }
            .await;
            self.set_challenge(&ch.token, None);
            self.set_alpn_cert(name, None);
            result.map_err(|e| format!("validating {name} ({kind}): {e}"))?;
        }
        let key = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
            .map_err(|e| format!("CSR for {name}: {e}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("CSR for {name}: {e}"))?;
        let chain = c.finalize(&order_url, &order, csr.der()).await?;
        let data_dir = &self.config.server.data_dir;
        // Checked before it replaces a working certificate.
        let ck = certified(&chain, &key.serialize_pem())?;
        store::save(data_dir, name, &chain, &key.serialize_pem())?;
        let (not_before, not_after) = store::validity_of(&ck)?;
        Ok(store::Issued {
            key: ck,
            not_before,
            not_after,
        })
    }
}

/// The self-signed certificate TLS-ALPN-01 asks for (RFC 8737 3): the
/// name, and the SHA-256 of the key authorization in a critical
/// acmeIdentifier extension.
fn alpn_cert(
    name: &str,
    key_authorization: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let key = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("TLS-ALPN-01 certificate for {name}: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("TLS-ALPN-01 certificate for {name}: {e}"))?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(der.into())
        .map_err(|e| format!("TLS-ALPN-01 key: {e}"))?;
    // Not `keys_match`: webpki refuses the critical acmeIdentifier
    // extension, which is the point of this certificate.
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA's certificate chain is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the CA sent no certificate".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or("the new key does not read back")?;
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the new key is unusable: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("the CA's certificate does not match our key: {e}"))?;
    Ok(Arc::new(ck))
}

/// Milliseconds to wait after `failures` earlier failures in a row.
fn backoff(first: Duration, failures: u32) -> i64 {
    let first = first.as_millis().min(MAX_BACKOFF_MS as u128) as i64;
    first
        .saturating_mul(1i64 << failures.min(20))
        .min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_six_hours() {
        let m = Duration::from_secs(300);
        assert_eq!(backoff(m, 0), 300_000);
        assert_eq!(backoff(m, 1), 600_000);
        assert_eq!(backoff(m, 3), 2_400_000);
        assert_eq!(backoff(m, 10), MAX_BACKOFF_MS);
        assert_eq!(backoff(m, u32::MAX), MAX_BACKOFF_MS);
    }
}
