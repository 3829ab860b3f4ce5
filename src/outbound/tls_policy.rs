//! The outbound TLS policy of one delivery: which policy applies to each MX
//! host, and what the SMTP client must do there (verify or not, require TLS
//! or not, refuse the host), and what happened, for TLS-RPT (RFC 8460).
//!
//! Precedence (issue 13, DESIGN.md "Outbound"):
//! 1. DANE (RFC 7672), when `dane.rs` says it applies to the MX host;
//! 2. MTA-STS (RFC 8461), when the recipient domain has a policy in
//!    `enforce` or `testing` mode;
//! 3. the sending domain's `tls` setting (`enforced` / `opportunistic`).
//!
//! `tls = "enforced"` stays the floor: a policy that is only reporting
//! (MTA-STS `testing`) never lowers it to plaintext.
//!
//! The decision itself ([`decide`]) is pure; lookups happen in `mta_sts.rs`
//! and `dane.rs`, and outcomes go to one [`TlsOutcomeSink`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The sending domain's own setting, the floor of every decision.
pub use crate::config::TlsPolicy as Floor;

/// Which policy governed a delivery attempt: `detail.tls_policy` in events
/// and the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Applied {
    Dane,
    MtaSts,
    Enforced,
    Opportunistic,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Dane => "dane",
            Applied::MtaSts => "mta-sts",
            Applied::Enforced => "enforced",
            Applied::Opportunistic => "opportunistic",
        }
    }

    fn from_floor(floor: Floor) -> Applied {
        match floor {
            Floor::Enforced => Applied::Enforced,
            Floor::Opportunistic => Applied::Opportunistic,
        }
    }
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 8460 section 4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

impl fmt::Display for ResultType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What DANE says about one MX host. `dane.rs` produces it; until DANE is
/// configured it is always `NotApplicable`.
#[derive(Clone)]
pub enum DaneHost {
    /// No usable (DNSSEC-secure) TLSA records: the next policy decides.
    NotApplicable,
    /// Verify the certificate with this verifier (TLSA matching); TLS is
    /// required.
    Verify(Arc<dyn ServerCertVerifier>),
    /// DANE applies but cannot be satisfied now (Bogus answer, failed
    /// lookup on a signed chain): defer, never fall back to plaintext.
    Defer(ResultType, String),
}

impl fmt::Debug for DaneHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaneHost::NotApplicable => f.write_str("NotApplicable"),
            DaneHost::Verify(_) => f.write_str("Verify(..)"),
            DaneHost::Defer(t, why) => write!(f, "Defer({t}, {why:?})"),
        }
    }
}

/// The source of DANE decisions, filled by `dane.rs`. Called once per MX
/// host of a delivery to an MX destination (not for static routes or the
/// smarthost).
pub trait DaneSource: Send + Sync {
    fn host<'a>(
        &'a self,
        domain: &'a str,
        mx_host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = DaneHost> + Send + 'a>>;

    /// The TLSA records (presentation form) behind a decision, for TLS-RPT
    /// `policy-string`; empty when unknown.
    fn policy_strings(&self, _domain: &str, _mx_host: &str) -> Vec<String> {
        Vec::new()
    }
}

/// MTA-STS mode (RFC 8461 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

impl StsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// The parts of an MTA-STS policy the decision needs (see `mta_sts.rs`
/// for fetching, parsing and caching).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsView {
    pub mode: StsMode,
    /// `mx:` patterns, lowercased, `*.` wildcards allowed.
    pub mx: Vec<String>,
    /// The policy text's lines, for TLS-RPT `policy-string`.
    pub policy_strings: Vec<String>,
}

impl StsView {
    /// RFC 8461 section 4.1: a pattern matches the MX host name exactly, or
    /// `*.` matches exactly one leftmost label.
    pub fn mx_matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| mx_pattern_matches(p, &host))
    }
}

/// One `mx:` pattern against a lowercased host name without the final dot.
pub fn mx_pattern_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == suffix,
            None => false,
        },
        None => host == pattern,
    }
}

