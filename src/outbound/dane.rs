//! DANE for outbound SMTP (RFC 7672): DNSSEC-validated MX, address and
//! TLSA lookups, and a rustls certificate verifier that matches the TLSA
//! records instead of WebPKI.
//!
//! The relay validates DNSSEC itself (hickory's validator, aws-lc-rs), so the
//! DNS server it talks to (`delivery.resolver`, else the system's) only has
//! to pass DNSSEC records through (the DO bit). Many resolvers strip them;
//! behind such a resolver every signed answer would look Bogus and DANE
//! would defer all mail (stalwart#1578). So with `delivery.dane = "auto"`
//! (the default) DANE is used only while a probe succeeds: the SOA of the
//! trust anchor's zone (the root by default) must validate as Secure. A
//! resolver that strips RRSIGs fails it. The probe runs at start (and the
//! log says its result) and again every [`PROBE_EVERY`] while delivering.
//! `"on"` skips the probe (signed domains defer when validation fails);
//! `"off"` never looks TLSA records up.
//!
//! Trust anchor: the IANA root keys built into hickory, unless
//! `delivery.dnssec_trust_anchor` names a file of DNSKEY records in zone
//! file form, which are trusted instead (for private signed zones, and for
//! tests, whose signed zone is a trust anchor island).
//!
//! Per MX host (RFC 7672 section 2.2):
//! - the domain's MX RRset, then the host's A/AAAA, then
//!   `_{port}._tcp.{host}` TLSA are looked up with validation;
//! - any of them Insecure (or no TLSA records) => DANE does not apply and
//!   the next policy (MTA-STS, the domain's `tls`) decides;
//! - Bogus, or a lookup that fails for another reason once the chain is
//!   known to be signed => defer: never a fallback to plaintext or to a
//!   weaker policy (the kumomta#543 downgrade);
//! - Secure TLSA records => TLS is required and the certificate must match
//!   one usable record: DANE-EE(3) matches the server certificate (full or
//!   SPKI), ignoring names and dates (section 3.1.1); DANE-TA(2) matches a
//!   certificate of the presented chain, which must then chain the server
//!   certificate to it with the MX host name (section 3.1.2). Matching
//!   types full(0), SHA-256(1), SHA-512(2);
//! - Secure TLSA records none of which is usable (PKIX-TA/EE usages 0/1,
//!   unknown selectors or matching types, malformed digests) => TLS is
//!   still mandatory but not authenticated (section 3.1.3 and 2.2).
//!
//! Not done: CNAME-expanded TLSA base names (section 2.2.2; the MX host
//! name is always the base) and DANE-TA trust anchors that are not in the
//! presented chain (a bare public key).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::dnssec::{Proof, PublicKey, TrustAnchors};
use mail_auth::hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector, TLSA};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::hickory_resolver::proto::serialize::txt::trust_anchor;
use mail_auth::hickory_resolver::TokioResolver;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use tokio::sync::Mutex;

use super::tls_policy::{DaneHost, DaneSource, ResultType};
use crate::config::{Config, DaneMode};

/// How often `auto` mode checks again that the resolver passes DNSSEC
/// through: a resolver can be replaced under a running relay.
pub const PROBE_EVERY: Duration = Duration::from_secs(600);

/// Why DANE defers a host; maps to RFC 8460 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferKind {
    /// A Bogus answer (RFC 8460 `dnssec-invalid`).
    Dnssec,
    /// A TLSA lookup that failed on a signed chain (`tlsa-invalid`).
    Tlsa,
}

/// What DANE says about one MX host.
#[derive(Clone)]
pub enum Decision {
    /// Nothing Secure to act on: the next policy decides.
    NotApplicable,
    /// TLS required, certificate checked by this verifier.
    Verify(Arc<DaneVerifier>),
    /// DANE applies but cannot be satisfied now.
    Defer(DeferKind, String),
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::NotApplicable => f.write_str("NotApplicable"),
            Decision::Verify(v) => write!(f, "Verify({v:?})"),
            Decision::Defer(k, why) => write!(f, "Defer({k:?}, {why:?})"),
        }
    }
}

