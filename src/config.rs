//! The TOML configuration: parsed with serde, then validated as a whole so
//! that an operator sees every problem at once, each naming its key.
//!
//! Relative paths are resolved against the directory of the config file, so a
//! config works the same whether it is started from its own directory or by
//! systemd.

use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/trackrelay/config.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub submission: SubmissionConfig,
    #[serde(default)]
    pub tracking: TrackingConfig,
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    #[serde(default)]
    pub domain_checks: DomainChecksConfig,
    #[serde(default)]
    pub acme: AcmeConfig,
    /// Where the file was read from; relative paths were resolved against it.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub hostname: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long SIGTERM waits for sessions in flight before exiting anyway.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// This node's name among several sharing one PostgreSQL store: in
    /// delivery leases, events (`detail.node`) and metrics. Default: the
    /// host name.
    #[serde(default)]
    pub node_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmissionConfig {
    pub listen: Vec<String>,
    pub listen_tls: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls_for_auth: bool,
    pub plaintext_auth_networks: Vec<IpNet>,
    pub trusted_networks: Vec<IpNet>,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Commands and replies that are wrong in a row before the session is dropped.
    pub max_errors: u32,
    /// Message data all sessions together may hold in RAM; beyond it a
    /// message gets `452 4.3.1` (try again later).
    pub max_data_in_flight: usize,
    /// RFC 5321 4.5.3.2.7: the server waits at least 5 minutes for the next command.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// The whole DATA/BDAT transfer of one message must finish within this.
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    pub users: Vec<UserConfig>,
    /// Refuse a suppressed recipient at RCPT (550 5.1.1) instead of
    /// accepting it and recording `email.suppressed`.
    pub reject_suppressed: bool,
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        SubmissionConfig {
            listen: vec!["0.0.0.0:587".into()],
            listen_tls: vec![],
            tls_cert: None,
            tls_key: None,
            require_tls_for_auth: true,
            plaintext_auth_networks: vec![],
            trusted_networks: vec![],
            max_message_size: 26_214_400,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            max_errors: 10,
            max_data_in_flight: 256 * 1024 * 1024,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            users: vec![],
            reject_suppressed: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password_hash: String,
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    pub listen: Vec<String>,
    pub listen_tls: Vec<String>,
    /// Default certificate for `listen_tls` when a tracking host has none of its own.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub scheme: String,
    pub secret_file: Option<PathBuf>,
    /// Retired secrets, still accepted so that links already sent keep working.
    pub previous_secret_files: Vec<PathBuf>,
    pub trusted_proxies: Vec<IpNet>,
    /// Clicks sooner than this after delivery are flagged as machine clicks.
    #[serde(with = "duration")]
    pub machine_click_window: Duration,
    /// Bounded queue between the listener and the store; beyond it events are counted, not stored.
    pub event_queue: usize,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            listen: vec!["127.0.0.1:8080".into()],
            listen_tls: vec![],
            tls_cert: None,
            tls_key: None,
            scheme: "https".into(),
            secret_file: None,
            previous_secret_files: vec![],
            trusted_proxies: vec!["127.0.0.1/32".parse().expect("literal network")],
            machine_click_window: Duration::from_secs(10),
            event_queue: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    Opportunistic,
    Enforced,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    #[serde(default)]
    pub open_tracking: bool,
    #[serde(default)]
    pub click_tracking: bool,
    pub tracking_subdomain: Option<String>,
    /// Tracking subdomains used before; their links keep working and their
    /// certificates stay in the SNI set.
    #[serde(default)]
    pub previous_tracking_subdomains: Vec<String>,
    /// Certificate for the tracking host on `tracking.listen_tls`.
    pub tracking_tls_cert: Option<PathBuf>,
    pub tracking_tls_key: Option<PathBuf>,
    #[serde(default = "default_tls_policy")]
    pub tls: TlsPolicy,
    pub return_path: Option<String>,
    /// Add List-Unsubscribe (+ List-Unsubscribe-Post, RFC 8058) to messages
    /// that carry none; `X-Track-Unsubscribe` overrides it per message.
    #[serde(default)]
    pub list_unsubscribe: bool,
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
    /// What adds an address to the suppression list for this domain.
    #[serde(default = "default_suppress_on")]
    pub suppress_on: Vec<String>,
}

impl DomainConfig {
    pub fn suppresses_on(&self, reason: &str) -> bool {
        self.suppress_on.iter().any(|r| r == reason)
    }

    pub fn tracking_host(&self) -> Option<String> {
        self.tracking_subdomain
            .as_ref()
            .map(|sub| format!("{}.{}", sub, self.name))
    }

    pub fn previous_tracking_hosts(&self) -> Vec<String> {
        self.previous_tracking_subdomains
            .iter()
            .map(|sub| format!("{}.{}", sub, self.name))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    pub selector: String,
    /// Absent: trackrelay keeps the key in `data_dir/dkim/` and creates it at
    /// first start (RSA-2048), logging the DNS record to publish.
    pub private_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub relay: Option<RelayConfig>,
    /// Static next hop per recipient domain, `host:port`.
    pub routes: BTreeMap<String, String>,
    pub max_concurrency: usize,
    pub max_per_destination: usize,
    #[serde(with = "duration_list")]
    pub retry: Vec<Duration>,
    #[serde(with = "duration")]
    pub expire_after: Duration,
    /// DNS server for MX lookups (`ip` or `ip:port`); the system resolver otherwise.
    pub resolver: Option<String>,
    /// Port used for MX hosts (25, except in tests).
    pub mx_port: u16,
    /// How long a host whose TLS handshake failed is sent to in plaintext
    /// under the opportunistic policy before TLS is tried again.
    #[serde(with = "duration")]
    pub tls_failure_memory: Duration,
    /// Recipients per delivery attempt on one connection.
    pub max_messages_per_connection: usize,
    /// How long a claimed recipient stays one runner's without renewal. A
    /// working connection renews it; only an expired lease is handed to
    /// another runner (after a crash, or on another node).
    #[serde(with = "duration")]
    pub lease_time: Duration,
    /// Honour the MTA-STS policies (RFC 8461) of recipient domains.
    pub mta_sts: bool,
    /// Extra trust anchors (PEM) for verified outbound TLS: MTA-STS policy
    /// fetches and MX certificates under MTA-STS (private CAs, tests).
    pub extra_ca_file: Option<PathBuf>,
    /// DANE (RFC 7672) for MX deliveries: "auto" (on when the resolver
    /// passes DNSSEC through, see `outbound::dane`), "on" or "off".
    pub dane: DaneMode,
    /// DNSKEY records (zone-file form) to trust instead of the IANA root
    /// keys when validating DNSSEC; for private signed zones and tests.
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// TLS reporting (RFC 8460): count each delivery session's TLS outcome
    /// and send the daily report to domains that publish `_smtp._tls`.
    pub tls_reports: bool,
}

/// `delivery.dane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaneMode {
    Auto,
    On,
    Off,
}

impl DeliveryConfig {
    /// `extra_ca_file`, where set and not empty (`""` means none).
    pub fn extra_ca(&self) -> Option<&std::path::Path> {
        self.extra_ca_file
            .as_deref()
            .filter(|f| !f.as_os_str().is_empty())
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            relay: None,
            routes: BTreeMap::new(),
            max_concurrency: 200,
            max_per_destination: 10,
            retry: ["1m", "5m", "15m", "1h", "4h"]
                .iter()
                .map(|s| humantime::parse_duration(s).expect("literal duration"))
                .collect(),
            expire_after: Duration::from_secs(5 * 86400),
            resolver: None,
            mx_port: 25,
            tls_failure_memory: Duration::from_secs(3600),
            max_messages_per_connection: 100,
            lease_time: Duration::from_secs(45 * 60),
            tls_reports: true,
            mta_sts: true,
            extra_ca_file: None,
            dane: DaneMode::Auto,
            dnssec_trust_anchor: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub host: String,
    #[serde(default = "default_relay_port")]
    pub port: u16,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_relay_tls")]
    pub tls: TlsPolicy,
    /// TLS from the first byte (port 465) instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// Only events of emails sent from these domains; all when empty.
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default = "default_webhook_retry", with = "duration_list")]
    pub retry: Vec<Duration>,
    #[serde(default = "default_webhook_timeout", with = "duration")]
    pub timeout: Duration,
    /// Requests in flight to this endpoint at once.
    #[serde(default = "default_webhook_concurrency")]
    pub max_concurrency: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    #[serde(with = "duration")]
    pub retain_messages: Duration,
    #[serde(with = "duration")]
    pub retain_events: Duration,
    /// How long a write waits for a database lock held by another process
    /// (a backup, an sqlite3 shell) before the SMTP client gets a 451.
    #[serde(with = "duration")]
    pub busy_timeout: Duration,
    pub backend: StoreBackend,
    /// postgres only: `postgres://user:password@host/database`.
    pub url: Option<SecretString>,
    /// postgres only: a file holding the URL, so the password stays out of
    /// the config file.
    pub url_file: Option<PathBuf>,
    /// postgres only: connections this node keeps open.
    pub pool_size: usize,
    /// postgres only: extra trust anchors (PEM) for the server's TLS
    /// certificate (`sslmode=require` in the URL).
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retain_messages: Duration::from_secs(30 * 86400),
            retain_events: Duration::from_secs(400 * 86400),
            busy_timeout: Duration::from_secs(5),
            backend: StoreBackend::Sqlite,
            url: None,
            url_file: None,
            pool_size: 16,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sqlite,
    Postgres,
}