/// What MTA-STS says for the whole recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsState {
    /// No policy (none published, `delivery.mta_sts = false`, or not an MX
    /// destination).
    Absent,
    /// A valid policy (fresh or from the cache).
    Policy(Arc<StsView>),
    /// A TXT record announces a policy, but it could not be fetched and no
    /// cached one is valid: delivery goes on under the next policy, and the
    /// failure is reported (RFC 8461 section 5, RFC 8460 section 4.3.2).
    FetchFailed(ResultType, String),
}

/// The certificate check for one connection.
#[derive(Clone)]
pub enum Verification {
    /// Any certificate (the handshake signature is still checked): the
    /// `enforced` and `opportunistic` policies.
    AnyCertificate,
    /// WebPKI for the MX host name (webpki-roots + `delivery.extra_ca_file`).
    WebPki,
    /// DANE's verifier.
    Dane(Arc<dyn ServerCertVerifier>),
}

impl fmt::Debug for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verification::AnyCertificate => "AnyCertificate",
            Verification::WebPki => "WebPki",
            Verification::Dane(_) => "Dane(..)",
        })
    }
}

/// The RFC 8460 policy an outcome is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    /// `sts`, `tlsa` or `no-policy-found`.
    pub policy_type: &'static str,
    /// The recipient domain.
    pub policy_domain: String,
    pub policy_strings: Vec<String>,
    /// `mx-host` patterns of an STS policy.
    pub mx_patterns: Vec<String>,
}

/// What the client must do at one MX host.
#[derive(Debug, Clone)]
pub struct HostDecision {
    pub applied: Applied,
    pub verification: Verification,
    /// No plaintext: STARTTLS must be offered and succeed with TLS 1.2+.
    pub require_tls: bool,
    /// Verification failures are only recorded (MTA-STS `testing`): the
    /// session goes on as the floor allows.
    pub report_only: bool,
    /// Do not connect at all: the host is not allowed (MTA-STS `enforce`
    /// and an MX that matches no pattern) or DANE defers. The attempt is a
    /// temporary failure with this reason.
    pub refuse: Option<(ResultType, String)>,
    /// A failure known before connecting that `report_only` lets pass
    /// (MTA-STS `testing` and an MX that matches no pattern).
    pub known_failure: Option<(ResultType, String)>,
    pub policy: PolicyRef,
}

impl HostDecision {
    /// Today's behaviour: the sending domain's setting alone.
    pub fn floor(floor: Floor, domain: &str) -> HostDecision {
        HostDecision {
            applied: Applied::from_floor(floor),
            verification: Verification::AnyCertificate,
            require_tls: floor == Floor::Enforced,
            report_only: false,
            refuse: None,
            known_failure: None,
            policy: PolicyRef {
                policy_type: "no-policy-found",
                policy_domain: domain.to_ascii_lowercase(),
                policy_strings: Vec::new(),
                mx_patterns: Vec::new(),
            },
        }
    }
}

/// The decision for one MX host of `domain`, by precedence.
pub fn decide(
    floor: Floor,
    domain: &str,
    sts: &StsState,
    dane: DaneHost,
    mx_host: &str,
) -> HostDecision {
    let mut d = HostDecision::floor(floor, domain);
    match dane {
        DaneHost::Verify(verifier) => {
            d.applied = Applied::Dane;
            d.verification = Verification::Dane(verifier);
            d.require_tls = true;
            d.policy.policy_type = "tlsa";
            return d;
        }
        DaneHost::Defer(result, why) => {
            d.applied = Applied::Dane;
            d.require_tls = true;
            d.policy.policy_type = "tlsa";
            d.refuse = Some((result, format!("DANE: {why}")));
            return d;
        }
        DaneHost::NotApplicable => {}
    }
    let view = match sts {
        StsState::Policy(view) if view.mode != StsMode::None => view,
        _ => return d,
    };
    d.policy.policy_type = "sts";
    d.policy.policy_strings = view.policy_strings.clone();
    d.policy.mx_patterns = view.mx.clone();
    d.verification = Verification::WebPki;
    let host_ok = view.mx_matches(mx_host);
    let mismatch = || {
        (
            ResultType::ValidationFailure,
            format!(
                "MTA-STS: MX host {} matches none of the policy's mx patterns ({})",
                mx_host.trim_end_matches('.'),
                view.mx.join(", ")
            ),
        )
    };
    match view.mode {
        StsMode::Enforce => {
            d.applied = Applied::MtaSts;
            d.require_tls = true;
            if !host_ok {
                d.refuse = Some(mismatch());
            }
        }
        StsMode::Testing => {
            // Reporting only: the floor decides whether TLS is required and
            // `applied` stays the floor's, since it is what governed.
            d.report_only = true;
            if !host_ok {
                d.known_failure = Some(mismatch());
            }
        }
        StsMode::None => {}
    }
    d
}