/// One validated lookup, reduced to what RFC 7672 distinguishes.
#[derive(Debug)]
enum Answer {
    Secure(Vec<RData>),
    Insecure,
    NoRecords,
    Bogus(String),
    Failed(String),
}

/// Whether the configured resolver lets DNSSEC be validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Validates,
    DoesNot(String),
}

pub struct Dane {
    mode: DaneMode,
    /// The last Secure TLSA RRset per MX host (presentation form), for
    /// TLS-RPT's `policy-string`.
    tlsa_seen: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
    resolver: TokioResolver,
    /// The zone whose SOA the probe validates: the trust anchor's.
    probe_zone: Name,
    /// Auto mode: the last probe's result and when it ran.
    state: Mutex<Option<(bool, Instant)>>,
}

impl Dane {
    /// None when `delivery.dane = "off"`.
    pub fn new(config: &Config) -> Result<Option<Arc<Dane>>, String> {
        if config.delivery.dane == DaneMode::Off {
            return Ok(None);
        }
        let (resolver, probe_zone) = validating_resolver(config)?;
        Ok(Some(Arc::new(Dane {
            mode: config.delivery.dane,
            resolver,
            probe_zone,
            state: Mutex::new(None),
            tlsa_seen: Default::default(),
        })))
    }

    /// For `serve`: builds DANE from the config and probes the resolver in
    /// the background (a slow or unreachable resolver must not hold up the
    /// listeners); the log says the result. None when DANE is off.
    pub fn start(config: &Config) -> Result<Option<Arc<Dane>>, String> {
        let Some(dane) = Dane::new(config)? else {
            tracing::info!("DANE: off (delivery.dane = \"off\")");
            return Ok(None);
        };
        let probing = dane.clone();
        tokio::spawn(async move {
            if probing.mode == DaneMode::On {
                match probing.probe().await {
                    Probe::Validates => tracing::info!(
                        "DANE: on (delivery.dane = \"on\"); the resolver passes DNSSEC through"
                    ),
                    Probe::DoesNot(why) => tracing::warn!(
                        "DANE: on (delivery.dane = \"on\"), but DNSSEC does not validate through the resolver, so mail to signed domains will be deferred: {why}"
                    ),
                }
            } else {
                // Logs the outcome itself.
                probing.active().await;
            }
        });
        Ok(Some(dane))
    }

    pub fn mode(&self) -> DaneMode {
        self.mode
    }

    /// Validates the trust anchor zone's SOA through the resolver.
    pub async fn probe(&self) -> Probe {
        match self.lookup(&self.probe_zone, RecordType::SOA).await {
            Answer::Secure(_) => Probe::Validates,
            Answer::Insecure => Probe::DoesNot(format!(
                "the SOA of {} came back without valid signatures",
                self.probe_zone
            )),
            Answer::NoRecords => Probe::DoesNot(format!("no SOA for {}", self.probe_zone)),
            Answer::Bogus(e) => Probe::DoesNot(format!(
                "the SOA of {} does not validate (the resolver probably strips DNSSEC records): {e}",
                self.probe_zone
            )),
            Answer::Failed(e) => Probe::DoesNot(format!("SOA lookup for {}: {e}", self.probe_zone)),
        }
    }