/// A string that never shows in `Debug` output (a URL with a password).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"(hidden)\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: Vec<String>,
    pub token_hash: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: vec!["127.0.0.1:8025".into()],
            token_hash: None,
        }
    }
}

/// `[inbound]`: the return-path MX, where bounces, complaints and mailto
/// unsubscribes arrive. Off (no `listen`) unless configured. Timeouts and
/// `max_errors` are `[submission]`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    pub listen: Vec<String>,
    /// Default: the submission certificate (configured or self-signed).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_message_size: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Report data all inbound sessions together may hold in RAM.
    pub max_data_in_flight: usize,
    /// Run the feedback processor (stored reports → events, suppressions).
    /// false: reports stay pending for another node sharing the store, or
    /// a later start.
    pub process: bool,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: vec![],
            tls_cert: None,
            tls_key: None,
            max_message_size: 10_485_760,
            max_connections: 500,
            max_connections_per_ip: 20,
            max_data_in_flight: 128 * 1024 * 1024,
            process: true,
        }
    }
}

/// `[domain_checks]`: how often `serve` re-checks each domain's DNS records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainChecksConfig {
    /// Off: statuses are left as they were stored, and tracked links use
    /// the host in use when the checks stopped.
    pub enabled: bool,
    /// Between checks of a domain that is not verified.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Between checks of a verified domain.
    #[serde(with = "duration")]
    pub verified_interval: Duration,
}