/// How a TLS session attempt at one host ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionResult {
    /// A TLS session that passed the policy's checks.
    Success,
    /// The policy's checks failed (or, with `report_only`, would have).
    Failure(ResultType, String),
    /// No TLS was attempted and the policy did not ask for it (plaintext
    /// under `opportunistic`, a connection error before STARTTLS): nothing
    /// for TLS-RPT to count.
    NotApplicable,
}

/// One delivery attempt's TLS outcome at one MX host: what TLS-RPT counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOutcome {
    /// Unix ms.
    pub at: i64,
    pub applied: Applied,
    pub policy: PolicyRef,
    /// The MX host name the client connected to (`receiving-mx-hostname`);
    /// empty for a failure of the whole domain's policy (an MTA-STS policy
    /// that could not be fetched, reported once per delivery attempt).
    pub mx_host: String,
    /// `receiving-ip`.
    pub receiving_ip: Option<std::net::IpAddr>,
    pub result: SessionResult,
    /// True when the failure did not stop delivery (MTA-STS `testing`).
    pub report_only: bool,
}

/// Where every delivery attempt's TLS outcome goes: one call per
/// connection attempt at an MX host (or per refused host, or per policy
/// fetch failure); not for static routes or the smarthost. TLS-RPT plugs in with `Runner::with_tls_outcome_sink`;
/// the runner counts `trackrelay_tls_policy_*` metrics beside it. Called
/// on the delivery path: it must not block.
pub trait TlsOutcomeSink: Send + Sync {
    fn record(&self, outcome: &TlsOutcome);
}

/// The default: outcomes are counted in metrics only.
#[derive(Debug, Default)]
pub struct NoopSink;

impl TlsOutcomeSink for NoopSink {
    fn record(&self, _outcome: &TlsOutcome) {}
}

/// The RFC 8460 result type of a failed certificate check.
pub fn classify_certificate_error(applied: Applied, e: &rustls::Error) -> ResultType {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ResultType::CertificateHostMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ResultType::CertificateExpired
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                if applied == Applied::Dane {
                    ResultType::ValidationFailure
                } else {
                    ResultType::CertificateNotTrusted
                }
            }
            _ => ResultType::ValidationFailure,
        },
        _ => ResultType::ValidationFailure,
    }
}

/// Wraps a verifier so the first certificate error is kept for the outcome
/// (the handshake error text loses its kind); with `report_only`, the
/// error is recorded but the certificate accepted.
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    report_only: bool,
    failure: Mutex<Option<rustls::Error>>,
}

impl RecordingVerifier {
    pub fn new(inner: Arc<dyn ServerCertVerifier>, report_only: bool) -> Self {
        RecordingVerifier {
            inner,
            report_only,
            failure: Mutex::new(None),
        }
    }