    /// Whether DANE lookups happen now: always with "on"; with "auto", while
    /// the last probe (at most [`PROBE_EVERY`] old) succeeded.
    pub async fn active(&self) -> bool {
        if self.mode == DaneMode::On {
            return true;
        }
        let mut state = self.state.lock().await;
        if let Some((ok, at)) = *state {
            if at.elapsed() < PROBE_EVERY {
                return ok;
            }
        }
        let probe = self.probe().await;
        let ok = probe == Probe::Validates;
        match (&probe, state.map(|(was, _)| was)) {
            (Probe::DoesNot(why), Some(true) | None) => {
                tracing::warn!(
                    "DANE: off (delivery.dane = \"auto\") until the resolver passes DNSSEC through: {why}"
                )
            }
            (Probe::Validates, Some(false) | None) => {
                tracing::info!(
                    "DANE: on (delivery.dane = \"auto\"): the resolver passes DNSSEC through"
                )
            }
            _ => {}
        }
        *state = Some((ok, Instant::now()));
        ok
    }

    /// RFC 7672 section 2.2 for one MX host of `domain`, reached on `port`.
    pub async fn host(&self, domain: &str, mx_host: &str, port: u16) -> Decision {
        if !self.active().await {
            return Decision::NotApplicable;
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let host = mx_host.trim_end_matches('.').to_ascii_lowercase();
        let Ok(domain_name) = Name::from_ascii(format!("{domain}.")) else {
            return Decision::NotApplicable;
        };
        match self.lookup(&domain_name, RecordType::MX).await {
            Answer::Secure(mxs) => {
                let listed = mxs.iter().any(|r| match r {
                    RData::MX(mx) => mx
                        .exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .eq_ignore_ascii_case(&host),
                    _ => false,
                });
                if !listed {
                    // The route did not come from this MX RRset (it changed
                    // between lookups): nothing Secure ties the host to it.
                    return Decision::NotApplicable;
                }
            }
            Answer::Insecure => return Decision::NotApplicable,
            // No MX: the domain is its own implicit MX (RFC 5321 5.1); its
            // address records below must then be Secure.
            Answer::NoRecords if host == domain => {}
            Answer::NoRecords => return Decision::NotApplicable,
            Answer::Bogus(e) => {
                return Decision::Defer(
                    DeferKind::Dnssec,
                    format!("the MX records of {domain} fail DNSSEC validation ({e})"),
                )
            }
            Answer::Failed(e) => {
                return Decision::Defer(
                    DeferKind::Dnssec,
                    format!("validated MX lookup for {domain} failed ({e})"),
                )
            }
        }
        let Ok(host_name) = Name::from_ascii(format!("{host}.")) else {
            return Decision::NotApplicable;
        };
        let v4 = self.lookup(&host_name, RecordType::A).await;
        let v6 = self.lookup(&host_name, RecordType::AAAA).await;
        let secure = |a: &Answer| matches!(a, Answer::Secure(_));
        if !secure(&v4) && !secure(&v6) {
            for a in [&v4, &v6] {
                match a {
                    Answer::Bogus(e) => {
                        return Decision::Defer(
                            DeferKind::Dnssec,
                            format!("the address of {host} fails DNSSEC validation ({e})"),
                        )
                    }
                    Answer::Failed(e) => {
                        return Decision::Defer(
                            DeferKind::Dnssec,
                            format!("validated address lookup for {host} failed ({e})"),
                        )
                    }
                    _ => {}
                }
            }
            return Decision::NotApplicable;
        }
        let Ok(tlsa_name) = Name::from_ascii(format!("_{port}._tcp.{host}.")) else {
            return Decision::NotApplicable;
        };
        match self.lookup(&tlsa_name, RecordType::TLSA).await {
            Answer::Secure(records) => {
                let tlsa: Vec<TLSA> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::TLSA(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                self.remember(&host, &tlsa_name, &tlsa);
                Decision::Verify(Arc::new(DaneVerifier::new(&tlsa, &host)))
            }
            Answer::Insecure | Answer::NoRecords => Decision::NotApplicable,
            Answer::Bogus(e) => Decision::Defer(
                DeferKind::Dnssec,
                format!("the TLSA records {tlsa_name} fail DNSSEC validation ({e})"),
            ),
            Answer::Failed(e) => Decision::Defer(
                DeferKind::Tlsa,
                format!("TLSA lookup {tlsa_name} failed ({e})"),
            ),
        }
    }

    fn remember(&self, host: &str, name: &Name, tlsa: &[TLSA]) {
        let strings = tlsa.iter().map(|t| format!("{name} IN TLSA {t}")).collect();
        let mut seen = self.tlsa_seen.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a relay talks to many hosts; losing an entry only loses
        // a report detail.
        if seen.len() >= 4096 {
            seen.clear();
        }
        seen.insert(host.to_string(), strings);
    }

    async fn lookup(&self, name: &Name, rtype: RecordType) -> Answer {
        match self.resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                let records: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect();
                if records.is_empty() {
                    return Answer::NoRecords;
                }
                if records.iter().all(|r| r.proof == Proof::Secure) {
                    Answer::Secure(records.into_iter().map(|r| r.data.clone()).collect())
                } else if let Some(r) = records.iter().find(|r| r.proof == Proof::Bogus) {
                    Answer::Bogus(format!("{} {} is bogus", r.name, rtype))
                } else {
                    Answer::Insecure
                }
            }
            Err(e) => classify_error(e),
        }
    }
}