impl Default for DomainChecksConfig {
    fn default() -> Self {
        DomainChecksConfig {
            enabled: true,
            interval: Duration::from_secs(300),
            verified_interval: Duration::from_secs(86400),
        }
    }
}

pub const EVENT_TYPES: &[&str] = &[
    "email.sent",
    "email.delivered",
    "email.delivery_delayed",
    "email.bounced",
    "email.failed",
    "email.opened",
    "email.clicked",
    "email.suppressed",
    "email.complained",
    "email.unsubscribed",
    "domain.updated",
];

/// What `[[domains]] suppress_on` may name: the automatic reasons.
pub const SUPPRESS_ON: &[&str] = &["hard_bounce", "complaint", "unsubscribe"];

fn default_suppress_on() -> Vec<String> {
    SUPPRESS_ON.iter().map(|s| s.to_string()).collect()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/trackrelay")
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_tls_policy() -> TlsPolicy {
    TlsPolicy::Opportunistic
}
fn default_relay_port() -> u16 {
    587
}
fn default_relay_tls() -> TlsPolicy {
    TlsPolicy::Enforced
}
fn default_webhook_events() -> Vec<String> {
    vec!["*".into()]
}
fn default_webhook_retry() -> Vec<Duration> {
    // The Standard Webhooks schedule: about a day and a half in all.
    ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
        .iter()
        .map(|s| humantime::parse_duration(s).expect("literal duration"))
        .collect()
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_webhook_concurrency() -> usize {
    8
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration ({e})")))
    }
}

mod duration_list {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .map(|s| {
                humantime::parse_duration(s)
                    .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration ({e})")))
            })
            .collect()
    }
}