    /// The certificate error seen, if any.
    pub fn failure(&self) -> Option<rustls::Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e.clone());
                if self.report_only {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(mode: StsMode, mx: &[&str]) -> StsState {
        StsState::Policy(Arc::new(StsView {
            mode,
            mx: mx.iter().map(|s| s.to_string()).collect(),
            policy_strings: vec![],
        }))
    }

    #[test]
    fn wildcard_matches_one_label_only() {
        assert!(mx_pattern_matches("*.example.net", "mx1.example.net"));
        assert!(!mx_pattern_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_pattern_matches("*.example.net", "example.net"));
        assert!(mx_pattern_matches("mx.example.net", "mx.example.net"));
        assert!(mx_pattern_matches("MX.Example.NET.", "mx.example.net"));
        assert!(!mx_pattern_matches("mx.example.net", "mx.example.net.evil"));
        let view = StsView {
            mode: StsMode::Enforce,
            mx: vec!["*.example.net".into()],
            policy_strings: vec![],
        };
        assert!(view.mx_matches("MX1.example.net."));
    }

    #[test]
    fn no_policy_keeps_the_floor() {
        let d = decide(
            Floor::Opportunistic,
            "x.test",
            &StsState::Absent,
            DaneHost::NotApplicable,
            "mx.x.test",
        );
        assert_eq!(d.applied, Applied::Opportunistic);
        assert!(!d.require_tls);
        assert!(matches!(d.verification, Verification::AnyCertificate));
        let d = decide(
            Floor::Enforced,
            "x.test",
            &StsState::Absent,
            DaneHost::NotApplicable,
            "mx.x.test",
        );
        assert_eq!(d.applied, Applied::Enforced);
        assert!(d.require_tls);
        let failed = StsState::FetchFailed(ResultType::StsPolicyFetchError, "down".into());
        let d = decide(
            Floor::Opportunistic,
            "x.test",
            &failed,
            DaneHost::NotApplicable,
            "mx.x.test",
        );
        assert_eq!(d.applied, Applied::Opportunistic);
    }

    #[test]
    fn enforce_verifies_and_refuses_foreign_mx() {
        let policy = sts(StsMode::Enforce, &["mx.x.test"]);
        let d = decide(
            Floor::Opportunistic,
            "x.test",
            &policy,
            DaneHost::NotApplicable,
            "mx.x.test",
        );
        assert_eq!(d.applied, Applied::MtaSts);
        assert!(d.require_tls && !d.report_only && d.refuse.is_none());
        assert!(matches!(d.verification, Verification::WebPki));
        assert_eq!(d.policy.policy_type, "sts");
        let d = decide(
            Floor::Opportunistic,
            "x.test",
            &policy,
            DaneHost::NotApplicable,
            "other.test",
        );
        assert_eq!(d.refuse.map(|r| r.0), Some(ResultType::ValidationFailure));
    }

    #[test]
    fn testing_reports_only_and_keeps_floor() {
        let policy = sts(StsMode::Testing, &["mx.x.test"]);
        let d = decide(
            Floor::Opportunistic,
            "x.test",
            &policy,
            DaneHost::NotApplicable,
            "other.test",
        );
        assert_eq!(d.applied, Applied::Opportunistic);
        assert!(d.report_only && !d.require_tls && d.refuse.is_none());
        assert!(d.known_failure.is_some());
        let d = decide(
            Floor::Enforced,
            "x.test",
            &policy,
            DaneHost::NotApplicable,
            "mx.x.test",
        );
        assert!(d.require_tls, "enforced stays the floor under testing");
        let none = sts(StsMode::None, &[]);
        let d = decide(
            Floor::Opportunistic,
            "x.test",
            &none,
            DaneHost::NotApplicable,
            "mx.x.test",
        );
        assert!(matches!(d.verification, Verification::AnyCertificate));
    }

    #[test]
    fn dane_wins_over_mta_sts() {
        let policy = sts(StsMode::Enforce, &["mx.x.test"]);
        let defer = DaneHost::Defer(ResultType::DnssecInvalid, "bogus".into());
        let d = decide(Floor::Opportunistic, "x.test", &policy, defer, "mx.x.test");
        assert_eq!(d.applied, Applied::Dane);
        assert_eq!(d.refuse.map(|r| r.0), Some(ResultType::DnssecInvalid));
        assert_eq!(d.policy.policy_type, "tlsa");
    }

    #[test]
    fn names() {
        assert_eq!(Applied::MtaSts.as_str(), "mta-sts");
        assert_eq!(
            ResultType::StarttlsNotSupported.as_str(),
            "starttls-not-supported"
        );
        assert_eq!(
            classify_certificate_error(
                Applied::MtaSts,
                &rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            ),
            ResultType::CertificateHostMismatch
        );
    }
}