impl DaneSource for Dane {
    fn host<'a>(
        &'a self,
        domain: &'a str,
        mx_host: &'a str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = DaneHost> + Send + 'a>> {
        Box::pin(async move {
            match Dane::host(self, domain, mx_host, port).await {
                Decision::NotApplicable => DaneHost::NotApplicable,
                Decision::Verify(v) => DaneHost::Verify(v),
                Decision::Defer(DeferKind::Dnssec, why) => {
                    DaneHost::Defer(ResultType::DnssecInvalid, why)
                }
                Decision::Defer(DeferKind::Tlsa, why) => {
                    DaneHost::Defer(ResultType::TlsaInvalid, why)
                }
            }
        })
    }

    fn policy_strings(&self, _domain: &str, mx_host: &str) -> Vec<String> {
        let host = mx_host.trim_end_matches('.').to_ascii_lowercase();
        let seen = self.tlsa_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&host).cloned().unwrap_or_default()
    }
}

fn classify_error(e: NetError) -> Answer {
    if e.is_no_records_found() {
        return Answer::NoRecords;
    }
    match &e {
        NetError::Dns(DnsError::DnssecBogus) => Answer::Bogus(e.to_string()),
        NetError::Dns(DnsError::Nsec { proof, .. }) if *proof == Proof::Bogus => {
            Answer::Bogus(e.to_string())
        }
        NetError::Dns(DnsError::Nsec { .. }) => Answer::NoRecords,
        _ => Answer::Failed(e.to_string()),
    }
}

/// A validating resolver on `delivery.resolver` (else the system's), with
/// the configured trust anchor; and the zone the probe checks.
fn validating_resolver(config: &Config) -> Result<(TokioResolver, Name), String> {
    let (servers, mut opts) = crate::dns::resolver_settings(config)?;
    opts.validate = true;
    let (anchors, probe_zone) = match &config.delivery.dnssec_trust_anchor {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "delivery.dnssec_trust_anchor: cannot read {}: {e}",
                    path.display()
                )
            })?;
            load_trust_anchor(&text)
                .map_err(|e| format!("delivery.dnssec_trust_anchor: {}: {e}", path.display()))?
        }
        None => (TrustAnchors::default(), Name::root()),
    };
    let resolver = TokioResolver::builder_with_config(servers, TokioRuntimeProvider::default())
        .with_options(opts)
        .with_trust_anchor(Arc::new(anchors))
        .build()
        .map_err(|e| format!("cannot set up the DNSSEC-validating resolver: {e}"))?;
    Ok((resolver, probe_zone))
}