/// Every problem found in a config file, one line each, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, line) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the config is read from: `--config`, then `$TRACKRELAY_CONFIG`, then the default.
pub fn resolve_path(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    match std::env::var_os("TRACKRELAY_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

impl Config {
    /// Reads, parses and validates. Files that trackrelay creates itself at
    /// first start (dev certificate, managed DKIM keys, tracking secret) are
    /// not required to exist yet.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![format!(
                "{}: {}",
                path.display(),
                e.to_string().trim_end()
            )])
        })?;
        config.path = path.to_path_buf();
        config.resolve_paths();
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|p| format!("{}: {p}", path.display()))
                    .collect(),
            ))
        }
    }

    fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir();
        // Joining then collecting components drops the `./` left by `./data`.
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p).components().collect();
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p).components().collect();
                }
            }
        };
        fix(&mut self.server.data_dir);
        fix_opt(&mut self.submission.tls_cert);
        fix_opt(&mut self.submission.tls_key);
        fix_opt(&mut self.inbound.tls_cert);
        fix_opt(&mut self.inbound.tls_key);
        fix_opt(&mut self.tracking.tls_cert);
        fix_opt(&mut self.tracking.tls_key);
        fix_opt(&mut self.tracking.secret_file);
        self.tracking.previous_secret_files.iter_mut().for_each(fix);
        for d in &mut self.domains {
            fix_opt(&mut d.tracking_tls_cert);
            fix_opt(&mut d.tracking_tls_key);
            for k in &mut d.dkim {
                fix_opt(&mut k.private_key);
            }
        }
        if let Some(relay) = &mut self.delivery.relay {
            fix_opt(&mut relay.password_file);
        }
        // "" means no file, not the config's directory.
        if let Some(p) = self
            .delivery
            .extra_ca_file
            .as_mut()
            .filter(|p| !p.as_os_str().is_empty())
        {
            fix(p);
        }
        if !self.acme.ca_file.as_os_str().is_empty() {
            fix(&mut self.acme.ca_file);
        }
        fix_opt(&mut self.store.url_file);
        fix_opt(&mut self.store.ca_file);
    }

    pub fn domain(&self, name: &str) -> Option<&DomainConfig> {
        self.domains
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }

    /// The domains the inbound listener receives for, lowercase:
    /// `{return_path}.{name}` of every domain that has a return path.
    pub fn inbound_domains(&self) -> Vec<String> {
        self.domains
            .iter()
            .filter_map(|d| {
                let rp = d.return_path.as_ref()?;
                Some(format!("{rp}.{}", d.name).to_ascii_lowercase())
            })
            .collect()
    }

    pub fn database_path(&self) -> PathBuf {
        self.server.data_dir.join("trackrelay.sqlite3")
    }

    /// `server.node_id`, or the host name.
    pub fn node_id(&self) -> String {
        self.server.node_id.clone().unwrap_or_else(default_node_id)
    }

    /// The PostgreSQL URL: `store.url`, or the first line of
    /// `store.url_file`. The error names the key, never the URL.
    pub fn store_url(&self) -> Result<String, String> {
        if let Some(url) = &self.store.url {
            return Ok(url.0.clone());
        }
        let Some(path) = &self.store.url_file else {
            return Err("store.url or store.url_file: required with backend = \"postgres\"".into());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("store.url_file: cannot read {}: {e}", path.display()))?;
        let url = text.lines().next().unwrap_or("").trim();
        if url.is_empty() {
            return Err(format!("store.url_file: {} is empty", path.display()));
        }
        Ok(url.to_string())
    }

    pub fn tracking_secret_path(&self) -> PathBuf {
        self.tracking
            .secret_file
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("tracking.key"))
    }

    /// The key file of a DKIM entry: configured, or managed in data_dir.
    pub fn dkim_key_path(&self, domain: &str, dkim: &DkimConfig) -> PathBuf {
        dkim.private_key.clone().unwrap_or_else(|| {
            self.server.data_dir.join("dkim").join(format!(
                "{}.{}.pem",
                domain.to_ascii_lowercase(),
                dkim.selector
            ))
        })
    }

    fn validate_store(&self, p: &mut Vec<String>) {
        if let Some(id) = &self.server.node_id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                p.push(format!(
                    "server.node_id: {id:?} must be 1-64 letters, digits, '-', '_' or '.'"
                ));
            }
        }
        let st = &self.store;
        match st.backend {
            StoreBackend::Sqlite => {
                for (key, set) in [
                    ("url", st.url.is_some()),
                    ("url_file", st.url_file.is_some()),
                    ("ca_file", st.ca_file.is_some()),
                ] {
                    if set {
                        p.push(format!(
                            "store.{key}: only for backend = \"postgres\" (backend is \"sqlite\")"
                        ));
                    }
                }
            }
            StoreBackend::Postgres => {
                if st.url.is_some() && st.url_file.is_some() {
                    p.push("store.url and store.url_file: set one, not both".into());
                } else if let Err(e) = self.store_url() {
                    p.push(e);
                } else if let Ok(url) = self.store_url() {
                    if let Err(e) = crate::store::postgres::parse_url(&url) {
                        let key = if st.url.is_some() {
                            "store.url"
                        } else {
                            "store.url_file"
                        };
                        p.push(format!(
                            "{key}: {}",
                            e.context.trim_start_matches("store.url ")
                        ));
                    }
                }
                if st.pool_size == 0 || st.pool_size > 1000 {
                    p.push(format!(
                        "store.pool_size: {} is not in 1..=1000",
                        st.pool_size
                    ));
                }
                if let Some(ca) = &st.ca_file {
                    if let Err(e) = std::fs::metadata(ca) {
                        p.push(format!("store.ca_file: cannot read {}: {e}", ca.display()));
                    }
                }
            }
        }
    }

    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !is_hostname(&self.server.hostname) {
            p.push(format!(
                "server.hostname: {:?} is not a host name",
                self.server.hostname
            ));
        }
        self.validate_submission(&mut p);
        self.validate_domains(&mut p);
        self.validate_tracking(&mut p);
        self.validate_delivery(&mut p);
        self.validate_webhooks(&mut p);
        self.validate_inbound(&mut p);
        self.validate_store(&mut p);
        self.acme.validate(&self.tracking, &mut p);
        check_listen("api.listen", &self.api.listen, &mut p);
        let dc = &self.domain_checks;
        // A zero interval would re-check in a busy loop.
        for (key, v) in [
            ("interval", dc.interval),
            ("verified_interval", dc.verified_interval),
        ] {
            if v.is_zero() {
                p.push(format!("domain_checks.{key}: must be greater than 0"));
            }
        }
        if let Some(hash) = &self.api.token_hash {
            if argon2::PasswordHash::new(hash).is_err() {
                p.push("api.token_hash: not a PHC hash string (make one with `trackrelay hash-password`)".into());
            }
        }
        p
    }

    fn validate_submission(&self, p: &mut Vec<String>) {
        let s = &self.submission;
        check_listen("submission.listen", &s.listen, p);
        check_listen("submission.listen_tls", &s.listen_tls, p);
        match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => {
                check_readable("submission.tls_cert", cert, p);
                check_readable("submission.tls_key", key, p);
            }
            (None, None) => {}
            (Some(_), None) => p.push("submission.tls_key: missing (tls_cert is set)".into()),
            (None, Some(_)) => p.push("submission.tls_cert: missing (tls_key is set)".into()),
        }
        for (key, value) in [
            ("submission.max_message_size", s.max_message_size),
            ("submission.max_recipients", s.max_recipients),
            ("submission.max_data_in_flight", s.max_data_in_flight),
            ("submission.max_connections", s.max_connections),
            (
                "submission.max_connections_per_ip",
                s.max_connections_per_ip,
            ),
        ] {
            if value == 0 {
                p.push(format!("{key}: must be greater than 0"));
            }
        }
        // A message the budget can never hold would be deferred (452) forever.
        if s.max_data_in_flight < s.max_message_size {
            p.push(format!(
                "submission.max_data_in_flight: {} is less than max_message_size ({}); a message of the largest allowed size could never be accepted",
                s.max_data_in_flight, s.max_message_size
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, user) in s.users.iter().enumerate() {
            let key = format!("submission.users[{i}]");
            if user.name.is_empty() {
                p.push(format!("{key}.name: must not be empty"));
            }
            if !names.insert(user.name.as_str()) {
                p.push(format!("{key}.name: {:?} is defined twice", user.name));
            }
            match argon2::PasswordHash::new(&user.password_hash) {
                Ok(h) if h.algorithm.as_str().starts_with("argon2") => {}
                _ => p.push(format!(
                    "{key}.password_hash: not an argon2 hash (make one with `trackrelay hash-password`)"
                )),
            }
            if user.domains.is_empty() {
                p.push(format!(
                    "{key}.domains: a user must be allowed at least one domain"
                ));
            }
            for d in &user.domains {
                if self.domain(d).is_none() {
                    p.push(format!(
                        "{key}.domains: {d:?} is not a configured [[domains]] entry"
                    ));
                }
            }
        }
    }

    fn validate_domains(&self, p: &mut Vec<String>) {
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            let key = format!("domains[{i}]");
            if !is_hostname(&d.name) {
                p.push(format!("{key}.name: {:?} is not a domain name", d.name));
            }
            if !seen.insert(d.name.to_ascii_lowercase()) {
                p.push(format!("{key}.name: {:?} is configured twice", d.name));
            }
            for r in &d.suppress_on {
                if !SUPPRESS_ON.contains(&r.as_str()) {
                    p.push(format!(
                        "{key}.suppress_on: {r:?} is not one of {}",
                        SUPPRESS_ON.join(", ")
                    ));
                }
            }
            for (field, sub) in d
                .tracking_subdomain
                .iter()
                .map(|s| ("tracking_subdomain", s))
                .chain(
                    d.previous_tracking_subdomains
                        .iter()
                        .map(|s| ("previous_tracking_subdomains", s)),
                )
            {
                if !is_hostname(sub) {
                    p.push(format!("{key}.{field}: {sub:?} is not a valid subdomain"));
                }
            }
            if let Some(rp) = &d.return_path {
                if let Err(why) = check_return_path(rp) {
                    p.push(format!("{key}.return_path: {rp:?} {why}"));
                }
            }
            match (&d.tracking_tls_cert, &d.tracking_tls_key) {
                (Some(c), Some(k)) => {
                    check_readable(&format!("{key}.tracking_tls_cert"), c, p);
                    check_readable(&format!("{key}.tracking_tls_key"), k, p);
                }
                (None, None) => {}
                _ => p.push(format!(
                    "{key}: tracking_tls_cert and tracking_tls_key go together"
                )),
            }
            let mut selectors = std::collections::HashSet::new();
            for (j, k) in d.dkim.iter().enumerate() {
                if !is_hostname(&k.selector) {
                    p.push(format!(
                        "{key}.dkim[{j}].selector: {:?} is not a valid selector",
                        k.selector
                    ));
                }
                if !selectors.insert(k.selector.as_str()) {
                    p.push(format!(
                        "{key}.dkim[{j}].selector: {:?} is listed twice",
                        k.selector
                    ));
                }
                if let Some(path) = &k.private_key {
                    check_readable(&format!("{key}.dkim[{j}].private_key"), path, p);
                }
            }
        }
    }

    fn validate_tracking(&self, p: &mut Vec<String>) {
        let t = &self.tracking;
        check_listen("tracking.listen", &t.listen, p);
        check_listen("tracking.listen_tls", &t.listen_tls, p);
        if t.scheme != "https" && t.scheme != "http" {
            p.push(format!(
                "tracking.scheme: {:?} must be \"https\" or \"http\"",
                t.scheme
            ));
        }
        match (&t.tls_cert, &t.tls_key) {
            (Some(c), Some(k)) => {
                check_readable("tracking.tls_cert", c, p);
                check_readable("tracking.tls_key", k, p);
            }
            (None, None) => {}
            _ => p.push("tracking.tls_cert and tracking.tls_key go together".into()),
        }
        for (i, f) in t.previous_secret_files.iter().enumerate() {
            check_readable(&format!("tracking.previous_secret_files[{i}]"), f, p);
        }
        if t.event_queue == 0 {
            p.push("tracking.event_queue: must be greater than 0".into());
        }
    }

    fn validate_delivery(&self, p: &mut Vec<String>) {
        let d = &self.delivery;
        for (domain, target) in &d.routes {
            if parse_host_port(target, 25).is_none() {
                p.push(format!(
                    "delivery.routes.{domain:?}: {target:?} is not host:port"
                ));
            }
        }
        if let Some(relay) = &d.relay {
            if !is_hostname(&relay.host) && relay.host.parse::<IpAddr>().is_err() {
                p.push(format!(
                    "delivery.relay.host: {:?} is not a host name",
                    relay.host
                ));
            }
            if let Some(f) = &relay.password_file {
                check_readable("delivery.relay.password_file", f, p);
            }
            if relay.password_file.is_some() != relay.username.is_some() {
                p.push("delivery.relay: username and password_file go together".into());
            }
        }
        if let Some(r) = &d.resolver {
            if parse_host_port(r, 53)
                .and_then(|(h, _)| h.parse::<IpAddr>().ok())
                .is_none()
            {
                p.push(format!(
                    "delivery.resolver: {r:?} is not an IP address (optionally with :port)"
                ));
            }
        }
        if let Some(f) = d.extra_ca() {
            if let Err(e) = crate::outbound::tls::root_store(Some(f)) {
                p.push(e);
            }
        }
        if let Some(f) = &d.dnssec_trust_anchor {
            check_readable("delivery.dnssec_trust_anchor", f, p);
        }
        if d.retry.is_empty() {
            p.push("delivery.retry: needs at least one interval".into());
        }
        if d.max_concurrency == 0 || d.max_per_destination == 0 {
            p.push(
                "delivery.max_concurrency and max_per_destination must be greater than 0".into(),
            );
        }
        if d.max_messages_per_connection == 0 {
            p.push("delivery.max_messages_per_connection: must be greater than 0".into());
        }
        // Renewal runs every third of the lease; below a second, a busy
        // store could let a working lease lapse.
        if d.lease_time < Duration::from_secs(1) {
            p.push(format!(
                "delivery.lease_time: {} is too short (at least 1s)",
                humantime::format_duration(d.lease_time)
            ));
        }
    }

    fn validate_inbound(&self, p: &mut Vec<String>) {
        let s = &self.inbound;
        check_listen("inbound.listen", &s.listen, p);
        match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => {
                check_readable("inbound.tls_cert", cert, p);
                check_readable("inbound.tls_key", key, p);
            }
            (None, None) => {}
            (Some(_), None) => p.push("inbound.tls_key: missing (tls_cert is set)".into()),
            (None, Some(_)) => p.push("inbound.tls_cert: missing (tls_key is set)".into()),
        }
        for (key, value) in [
            ("inbound.max_message_size", s.max_message_size),
            ("inbound.max_connections", s.max_connections),
            ("inbound.max_connections_per_ip", s.max_connections_per_ip),
            ("inbound.max_data_in_flight", s.max_data_in_flight),
        ] {
            if value == 0 {
                p.push(format!("{key}: must be greater than 0"));
            }
        }
        if s.max_data_in_flight < s.max_message_size {
            p.push(format!(
                "inbound.max_data_in_flight: {} is less than max_message_size ({}); a report of the largest allowed size could never be accepted",
                s.max_data_in_flight, s.max_message_size
            ));
        }
    }

    fn validate_webhooks(&self, p: &mut Vec<String>) {
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = format!("webhooks[{i}]");
            let lower = w.url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://"))
                || w.url.parse::<hyper::Uri>().is_err()
            {
                p.push(format!("{key}.url: {:?} is not an http(s) URL", w.url));
            }
            match w.secret.strip_prefix("whsec_") {
                Some(b64) if decode_b64(b64).is_some_and(|k| !k.is_empty()) => {}
                _ => p.push(format!(
                    "{key}.secret: must be \"whsec_\" followed by base64 (Standard Webhooks)"
                )),
            }
            for e in &w.events {
                if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
                    p.push(format!(
                        "{key}.events: {e:?} is not an event type (one of {}, or \"*\")",
                        EVENT_TYPES.join(", ")
                    ));
                }
            }
            for d in &w.domains {
                if self.domain(d).is_none() {
                    p.push(format!(
                        "{key}.domains: {d:?} is not a configured [[domains]] entry"
                    ));
                }
            }
            if w.retry.is_empty() {
                p.push(format!("{key}.retry: needs at least one interval"));
            }
            if w.max_concurrency == 0 {
                p.push(format!("{key}.max_concurrency: must be greater than 0"));
            }
        }
    }

    /// Advice that does not stop the server: settings that probably do not do
    /// what the operator meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (i, d) in self.domains.iter().enumerate() {
            if (d.open_tracking || d.click_tracking) && d.tracking_subdomain.is_none() {
                w.push(format!(
                    "domains[{i}] ({}): open/click tracking is on but tracking_subdomain is not set, so tracking is off for this domain",
                    d.name
                ));
            }
            if d.list_unsubscribe && d.return_path.is_none() && d.tracking_subdomain.is_none() {
                w.push(format!(
                    "domains[{i}] ({}): list_unsubscribe is on but neither tracking_subdomain nor return_path is set, so there is no unsubscribe address to add",
                    d.name
                ));
            }
            if d.dkim.is_empty() {
                w.push(format!(
                    "domains[{i}] ({}): no dkim key, mail from this domain is sent unsigned",
                    d.name
                ));
            }
        }
        if self.submission.users.is_empty() && self.submission.trusted_networks.is_empty() {
            w.push(
                "submission: no users and no trusted_networks, so nobody can submit mail".into(),
            );
        }
        if !self.inbound.listen.is_empty() && self.inbound_domains().is_empty() {
            w.push("inbound.listen: no [[domains]] entry has a return_path, so the inbound listener refuses every recipient".into());
        }
        if self.api.token_hash.is_none() && !self.api.listen.is_empty() {
            w.push("api.token_hash: not set, so the admin API answers 401 to every request but /healthz".into());
        }
        w
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .or_else(|| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(s)
                .ok()
        })
}

