//! MTA-STS (RFC 8461): a recipient domain's policy, looked up, fetched,
//! parsed and cached, for `tls_policy::decide`.
//!
//! - `_mta-sts.{domain}` TXT (`v=STSv1; id=...`) through the configured
//!   resolver announces a policy and its version.
//! - The policy is fetched from `https://mta-sts.{domain}/.well-known/mta-sts.txt`
//!   with WebPKI verification (webpki-roots + `delivery.extra_ca_file`),
//!   no redirects, at most 64 KiB, within 20 s; the host is resolved through
//!   the same resolver as the MX.
//! - Policies are cached in the store until `max_age` (at most a year) runs
//!   out; they are fetched again when the TXT id changes or three quarters
//!   of `max_age` have passed. A failed fetch keeps a cached policy that is
//!   still valid, and is not retried for 5 minutes.
//! - RFC 8461 section 3.3 asks senders to refresh policies before they
//!   expire: [`MtaSts::run`] does so in the background every hour (and at
//!   start) for the policies a delivery used within their max_age, so a
//!   rarely mailed domain's next message does not wait for a fetch. Those
//!   unused for longer expire, and are dropped once expired for more than
//!   their max_age.
//! - Tests reach the policy server on another port through
//!   `TRACKRELAY_TEST_MTA_STS_PORT` (never set in production; logged).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use mail_auth::mta_sts::MtaSts as StsRecord;
use mail_auth::{DnsError, MessageAuthenticator};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::route::NullCache;
use super::tls_policy::{ResultType, StsMode, StsState, StsView};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::domains::CachedPolicy;
use crate::store::{self, Store};

/// The HTTPS port of policy fetches, for tests only (443 otherwise).
pub const PORT_ENV: &str = "TRACKRELAY_TEST_MTA_STS_PORT";
/// RFC 8461 section 3.2: max_age is at most 31557600 (about a year).
pub const MAX_AGE_CAP: u64 = 31_557_600;
/// Real policies are a few hundred bytes; anything this large is not one.
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// The whole fetch: resolving, connecting, TLS, the response.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// A domain whose policy could not be fetched is not tried again sooner,
/// so a dead policy host does not slow every delivery attempt down.
const FAILURE_BACKOFF: Duration = Duration::from_secs(300);
/// How often the background refresh looks for policies due a fetch.
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Fetches per background pass, so a large cache is refreshed over several
/// passes rather than in one burst (the soonest to expire go first).
const REFRESH_BATCH: usize = 100;
/// A delivery's use of a policy is written at most this often per domain
/// (ms): the background refresh only needs to know it is in use, and a
/// write per delivery would cost the queue.
const USE_MARK_INTERVAL_MS: i64 = 3_600_000;

/// Who asks for a policy: a delivery (which marks it used) or the
/// background refresh (which does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Delivery,
    Refresh,
}

/// A parsed policy (RFC 8461 section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: StsMode,
    /// Lowercased, without the final dot.
    pub mx: Vec<String>,
    /// Seconds, capped at [`MAX_AGE_CAP`].
    pub max_age: u64,
}