/// DNSKEY records in zone-file form; the probe zone is the first key's
/// owner.
fn load_trust_anchor(text: &str) -> Result<(TrustAnchors, Name), String> {
    let entries = trust_anchor::Parser::new(text)
        .parse()
        .map_err(|e| format!("not DNSKEY records: {e}"))?;
    let mut anchors = TrustAnchors::empty();
    let mut zone = None;
    for entry in entries {
        #[allow(irrefutable_let_patterns)]
        let trust_anchor::Entry::DNSKEY(record) = entry
        else {
            continue;
        };
        let key = record.data().public_key();
        anchors.insert_with_name(key as &dyn PublicKey, record.name().into());
        zone.get_or_insert_with(|| record.name().clone());
    }
    let zone = zone.ok_or("no DNSKEY record")?;
    Ok((anchors, zone))
}

/// A usable TLSA record (RFC 7672 section 3.1).
#[derive(Debug, Clone)]
struct Association {
    spki: bool,
    matching: Matching,
    data: Vec<u8>,
}

impl Association {
    fn from_tlsa(t: &TLSA) -> Option<Association> {
        let spki = match t.selector {
            Selector::Full => false,
            Selector::Spki => true,
            _ => return None,
        };
        let len_ok = match t.matching {
            Matching::Raw => !t.cert_data.is_empty(),
            Matching::Sha256 => t.cert_data.len() == 32,
            Matching::Sha512 => t.cert_data.len() == 64,
            _ => false,
        };
        len_ok.then(|| Association {
            spki,
            matching: t.matching,
            data: t.cert_data.clone(),
        })
    }

    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = if self.spki {
            match spki_of(cert) {
                Some(s) => s,
                None => return false,
            }
        } else {
            cert.as_ref().to_vec()
        };
        match self.matching {
            Matching::Raw => selected == self.data,
            Matching::Sha256 => {
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &selected).as_ref()
                    == self.data
            }
            Matching::Sha512 => {
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &selected).as_ref()
                    == self.data
            }
            _ => false,
        }
    }
}

/// The DER SubjectPublicKeyInfo of a certificate; None when it is not
/// X.509 (the peer's bytes: never a panic).
fn spki_of(cert: &[u8]) -> Option<Vec<u8>> {
    crate::cert::spki(cert).ok()
}

/// rustls shows a `CertificateError::Other` by its Debug form, which
/// lands in the queue and events: make that the plain sentence.
struct NoMatch(String);

impl fmt::Debug for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoMatch {}

/// Checks a server certificate against Secure TLSA records.
pub struct DaneVerifier {
    ee: Vec<Association>,
    ta: Vec<Association>,
    /// Secure TLSA records exist but none is usable: TLS without
    /// authentication (RFC 7672 section 2.2).
    unauthenticated: bool,
    host: String,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for DaneVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DaneVerifier({}: {} DANE-EE, {} DANE-TA{})",
            self.host,
            self.ee.len(),
            self.ta.len(),
            if self.unauthenticated {
                ", none usable: TLS unauthenticated"
            } else {
                ""
            }
        )
    }
}