fn check_listen(key: &str, addrs: &[String], p: &mut Vec<String>) {
    for a in addrs {
        if a.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "{key}: {a:?} is not an address:port (e.g. \"127.0.0.1:2587\" or \"[::1]:2587\")"
            ));
        }
    }
}

fn check_readable(key: &str, path: &Path, p: &mut Vec<String>) {
    if let Err(e) = std::fs::File::open(path) {
        p.push(format!("{key}: cannot read {}: {e}", path.display()));
    }
}

/// `host:port`, `[v6]:port`, or `host` with the default port.
pub fn parse_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip.to_string(), default_port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, port)) => (h, port.parse().ok()?),
        None => (s, default_port),
    };
    is_hostname(host).then(|| (host.to_string(), port))
}

pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The custom Return-Path label: as hosted providers define it.
pub fn check_return_path(label: &str) -> Result<(), &'static str> {
    if label.is_empty() || label.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !label.as_bytes()[0].is_ascii_alphabetic() {
        return Err("must start with a letter");
    }
    if !label.as_bytes()[label.len() - 1].is_ascii_alphanumeric() {
        return Err("must end with a letter or digit");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("may hold only letters, digits and hyphens");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("/etc/trackrelay/test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[server]\nhostname = \"relay.example.com\"\n").unwrap();
        assert_eq!(c.submission.max_recipients, 100);
        assert_eq!(c.delivery.retry.len(), 5);
        assert_eq!(c.delivery.expire_after, Duration::from_secs(432000));
        assert_eq!(c.store.retain_events, Duration::from_secs(400 * 86400));
        assert_eq!(
            c.database_path(),
            PathBuf::from("/var/lib/trackrelay/trackrelay.sqlite3")
        );
    }

    #[test]
    fn data_in_flight_budget_defaults_and_must_hold_a_message() {
        let c = parse("[server]\nhostname = \"r.example.com\"\n").unwrap();
        assert_eq!(c.submission.max_data_in_flight, 256 * 1024 * 1024);
        let e = parse(
            "[server]\nhostname = \"r.example.com\"\n[submission]\nmax_message_size = 2000\nmax_data_in_flight = 1000\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "submission.max_data_in_flight: 1000 is less than max_message_size (2000)"
            ),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("[server]\nhostname = \"r.example.com\"\ndata_dir = \"./data\"\n").unwrap();
        assert_eq!(c.server.data_dir, PathBuf::from("/etc/trackrelay/data"));
    }

    #[test]
    fn mta_sts_defaults_and_extra_ca_file() {
        let base = "[server]\nhostname = \"r.example.com\"\n[delivery]\n";
        let c = parse(base).unwrap();
        assert!(c.delivery.mta_sts);
        assert_eq!(c.delivery.extra_ca(), None);
        let c = parse(&format!("{base}mta_sts = false\nextra_ca_file = \"\"\n")).unwrap();
        assert!(!c.delivery.mta_sts);
        assert_eq!(c.delivery.extra_ca(), None, "\"\" is no file");
        let e = parse(&format!("{base}extra_ca_file = \"ca/missing.pem\"\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("delivery.extra_ca_file: cannot read /etc/trackrelay/ca/missing.pem"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[server]\nhostname = \"r.example.com\"\nhostnme = 1\n").unwrap_err();
        assert!(e.to_string().contains("hostnme"), "{e}");
    }

    #[test]
    fn user_domain_must_be_configured() {
        let text = format!(
            "[server]\nhostname = \"r.example.com\"\n[[domains]]\nname = \"example.com\"\n\
             [[submission.users]]\nname = \"app\"\npassword_hash = \"{HASH}\"\ndomains = [\"example.org\"]\n"
        );
        let e = parse(&text).unwrap_err();
        assert!(
            e.to_string()
                .contains("submission.users[0].domains: \"example.org\" is not a configured"),
            "{e}"
        );
    }

    #[test]
    fn suppress_on_defaults_to_every_reason_and_names_a_bad_one() {
        let base = "[server]\nhostname = \"r.example.com\"\n[[domains]]\nname = \"example.com\"\n";
        let c = parse(base).unwrap();
        assert!(c.domains[0].suppresses_on("hard_bounce"));
        assert!(c.domains[0].suppresses_on("complaint"));
        assert!(c.domains[0].suppresses_on("unsubscribe"));
        let off = parse(&format!("{base}suppress_on = []\n")).unwrap();
        assert!(!off.domains[0].suppresses_on("hard_bounce"));
        let e = parse(&format!("{base}suppress_on = [\"bounce\"]\n")).unwrap_err();
        assert!(
            e.to_string().contains("domains[0].suppress_on: \"bounce\""),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[server]\nhostname = \"r.example.com\"\n[submission]\nlisten = [\"nope\"]\n\
                    tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n\
                    [[domains]]\nname = \"example.com\"\nreturn_path = \"1bad\"\n";
        let e = parse(text).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("submission.listen: \"nope\""), "{s}");
        assert!(s.contains("submission.tls_cert: cannot read"), "{s}");
        assert!(s.contains("submission.tls_key: cannot read"), "{s}");
        assert!(s.contains("domains[0].return_path"), "{s}");
        assert_eq!(e.0.len(), 4, "{s}");
    }

    #[test]
    fn inbound_is_off_by_default_and_checked() {
        let base = "[server]\nhostname = \"r.example.com\"\n";
        let c = parse(base).unwrap();
        assert!(c.inbound.listen.is_empty());
        assert_eq!(c.inbound.max_message_size, 10_485_760);
        assert_eq!(c.inbound.max_connections_per_ip, 20);
        let c = parse(&format!(
            "{base}[[domains]]\nname = \"Example.com\"\nreturn_path = \"Bounces\"\n\
             [[domains]]\nname = \"example.org\"\n[inbound]\nlisten = [\"127.0.0.1:2525\"]\n"
        ))
        .unwrap();
        assert_eq!(c.inbound_domains(), vec!["bounces.example.com".to_string()]);
        assert!(!c.warnings().iter().any(|w| w.contains("inbound")));
        let c = parse(&format!("{base}[inbound]\nlisten = [\"127.0.0.1:2525\"]\n")).unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("inbound.listen")));
        let e = parse(&format!(
            "{base}[inbound]\nlisten = [\"nope\"]\nmax_connections_per_ip = 0\n\
             max_message_size = 2000\nmax_data_in_flight = 1000\ntls_cert = \"/nonexistent.pem\"\n"
        ))
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("inbound.listen: \"nope\""), "{s}");
        assert!(
            s.contains("inbound.max_connections_per_ip: must be greater than 0"),
            "{s}"
        );
        assert!(s.contains("inbound.max_data_in_flight: 1000"), "{s}");
        assert!(s.contains("inbound.tls_key: missing"), "{s}");
        assert_eq!(e.0.len(), 4, "{s}");
        let e = parse(&format!("{base}[inbound]\nlisen = []\n")).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn lease_time_has_a_default_and_a_floor() {
        let base = "[server]\nhostname = \"r.example.com\"\n[delivery]\n";
        let c = parse(base).unwrap();
        assert_eq!(c.delivery.lease_time, Duration::from_secs(45 * 60));
        let c = parse(&format!("{base}lease_time = \"2s\"\n")).unwrap();
        assert_eq!(c.delivery.lease_time, Duration::from_secs(2));
        let e = parse(&format!("{base}lease_time = \"100ms\"\n")).unwrap_err();
        assert!(e.to_string().contains("delivery.lease_time"), "{e}");
        let e = parse(&format!("{base}lease_time = \"later\"\n")).unwrap_err();
        assert!(e.to_string().contains("lease_time"), "{e}");
    }

    #[test]
    fn bad_duration_names_key() {
        let e =
            parse("[server]\nhostname = \"r.example.com\"\n[delivery]\nexpire_after = \"soon\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("expire_after"), "{e}");
    }

    #[test]
    fn return_path_rules() {
        assert!(check_return_path("bounces").is_ok());
        assert!(check_return_path("b-1").is_ok());
        assert!(check_return_path("1b").is_err());
        assert!(check_return_path("b-").is_err());
        assert!(check_return_path("b_c").is_err());
        assert!(check_return_path(&"a".repeat(64)).is_err());
    }

    #[test]
    fn webhook_checks() {
        let text = "[server]\nhostname = \"r.example.com\"\n[[webhooks]]\nurl = \"ftp://x\"\n\
                    secret = \"nope\"\nevents = [\"email.opend\"]\n";
        let s = parse(text).unwrap_err().to_string();
        assert!(s.contains("webhooks[0].url"), "{s}");
        assert!(s.contains("webhooks[0].secret"), "{s}");
        assert!(s.contains("webhooks[0].events: \"email.opend\""), "{s}");
    }

    #[test]
    fn tracking_without_subdomain_is_a_warning() {
        let c = parse(
            "[server]\nhostname = \"r.example.com\"\n[[domains]]\nname = \"example.com\"\nopen_tracking = true\n",
        )
        .unwrap();
        assert!(c
            .warnings()
            .iter()
            .any(|w| w.contains("tracking_subdomain is not set")));
    }

    #[test]
    fn list_unsubscribe_is_off_by_default_and_needs_an_address() {
        let base = "[server]\nhostname = \"r.example.com\"\n[[domains]]\nname = \"example.com\"\n";
        let c = parse(base).unwrap();
        assert!(!c.domains[0].list_unsubscribe);
        let warned = |c: &Config| c.warnings().iter().any(|w| w.contains("list_unsubscribe"));
        let c = parse(&format!("{base}list_unsubscribe = true\n")).unwrap();
        assert!(c.domains[0].list_unsubscribe);
        assert!(warned(&c));
        let c = parse(&format!(
            "{base}list_unsubscribe = true\nreturn_path = \"b\"\n"
        ))
        .unwrap();
        assert!(!warned(&c));
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            parse_host_port("127.0.0.1:2626", 25),
            Some(("127.0.0.1".into(), 2626))
        );
        assert_eq!(
            parse_host_port("mx.example.net", 25),
            Some(("mx.example.net".into(), 25))
        );
        assert_eq!(parse_host_port("[::1]:26", 25), Some(("::1".into(), 26)));
        assert_eq!(parse_host_port("bad host:1", 25), None);
    }
}