/// Parses a policy body strictly: `version: STSv1`, one `mode`
/// (enforce/testing/none), one `max_age`, at least one `mx` unless the mode
/// is `none`; unknown keys are ignored as the RFC asks. Lines end in CRLF
/// or LF.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: not \"key: value\"", n + 1))?;
        let value = value.trim_matches([' ', '\t']);
        let once = |slot: &Option<&str>| match slot {
            Some(_) => Err(format!("line {}: {key} given twice", n + 1)),
            None => Ok(()),
        };
        match key {
            "version" => {
                once(&version)?;
                version = Some(value);
            }
            "mode" => {
                once(&mode.map(|_: StsMode| ""))?;
                mode = Some(match value {
                    "enforce" => StsMode::Enforce,
                    "testing" => StsMode::Testing,
                    "none" => StsMode::None,
                    other => return Err(format!("line {}: unknown mode {other:?}", n + 1)),
                });
            }
            "max_age" => {
                once(&max_age.map(|_: u64| ""))?;
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(format!(
                        "line {}: max_age {value:?} is not 1 to 10 digits",
                        n + 1
                    ));
                }
                let secs: u64 = value
                    .parse()
                    .map_err(|e| format!("line {}: max_age: {e}", n + 1))?;
                max_age = Some(secs.min(MAX_AGE_CAP));
            }
            "mx" => {
                if !valid_mx_pattern(value) {
                    return Err(format!("line {}: {value:?} is not an mx pattern", n + 1));
                }
                mx.push(value.trim_end_matches('.').to_ascii_lowercase());
            }
            // RFC 8461 3.2: extension keys are ignored.
            _ => {}
        }
    }
    match version {
        Some("STSv1") => {}
        Some(v) => return Err(format!("version {v:?} is not STSv1")),
        None => return Err("no version".into()),
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != StsMode::None {
        return Err("no mx pattern".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// A host name, or `*.` and a host name; labels of letters, digits and
/// hyphens.
fn valid_mx_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p).trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Policy {
    /// What `tls_policy::decide` needs, with the policy's lines for TLS-RPT.
    pub fn view(&self, text: &str) -> StsView {
        StsView {
            mode: self.mode,
            mx: self.mx.clone(),
            policy_strings: text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// A cached policy is fetched again once this much of its max_age is gone.
fn refresh_due(c: &CachedPolicy, now: i64) -> bool {
    let life = (c.expires_at - c.fetched_at).max(0);
    now >= c.fetched_at + life / 4 * 3
}

pub struct MtaSts {
    store: Store,
    resolver: Arc<MessageAuthenticator>,
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    metrics: Arc<Metrics>,
    /// One lookup per domain at a time: concurrent deliveries wait for the
    /// first one's fetch instead of fetching too.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Domains whose last fetch failed, and why, until when.
    failures: Mutex<HashMap<String, (Instant, ResultType, String)>>,
}

impl MtaSts {
    pub fn new(
        config: &Config,
        store: Store,
        resolver: Arc<MessageAuthenticator>,
        metrics: Arc<Metrics>,
    ) -> Result<MtaSts, String> {
        let roots = super::tls::root_store(config.delivery.extra_ca())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let port = match std::env::var(PORT_ENV) {
            Ok(p) => {
                let port = p
                    .parse()
                    .map_err(|_| format!("{PORT_ENV}: {p:?} is not a port"))?;
                tracing::warn!(
                    "{PORT_ENV}: MTA-STS policies are fetched from port {port} (tests only)"
                );
                port
            }
            Err(_) => 443,
        };
        Ok(MtaSts {
            store,
            resolver,
            tls: Arc::new(tls),
            port,
            metrics,
            locks: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The policy that applies to mail for `domain` now.
    pub async fn state(&self, domain: &str) -> StsState {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let lock = self.lock_for(&domain);
        let _one_at_a_time = lock.lock().await;
        self.lookup(&domain, Trigger::Delivery).await
    }

    /// Fetches `domain`'s policy again if it is due, through the same path
    /// (and the same per-domain lock) as deliveries.
    async fn refresh(&self, domain: &str) {
        let lock = self.lock_for(domain);
        let _one_at_a_time = lock.lock().await;
        self.lookup(domain, Trigger::Refresh).await;
    }

    /// The background refresh: a pass at start, then one every hour, until
    /// `shutdown` turns true (a pass in flight is abandoned then: what it
    /// fetched is stored, the rest waits for the next start).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = self.refresh_pass() => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Drops the policies long expired, then refreshes up to
    /// [`REFRESH_BATCH`] of those due.
    async fn refresh_pass(&self) {
        let now = store::now_ms();
        match self.store.drop_stale_sts(now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    policies = n,
                    "MTA-STS: dropped cached policies expired for longer than their max_age"
                );
                self.metrics.tls_policy.sts_lookups_add("dropped", n as u64);
            }
            Err(e) => tracing::error!("dropping stale MTA-STS policies: {e}"),
        }
        let due = match self.store.sts_refresh_due(now, REFRESH_BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("reading the MTA-STS policies due a refresh: {e}");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        tracing::info!(
            policies = due.len(),
            "MTA-STS: refreshing cached policies ahead of expiry"
        );
        for row in due {
            self.refresh(&row.domain).await;
        }
    }

    async fn lookup(&self, domain: &str, trigger: Trigger) -> StsState {
        let now = store::now_ms();
        let cached = self.cached(domain, now).await;
        if trigger == Trigger::Delivery {
            if let Some((c, _)) = &cached {
                if c.used_at < now - USE_MARK_INTERVAL_MS {
                    self.mark_used(domain, now).await;
                }
            }
        }
        let as_state =
            |(c, p): &(CachedPolicy, Policy)| StsState::Policy(Arc::new(p.view(&c.policy)));
        let id = match self.txt_id(domain).await {
            Ok(Some(id)) => id,
            // RFC 8461 section 5.1: a valid cached policy outlives its TXT
            // record (which an attacker could strip).
            Ok(None) => {
                self.count(if cached.is_some() { "cached" } else { "none" });
                return cached.as_ref().map_or(StsState::Absent, as_state);
            }
            Err(why) => {
                tracing::info!(domain, "MTA-STS TXT lookup failed: {why}");
                self.count(if cached.is_some() { "cached" } else { "none" });
                return cached.as_ref().map_or(StsState::Absent, as_state);
            }
        };
        if let Some(c) = cached
            .as_ref()
            .filter(|(c, _)| c.policy_id == id && !refresh_due(c, now))
        {
            self.count("cached");
            return as_state(c);
        }
        let failure = match self.recent_failure(domain) {
            Some(f) => f,
            None => match self.fetch(domain).await {
                Ok(text) => match parse_policy(&text) {
                    Ok(policy) => {
                        let max_age_ms = (policy.max_age as i64).saturating_mul(1000);
                        let row = CachedPolicy {
                            domain: domain.to_string(),
                            policy_id: id,
                            policy: text.clone(),
                            fetched_at: now,
                            expires_at: now.saturating_add(max_age_ms),
                            // A refresh keeps the row's own (the upsert
                            // keeps the later of the two).
                            used_at: if trigger == Trigger::Delivery { now } else { 0 },
                        };
                        let result = self.store.put_sts_policy(row).await;
                        if let Err(e) = result {
                            tracing::error!(domain, "storing the MTA-STS policy: {e}");
                        }
                        tracing::info!(
                            domain,
                            mode = policy.mode.as_str(),
                            max_age = policy.max_age,
                            background = trigger == Trigger::Refresh,
                            "MTA-STS policy fetched"
                        );
                        self.count(match trigger {
                            Trigger::Delivery => "fetched",
                            Trigger::Refresh => "refreshed",
                        });
                        return StsState::Policy(Arc::new(policy.view(&text)));
                    }
                    Err(e) => self.remember_failure(
                        domain,
                        ResultType::StsPolicyInvalid,
                        format!("MTA-STS policy of {domain} is invalid: {e}"),
                    ),
                },
                Err((kind, why)) => self.remember_failure(domain, kind, why),
            },
        };
        match cached {
            Some(c) => {
                tracing::warn!(domain, "{}; keeping the cached policy", failure.1);
                self.count("kept_cached");
                as_state(&c)
            }
            None => {
                tracing::warn!(domain, "{}", failure.1);
                self.count("failed");
                StsState::FetchFailed(failure.0, failure.1)
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics.tls_policy.sts_lookup(result);
    }

    async fn mark_used(&self, domain: &str, now: i64) {
        let result = self.store.mark_sts_used(domain, now).await;
        if let Err(e) = result {
            tracing::error!(domain, "marking the MTA-STS policy used: {e}");
        }
    }

    fn lock_for(&self, domain: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Entries nobody waits on are dropped, so the map stays as small
        // as the set of domains being delivered to right now.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(domain.to_string()).or_default().clone()
    }

    fn recent_failure(&self, domain: &str) -> Option<(ResultType, String)> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        failures.retain(|_, (until, _, _)| *until > now);
        failures.get(domain).map(|(_, k, w)| (*k, w.clone()))
    }

    fn remember_failure(
        &self,
        domain: &str,
        kind: ResultType,
        why: String,
    ) -> (ResultType, String) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.insert(
            domain.to_string(),
            (Instant::now() + FAILURE_BACKOFF, kind, why.clone()),
        );
        (kind, why)
    }

    /// The cached policy, if still valid and readable.
    async fn cached(&self, domain: &str, now: i64) -> Option<(CachedPolicy, Policy)> {
        let row = match self.store.sts_policy(domain).await {
            Ok(row) => row?,
            Err(e) => {
                tracing::error!(domain, "reading the MTA-STS policy cache: {e}");
                return None;
            }
        };
        if row.expires_at <= now {
            return None;
        }
        let policy = parse_policy(&row.policy).ok()?;
        Some((row, policy))
    }

    /// The `id` of the domain's `v=STSv1` TXT record; `None` when it has
    /// none.
    async fn txt_id(&self, domain: &str) -> Result<Option<String>, String> {
        let name = format!("_mta-sts.{domain}.");
        match self
            .resolver
            .txt_lookup::<StsRecord>(name.as_str(), None::<&NullCache>)
            .await
        {
            Ok(record) => Ok(Some(record.id.clone())),
            Err(mail_auth::Error::Dns(
                DnsError::RecordNotFound(_) | DnsError::InvalidRecordType,
            )) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn fetch(&self, domain: &str) -> Result<String, (ResultType, String)> {
        let host = format!("mta-sts.{domain}");
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_from(&host)).await {
            Ok(Ok(text)) => Ok(text),
            Ok(Err((kind, why))) => Err((
                kind,
                format!("fetching the MTA-STS policy from {host}: {why}"),
            )),
            Err(_) => Err((
                ResultType::StsPolicyFetchError,
                format!(
                    "fetching the MTA-STS policy from {host}: no answer within {FETCH_TIMEOUT:?}"
                ),
            )),
        }
    }

    async fn fetch_from(&self, host: &str) -> Result<String, (ResultType, String)> {
        let fetch_error = |why: String| (ResultType::StsPolicyFetchError, why);
        let addrs = self.addresses(host).await.map_err(fetch_error)?;
        let mut last = String::from("no address");
        let mut tcp = None;
        for ip in addrs {
            match TcpStream::connect(SocketAddr::new(ip, self.port)).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connect to {ip}: {e}"),
            }
        }
        let tcp = tcp.ok_or_else(|| fetch_error(last))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| fetch_error(format!("{host:?}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let certificate = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
                let kind = if certificate {
                    ResultType::StsWebpkiInvalid
                } else {
                    ResultType::StsPolicyFetchError
                };
                (kind, format!("TLS: {e}"))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fetch_error(format!("HTTP: {e}")))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "trackrelay")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch_error(format!("request: {e}")))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| fetch_error(format!("HTTP: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                // RFC 8461 section 3.3: redirects are not followed.
                return Err(fetch_error(format!(
                    "HTTP {status}: redirects are not followed"
                )));
            }
            if status != hyper::StatusCode::OK {
                return Err(fetch_error(format!("HTTP {status}")));
            }
            let content_type = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !content_type.starts_with("text/plain") {
                return Err((
                    ResultType::StsPolicyInvalid,
                    format!("Content-Type {content_type:?} is not text/plain"),
                ));
            }
            let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
                .collect()
                .await
                .map_err(|e| fetch_error(format!("body (at most {MAX_POLICY_BYTES} bytes): {e}")))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| {
                (
                    ResultType::StsPolicyInvalid,
                    "the policy is not UTF-8".to_string(),
                )
            })
        }
        .await;
        driver.abort();
        result
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let fqdn = format!("{host}.");
        let mut out: Vec<IpAddr> = Vec::new();
        let mut err = None;
        match self
            .resolver
            .ipv4_lookup(fqdn.as_str(), None::<&NullCache>)
            .await
        {
            Ok(set) => out.extend(set.rrset.iter().copied().map(IpAddr::V4)),
            Err(e) => err = Some(e.to_string()),
        }
        match self
            .resolver
            .ipv6_lookup(fqdn.as_str(), None::<&NullCache>)
            .await
        {
            Ok(set) => out.extend(set.rrset.iter().copied().map(IpAddr::V6)),
            Err(e) => err = err.or(Some(e.to_string())),
        }
        if out.is_empty() {
            return Err(format!(
                "{host} has no address ({})",
                err.unwrap_or_else(|| "empty answer".into())
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_policy() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 86400\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(p.mx, vec!["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 86400);
        // LF line ends, extension keys, whitespace after the colon.
        let p = parse_policy("version:STSv1\nmode:\ttesting\nmx: a.test\nmax_age: 5\nfoo: bar\n")
            .unwrap();
        assert_eq!(p.mode, StsMode::Testing);
        let p = parse_policy("version: STSv1\nmode: none\nmax_age: 1").unwrap();
        assert!(p.mx.is_empty());
    }

    #[test]
    fn caps_max_age() {
        let p = parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 9999999999\n")
            .unwrap();
        assert_eq!(p.max_age, MAX_AGE_CAP);
    }

    #[test]
    fn refuses_bad_policies() {
        for (text, why) in [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", "no version"),
            (
                "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
                "STSv2",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                "unknown mode",
            ),
            ("version: STSv1\nmode: enforce\nmx: a.test\n", "no max_age"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
                "digits",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901\n",
                "digits",
            ),
            (
                "version: STSv1\nmode: enforce\nmode: testing\nmx: a.test\nmax_age: 1\n",
                "twice",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
                "mx pattern",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.*.test\nmax_age: 1\n",
                "mx pattern",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a_b.test\nmax_age: 1\n",
                "mx pattern",
            ),
            ("version: STSv1\ngarbage\n", "key: value"),
            ("<html>not found</html>", "key: value"),
        ] {
            let e = parse_policy(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn refresh_is_due_ahead_of_expiry() {
        let c = CachedPolicy {
            domain: "x.test".into(),
            policy_id: "1".into(),
            policy: String::new(),
            fetched_at: 1000,
            expires_at: 5000,
            used_at: 1000,
        };
        assert!(!refresh_due(&c, 3999));
        assert!(refresh_due(&c, 4000));
        assert!(refresh_due(&c, 6000));
    }

    #[test]
    fn view_keeps_policy_lines() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: a.test\r\nmax_age: 60\r\n";
        let v = parse_policy(text).unwrap().view(text);
        assert_eq!(
            v.policy_strings,
            vec![
                "version: STSv1",
                "mode: enforce",
                "mx: a.test",
                "max_age: 60"
            ]
        );
        assert!(v.mx_matches("A.test."));
    }
}