impl DaneVerifier {
    pub fn new(records: &[TLSA], host: &str) -> DaneVerifier {
        let mut ee = Vec::new();
        let mut ta = Vec::new();
        for t in records {
            let target = match t.cert_usage {
                CertUsage::DaneEe => &mut ee,
                CertUsage::DaneTa => &mut ta,
                // PKIX-TA/PKIX-EE (0/1) are not for SMTP (RFC 7672 3.1.3).
                _ => continue,
            };
            if let Some(a) = Association::from_tlsa(t) {
                target.push(a);
            }
        }
        DaneVerifier {
            unauthenticated: ee.is_empty() && ta.is_empty(),
            ee,
            ta,
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }

    /// True when no record was usable and any certificate is accepted
    /// (TLS is still required).
    pub fn unauthenticated(&self) -> bool {
        self.unauthenticated
    }

    fn verify_ta(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let Some(pos) = intermediates
            .iter()
            .position(|c| self.ta.iter().any(|a| a.matches(c)))
        else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(intermediates[pos].clone())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("DANE-TA verifier: {e}")))?;
        // The chain below the trust anchor, as presented.
        let below = &intermediates[..pos];
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        webpki
            .verify_server_cert(end_entity, below, &name, &[], now)
            .map(|_| ())
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.unauthenticated {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-EE: the key or certificate is pinned; names and dates are
        // not checked (RFC 7672 section 3.1.1).
        if self.ee.iter().any(|a| a.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        if !self.ta.is_empty() {
            match self.verify_ta(end_entity, intermediates, now) {
                Ok(()) => return Ok(ServerCertVerified::assertion()),
                Err(e) if self.ee.is_empty() => return Err(e),
                Err(_) => {}
            }
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NoMatch(format!(
                "the certificate matches none of the {} usable TLSA records of {}",
                self.ee.len() + self.ta.len(),
                self.host
            )))),
        )))
    }

    super::tls::ring_handshake_signatures!(provider);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> TLSA {
        TLSA::new(usage.into(), selector.into(), matching.into(), data)
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    fn sha512(b: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, b)
            .as_ref()
            .to_vec()
    }

    struct Chain {
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    fn self_signed(name: &str) -> Chain {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Chain {
            certs: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A leaf for `name` issued by a fresh CA; the chain sent is leaf, CA.
    fn ca_issued(name: &str) -> Chain {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![name.into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Chain {
            certs: vec![leaf.der().clone(), ca_cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A real TLS handshake over loopback: the server presents `chain`,
    /// the client checks it with `verifier` and sends SNI `sni`. Ok when
    /// application data made it through.
    async fn handshake(chain: &Chain, verifier: DaneVerifier, sni: &str) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.certs.clone(), chain.key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"220 ok\r\n").await;
                let _ = tls.shutdown().await;
            }
        });
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let result = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
            if buf == b"220 ok\r\n" {
                Ok(())
            } else {
                Err(format!("unexpected data {buf:?}"))
            }
        }
        .await;
        let _ = server_task.await;
        result
    }

    #[tokio::test]
    async fn dane_ee_matches_spki_and_full_certificate() {
        let chain = self_signed("mx.example.net");
        let spki = spki_of(&chain.certs[0]).unwrap();
        let cert = chain.certs[0].as_ref().to_vec();
        for (sel, mtype, data) in [
            (1, 1, sha256(&spki)),
            (1, 2, sha512(&spki)),
            (1, 0, spki.clone()),
            (0, 1, sha256(&cert)),
            (0, 2, sha512(&cert)),
            (0, 0, cert.clone()),
        ] {
            let v = DaneVerifier::new(&[tlsa(3, sel, mtype, data)], "mx.example.net");
            assert!(!v.unauthenticated());
            handshake(&chain, v, "mx.example.net")
                .await
                .unwrap_or_else(|e| panic!("3 {sel} {mtype}: {e}"));
        }
    }

    #[tokio::test]
    async fn dane_ee_ignores_names_and_expiry() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["elsewhere.example.org".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let chain = Chain {
            certs: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        };
        let v = DaneVerifier::new(
            &[tlsa(3, 1, 1, sha256(&spki_of(&chain.certs[0]).unwrap()))],
            "mx.example.net",
        );
        handshake(&chain, v, "mx.example.net").await.unwrap();
    }

    #[tokio::test]
    async fn dane_ee_mismatch_fails_the_handshake() {
        let chain = self_signed("mx.example.net");
        let other = self_signed("mx.example.net");
        let v = DaneVerifier::new(
            &[tlsa(3, 1, 1, sha256(&spki_of(&other.certs[0]).unwrap()))],
            "mx.example.net",
        );
        let err = handshake(&chain, v, "mx.example.net").await.unwrap_err();
        assert!(err.contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn dane_ta_chains_to_the_anchor_with_the_mx_name() {
        let chain = ca_issued("mx.example.net");
        let ca = chain.certs[1].as_ref().to_vec();
        let ta = || vec![tlsa(2, 0, 1, sha256(&ca))];
        handshake(
            &chain,
            DaneVerifier::new(&ta(), "mx.example.net"),
            "mx.example.net",
        )
        .await
        .unwrap();
        let by_spki = vec![tlsa(2, 1, 2, sha512(&spki_of(&ca).unwrap()))];
        handshake(
            &chain,
            DaneVerifier::new(&by_spki, "mx.example.net"),
            "mx.example.net",
        )
        .await
        .unwrap();
        // Same anchor, but the certificate is not for this MX host.
        let err = handshake(
            &chain,
            DaneVerifier::new(&ta(), "mx2.example.net"),
            "mx2.example.net",
        )
        .await
        .unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        // A TA record matching the leaf itself is not an anchor for it...
        let leaf_as_ta = vec![tlsa(2, 0, 1, sha256(chain.certs[0].as_ref()))];
        assert!(handshake(
            &chain,
            DaneVerifier::new(&leaf_as_ta, "mx.example.net"),
            "mx.example.net"
        )
        .await
        .is_err());
        // ...and an unrelated CA is not one either.
        let other = ca_issued("mx.example.net");
        let wrong = vec![tlsa(2, 0, 1, sha256(other.certs[1].as_ref()))];
        assert!(handshake(
            &chain,
            DaneVerifier::new(&wrong, "mx.example.net"),
            "mx.example.net"
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn only_unusable_records_mean_tls_without_authentication() {
        let chain = self_signed("mx.example.net");
        let digest = sha256(chain.certs[0].as_ref());
        // PKIX usages, an unknown selector, a truncated digest.
        let records = [
            tlsa(0, 0, 1, digest.clone()),
            tlsa(1, 0, 1, digest.clone()),
            tlsa(3, 7, 1, digest.clone()),
            tlsa(3, 0, 1, digest[..20].to_vec()),
            tlsa(3, 0, 9, digest.clone()),
        ];
        let v = DaneVerifier::new(&records, "mx.example.net");
        assert!(v.unauthenticated());
        handshake(&chain, v, "mx.example.net").await.unwrap();
        // One usable, non-matching record next to them: authenticated, fails.
        let mut with_usable = records.to_vec();
        with_usable.push(tlsa(3, 1, 1, vec![0; 32]));
        let v = DaneVerifier::new(&with_usable, "mx.example.net");
        assert!(!v.unauthenticated());
        assert!(handshake(&chain, v, "mx.example.net").await.is_err());
    }

    #[test]
    fn dane_setting_parses_and_defaults_to_auto() {
        use crate::config::DeliveryConfig;
        let d: DeliveryConfig = toml::from_str("").unwrap();
        assert_eq!(d.dane, DaneMode::Auto);
        assert!(d.dnssec_trust_anchor.is_none());
        for (text, mode) in [
            ("on", DaneMode::On),
            ("off", DaneMode::Off),
            ("auto", DaneMode::Auto),
        ] {
            let d: DeliveryConfig = toml::from_str(&format!("dane = \"{text}\"")).unwrap();
            assert_eq!(d.dane, mode);
        }
        let e = toml::from_str::<DeliveryConfig>("dane = \"yes\"").unwrap_err();
        assert!(e.to_string().contains("dane"), "{e}");
    }

    #[test]
    fn spki_of_garbage_is_none() {
        assert!(spki_of(b"").is_none());
        assert!(spki_of(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_none());
        assert!(spki_of(&[0x30, 0x82, 0xff]).is_none());
    }

    #[test]
    fn trust_anchor_file_names_the_probe_zone() {
        let text =
            "dane.test.\t3600\tIN\tDNSKEY\t257 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=\n";
        let (anchors, zone) = load_trust_anchor(text).unwrap();
        assert_eq!(zone.to_ascii(), "dane.test.");
        assert_eq!(anchors.len(), 0, "not a root key");
        assert!(load_trust_anchor("").is_err());
        assert!(load_trust_anchor("dane.test. IN A 127.0.0.1\n").is_err());
    }
}