// ---- [acme] (certificates for tracking hosts; see src/acme/) ----

/// `[acme]`: certificates for the tracking hosts, issued and renewed by
/// `serve` with ACME (HTTP-01 on `tracking.listen`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub enabled: bool,
    /// The ACME server's directory URL.
    pub directory: String,
    /// Account contact, e.g. "mailto:postmaster@example.com" (empty: none).
    pub contact: String,
    /// Extra trust for the ACME server's own HTTPS (empty: public roots only).
    pub ca_file: PathBuf,
    /// The CA's domain in CAA records ("letsencrypt.org" for Let's Encrypt).
    pub caa_identity: String,
    /// Also get a certificate for server.hostname, served on the submission
    /// (and inbound) TLS listeners in place of the configured one.
    pub submission_hostname: bool,
    /// "http-01" (answered on tracking.listen, which the CA reaches on port
    /// 80) or "tls-alpn-01" (on tracking.listen_tls, reached on port 443).
    pub challenge: String,
    /// First wait after a failed attempt; it doubles up to 6 hours.
    #[serde(with = "duration")]
    pub retry_interval: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact: String::new(),
            ca_file: PathBuf::new(),
            caa_identity: "letsencrypt.org".into(),
            challenge: "http-01".into(),
            submission_hostname: false,
            retry_interval: Duration::from_secs(300),
        }
    }
}

impl AcmeConfig {
    pub fn ca_file(&self) -> Option<&Path> {
        (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file.as_path())
    }

    fn validate(&self, tracking: &TrackingConfig, p: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        if !self.directory.starts_with("https://") {
            p.push(format!(
                "acme.directory: {:?} is not an https:// URL",
                self.directory
            ));
        }
        if !self.contact.is_empty() && !self.contact.starts_with("mailto:") {
            p.push(format!(
                "acme.contact: {:?} must be a mailto: URL (or empty)",
                self.contact
            ));
        }
        match self.challenge.as_str() {
            "http-01" if tracking.listen.is_empty() => p.push(
                "acme.challenge: http-01 is answered on tracking.listen, which is empty".into(),
            ),
            "tls-alpn-01" if tracking.listen_tls.is_empty() => p.push(
                "acme.challenge: tls-alpn-01 is answered on tracking.listen_tls, which is empty"
                    .into(),
            ),
            "http-01" | "tls-alpn-01" => {}
            other => p.push(format!(
                "acme.challenge: {other:?} is not \"http-01\" or \"tls-alpn-01\""
            )),
        }
        if self.caa_identity.trim().is_empty() {
            p.push("acme.caa_identity: must not be empty".into());
        }
        if self.retry_interval.is_zero() {
            p.push("acme.retry_interval: must be greater than 0".into());
        }
    }
}

/// The default `server.node_id`: the machine's host name, so nodes sharing
/// one PostgreSQL store tell themselves apart without configuration.
pub fn default_node_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "node".to_string(),
    }
}
