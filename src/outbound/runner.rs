//! The queue runner: claims due recipients one connection's worth at a
//! time, only when a delivery slot (global and per destination) is free to
//! start them; prepares and signs each copy just before its transaction;
//! and records every outcome with its event as that transaction ends.
//!
//! Each claim is a lease with an owner (`lease_id`) that the connection
//! renews while it works. Only the owner records an outcome, and only an
//! expired lease is handed to another attempt (after a crash, or by
//! another node sharing the store): delivery is at least once, and once
//! while the runner lives, however long the backlog.

mod batch;
mod leases;
mod shelf;

use batch::Batch;
use leases::Claim;
use shelf::{Leases, Shelf};

use super::client::{self, ClientConfig, NotAttempted, OutgoingMessage, SessionTls};
use super::dkim::{self, DkimKey};
use super::mta_sts::MtaSts;
use super::protocol;
use super::route::{RouteError, Router, Target};
use super::tls::TlsMemory;
use super::tls_policy::{
    self, Applied, DaneHost, DaneSource, HostDecision, NoopSink, SessionResult, StsState,
    TlsOutcome, TlsOutcomeSink, Verification,
};
use crate::config::{Config, TlsPolicy};
use crate::metrics::Metrics;
use crate::prepare::{self, TokenKeys, TrackingOptions};
use crate::store::queue::{Attempt, Claimed, Outcome as QueueOutcome, TlsPolicyNote};
use crate::store::{self, Store};
use rustls::client::danger::ServerCertVerifier;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// What the runner needs to know about a sending domain.
pub struct SendingDomain {
    pub tls: TlsPolicy,
    pub return_path: Option<String>,
    pub tracking_host: Option<String>,
    pub previous_tracking_hosts: Vec<String>,
    pub open_tracking: bool,
    pub click_tracking: bool,
    pub list_unsubscribe: bool,
    pub dkim: Vec<DkimKey>,
}

pub struct Runner {
    store: Store,
    /// Bodies this process just accepted; see `fresh`.
    fresh: Option<Arc<crate::outbound::fresh::FreshBodies>>,
    router: Router,
    keys: Arc<TokenKeys>,
    domains: HashMap<String, SendingDomain>,
    hostname: String,
    scheme: String,
    retry: Vec<Duration>,
    expire_after: Duration,
    per_connection: usize,
    max_concurrency: usize,
    max_per_destination: usize,
    lease_time: Duration,
    global: Arc<Semaphore>,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Recipient domains the last claim skipped, with their destination:
    /// the next claim skips those still full from its first read.
    busy: Mutex<Vec<(String, String)>>,
    /// Each working connection's leases with their rows, by a serial
    /// number of its own: given back when shutdown leaves them unfinished.
    active: Mutex<HashMap<u64, Leases>>,
    serial: AtomicU64,
    /// Connections' recipients not yet started, which siblings may take.
    shelves: Mutex<Vec<Arc<Shelf>>>,
    /// Set once shutdown begins: connections lease nothing more.
    stopping: AtomicBool,
    /// Preparing and signing is CPU work: off the async threads, and no
    /// more at once than there are cores.
    prepare_slots: Arc<Semaphore>,
    tls_memory: Arc<TlsMemory>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// Sending domains (lowercased) whose `suppress_on` has `hard_bounce`.
    suppress_hard_bounce: Arc<HashSet<String>>,
    /// The tracking host in use per domain, kept by the domain checker
    /// (a changed tracking_subdomain only once verified); None: the
    /// configured one.
    tracking_in_use: Option<crate::domains::TrackingHosts>,
    /// Where every attempt's TLS outcome is reported (TLS-RPT plugs in).
    tls_sink: Arc<dyn TlsOutcomeSink>,
    /// DANE decisions per MX host, once `dane.rs` provides them.
    dane: Option<Arc<dyn DaneSource>>,
    /// `delivery.mta_sts`: recipient domains' policies.
    mta_sts: Option<Arc<MtaSts>>,
    /// WebPKI for MX hosts under MTA-STS (or why it could not be set up).
    webpki: Result<Arc<dyn ServerCertVerifier>, String>,
}

/// A stored message: our trace header and the bytes as submitted.
type Stored = store::queue::StoredBody;

/// Messages up to this size are prepared and signed on the runtime worker
/// (about 1 ms per 100 KB here); bigger ones on the blocking pool.
const INLINE_PREPARE_MAX: usize = 256 * 1024;

/// The last temporary failure of a message: reason, TLS version, host,
/// TLS policy.
type LastFailure = (String, Option<String>, String, Option<TlsPolicyNote>);

impl Runner {
    pub fn new(
        config: &Config,
        store: Store,
        router: Router,
        keys: Arc<TokenKeys>,
        dkim_keys: HashMap<String, Vec<DkimKey>>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Runner {
        let mut dkim_keys = dkim_keys;
        let domains = config
            .domains
            .iter()
            .map(|d| {
                let name = d.name.to_ascii_lowercase();
                let keys = dkim_keys.remove(&name).unwrap_or_default();
                (
                    name,
                    SendingDomain {
                        tls: d.tls,
                        return_path: d.return_path.clone(),
                        tracking_host: d.tracking_host(),
                        previous_tracking_hosts: d.previous_tracking_hosts(),
                        open_tracking: d.open_tracking,
                        click_tracking: d.click_tracking,
                        list_unsubscribe: d.list_unsubscribe,
                        dkim: keys,
                    },
                )
            })
            .collect();
        let dc = &config.delivery;
        let mta_sts = if dc.mta_sts {
            match MtaSts::new(config, store.clone(), router.resolver(), metrics.clone()) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    tracing::error!("MTA-STS is off: {e}");
                    None
                }
            }
        } else {
            None
        };
        let webpki = super::tls::webpki_verifier(dc.extra_ca());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Runner {
            store,
            fresh: None,
            router,
            keys,
            domains,
            hostname: config.server.hostname.clone(),
            scheme: config.tracking.scheme.clone(),
            retry: dc.retry.clone(),
            expire_after: dc.expire_after,
            per_connection: dc.max_messages_per_connection.max(1),
            max_concurrency: dc.max_concurrency.max(1),
            max_per_destination: dc.max_per_destination.max(1),
            lease_time: dc.lease_time,
            global: Arc::new(Semaphore::new(dc.max_concurrency.max(1))),
            destinations: Mutex::new(HashMap::new()),
            busy: Mutex::new(Vec::new()),
            active: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            shelves: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            prepare_slots: Arc::new(Semaphore::new(cores)),
            tls_memory: Arc::new(TlsMemory::new(dc.tls_failure_memory)),
            metrics,
            wake,
            suppress_hard_bounce: Arc::new(
                config
                    .domains
                    .iter()
                    .filter(|d| d.suppresses_on("hard_bounce"))
                    .map(|d| d.name.to_ascii_lowercase())
                    .collect(),
            ),
            tracking_in_use: None,
            tls_sink: Arc::new(NoopSink),
            dane: None,
            mta_sts,
            webpki,
        }
    }

    /// Every delivery attempt's TLS outcome goes to `sink` (TLS-RPT).
    pub fn with_tls_outcome_sink(mut self, sink: Arc<dyn TlsOutcomeSink>) -> Self {
        self.tls_sink = sink;
        self
    }

    /// The MTA-STS cache deliveries use (`None` when `delivery.mta_sts`
    /// is off), for its background refresh.
    pub fn mta_sts(&self) -> Option<Arc<MtaSts>> {
        self.mta_sts.clone()
    }

    /// Takes bodies from the submission listener before asking the store.
    pub fn with_fresh_bodies(mut self, fresh: Arc<crate::outbound::fresh::FreshBodies>) -> Self {
        self.fresh = Some(fresh);
        self
    }

    /// DANE decides first for each MX host (see `tls_policy`).
    pub fn with_dane(mut self, dane: Arc<dyn DaneSource>) -> Self {
        self.dane = Some(dane);
        self
    }

    /// New links use the host the domain checker says is in use.
    pub fn with_tracking_hosts(mut self, hosts: crate::domains::TrackingHosts) -> Self {
        self.tracking_in_use = Some(hosts);
        self
    }

    /// Runs until shutdown, then waits up to `grace` for deliveries in
    /// flight (those still running keep their lease, and are retried once
    /// it has expired).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        self.recover().await;
        // Expired leases are looked for a few times per lease, so that one
        // left by a crashed node is not held much longer than lease_time.
        let recover_every =
            (self.lease_time / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
        let mut next_recover = Instant::now() + recover_every;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if Instant::now() >= next_recover {
                next_recover = Instant::now() + recover_every;
                self.recover().await;
            }
            // A free global slot first: nothing is claimed that cannot
            // start at once, so no lease waits behind a backlog.
            let global = tokio::select! {
                p = self.global.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stopped(&mut shutdown) => break,
            };
            let wait = match self.claim().await {
                Claim::Batch(batch, slot) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.deliver_batch(batch).await;
                        drop((slot, global));
                        this.wake.notify_one();
                    });
                    continue;
                }
                Claim::AllBusy => Duration::from_secs(1),
                Claim::NothingDue => self.idle_wait().await,
            };
            drop(global);
            let wait = wait.min(next_recover.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        self.stopping.store(true, Ordering::Relaxed);
        let all = self.max_concurrency as u32;
        if tokio::time::timeout(grace, self.global.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "deliveries still in flight at shutdown; their recipients are queued again"
            );
            self.release_all().await;
        }
    }

    async fn idle_wait(&self) -> Duration {
        let next = self.store.next_due().await.ok().flatten();
        let now = store::now_ms();
        match next {
            Some(t) if t <= now => Duration::from_millis(50),
            Some(t) => Duration::from_millis((t - now) as u64).min(Duration::from_secs(30)),
            None => Duration::from_secs(30),
        }
    }

    fn policy_for(&self, c: &Claimed) -> TlsPolicy {
        let domain_policy = self
            .domains
            .get(&c.domain.to_ascii_lowercase())
            .map(|d| d.tls)
            .unwrap_or(TlsPolicy::Opportunistic);
        // Through the smarthost, the stricter of its policy and the domain's.
        match self.router.relay() {
            Some(r)
                if self.router.uses_relay(rcpt_domain(&c.address))
                    && r.tls == TlsPolicy::Enforced =>
            {
                TlsPolicy::Enforced
            }
            _ => domain_policy,
        }
    }

    /// Delivers one leased batch (and what its connection takes on while
    /// it works), renewing the leases while it works.
    async fn deliver_batch(self: &Arc<Self>, batch: Vec<Claimed>) {
        if batch.is_empty() {
            return;
        }
        let leases = Leases::default();
        shelf::hold(&leases, &batch);
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        self.active_leases().insert(serial, leases.clone());
        let started = Instant::now();
        tokio::select! {
            _ = self.send(batch, leases.clone()) => {}
            _ = self.renew(&leases) => {}
        }
        self.active_leases().remove(&serial);
        self.metrics.delivery_latency.observe(started.elapsed());
    }

    /// Prepares and signs one recipient's copy of `stored`, just before its
    /// transaction, at most one per core at a time. A usual message (well
    /// under a millisecond of work) is prepared right on this task: handing
    /// it to the blocking pool and back cost two thread wake-ups per copy,
    /// about 4 % of the CPU per message (issue 15). The runtime has one
    /// worker more than cores (src/main.rs), so sockets keep moving while
    /// every core prepares. A big one goes to the blocking pool, so that it
    /// cannot hold up a runtime worker for long.
    async fn prepare_copy(
        self: &Arc<Self>,
        claim: &Claimed,
        stored: Arc<Stored>,
    ) -> Result<OutgoingMessage, String> {
        let permit = self
            .prepare_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| format!("preparing the message: {e}"))?;
        let data = if stored.body.len() <= INLINE_PREPARE_MAX {
            let data = self.copy_for(claim, &stored.received, &stored.body);
            drop(permit);
            data
        } else {
            let this = self.clone();
            let c = claim.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                this.copy_for(&c, &stored.received, &stored.body)
            })
            .await
            .map_err(|e| format!("preparing the message failed: {e}"))?
        };
        let needs_8bitmime = !data.is_ascii();
        Ok(OutgoingMessage {
            mail_from: self.envelope_sender(claim),
            rcpt_to: claim.address.clone(),
            data,
            needs_smtputf8: claim.smtputf8,
            needs_8bitmime,
        })
    }

    /// The recipient's own copy: tracked, with our Received: line, signed.
    fn copy_for(&self, claim: &Claimed, received: &[u8], raw: &[u8]) -> Vec<u8> {
        let domain = self.domains.get(&claim.domain.to_ascii_lowercase());
        let email_id = uuid::Uuid::parse_str(&claim.email_id).unwrap_or_default();
        let return_path_domain = domain
            .and_then(|d| d.return_path.as_ref())
            .map(|rp| format!("{rp}.{}", claim.domain.to_ascii_lowercase()));
        // The same token as the envelope sender's: whichever way feedback
        // comes back (bounce, complaint, unsubscribe), it names this copy.
        let has_feedback_address =
            return_path_domain.is_some() || domain.is_some_and(|d| d.tracking_host.is_some());
        let token = has_feedback_address
            .then(|| crate::feedback::return_path::encode(&self.keys, email_id, claim.idx));
        let configured = domain.and_then(|d| d.tracking_host.as_deref());
        let in_use = configured.map(|c| {
            self.tracking_in_use
                .as_ref()
                .and_then(|h| h.get(&claim.domain))
                .unwrap_or_else(|| c.to_string())
        });
        // Links already on any of the domain's tracking hosts stay as they are.
        let mut other_hosts = domain.map_or_else(Vec::new, |d| d.previous_tracking_hosts.clone());
        other_hosts.extend(configured.map(str::to_string));
        let opts = TrackingOptions {
            email_id,
            rcpt_index: claim.idx,
            scheme: &self.scheme,
            tracking_host: in_use.as_deref(),
            other_tracking_hosts: &other_hosts,
            open_tracking: domain.is_some_and(|d| d.open_tracking),
            click_tracking: domain.is_some_and(|d| d.click_tracking),
            feedback: token.as_deref().map(|token| prepare::Feedback {
                token,
                return_path_domain: return_path_domain.as_deref(),
                list_unsubscribe: domain.is_some_and(|d| d.list_unsubscribe),
            }),
        };
        let prepared = prepare::prepare(raw, &opts, &self.keys);
        for why in &prepared.unchanged_parts {
            tracing::info!(email_id = %claim.email_id, "part left unchanged: {why}");
        }
        // Every recipient's copy would say the same: once per message.
        if prepared.list_unsubscribe == prepare::ListUnsubscribe::NoAddress && claim.idx == 0 {
            tracing::debug!(email_id = %claim.email_id, "List-Unsubscribe not added: the domain has neither a tracking_subdomain nor a return_path to point it at");
        }
        let mut message = Vec::with_capacity(received.len() + prepared.message.len() + 1024);
        // CRLF only, before signing: what is signed is what goes out, and
        // no receiver can read a bare CR or LF as the end of the data.
        protocol::normalize_line_ends_into(received, &mut message);
        protocol::normalize_line_ends_into(&prepared.message, &mut message);
        let keys = domain.map(|d| d.dkim.as_slice()).unwrap_or(&[]);
        if keys.is_empty() {
            return message;
        }
        match dkim::sign(&message, keys) {
            Ok(sig) => {
                // In place, in the room reserved above: a second 50 KB
                // buffer per copy cost an allocation, a copy and, once
                // freed, page faults on the next one.
                message.splice(0..0, sig);
                message
            }
            Err(e) => {
                // Unsigned beats undelivered; the log says why.
                tracing::warn!(email_id = %claim.email_id, "DKIM signing failed, sending unsigned: {e}");
                message
            }
        }
    }

    /// The submitted MAIL FROM, or a per-recipient address at the domain's
    /// return-path subdomain, so a bounce names the email and recipient.
    fn envelope_sender(&self, claim: &Claimed) -> String {
        let domain = claim.domain.to_ascii_lowercase();
        match self
            .domains
            .get(&domain)
            .and_then(|d| d.return_path.as_ref())
        {
            // Bounces come back with an authenticated token naming this
            // email and recipient (src/feedback/return_path.rs). An id that
            // is not a UUID cannot happen for stored mail; if it did, the
            // sender's own address is a safe fallback.
            Some(rp) => uuid::Uuid::parse_str(&claim.email_id)
                .ok()
                .and_then(|id| {
                    crate::feedback::return_path::address(
                        &self.keys,
                        "bounces",
                        &format!("{rp}.{domain}"),
                        id,
                        claim.idx,
                    )
                })
                .unwrap_or_else(|| claim.mail_from.clone()),
            None => claim.mail_from.clone(),
        }
    }

    fn client_config(&self, domain: &str, policy: TlsPolicy) -> ClientConfig {
        let mut cfg = ClientConfig::new(self.hostname.clone());
        cfg.tls_policy = match policy {
            TlsPolicy::Enforced => client::TlsPolicy::Enforced,
            TlsPolicy::Opportunistic => client::TlsPolicy::Opportunistic,
        };
        if self.router.uses_relay(domain) {
            if let Some(r) = self.router.relay() {
                cfg.implicit_tls = r.implicit_tls;
                if let (Some(u), Some(p)) = (&r.username, &r.password) {
                    cfg.auth = Some((u.clone(), p.clone()));
                }
            }
        }
        cfg
    }

    /// Tries each host in turn with the messages not yet settled. Each
    /// delivery or bounce is recorded as its transaction ends; a temporary
    /// failure once no host is left to try.
    async fn send(self: &Arc<Self>, batch: Vec<Claimed>, leases: Leases) {
        let Some(first) = batch.first() else { return };
        let domain = rcpt_domain(&first.address).to_string();
        let policy = self.policy_for(first);
        let targets = match self.router.targets(&domain).await {
            Ok(t) => t,
            Err(RouteError::Temporary(why)) => {
                let attempts = batch
                    .iter()
                    .map(|c| self.temp_failure(c, why.clone(), None, None))
                    .collect();
                return self.record(attempts).await;
            }
            Err(RouteError::Permanent(why)) => {
                let attempts = batch
                    .iter()
                    .map(|c| attempt(c, QueueOutcome::Bounced, why.clone(), None, None))
                    .collect();
                return self.record(attempts).await;
            }
        };
        let cfg = self.client_config(&domain, policy);
        let uses_mx = self.router.uses_mx(&domain);
        let sts = match &self.mta_sts {
            Some(m) if uses_mx => m.state(&domain).await,
            _ => StsState::Absent,
        };
        if let StsState::FetchFailed(kind, why) = &sts {
            let mut d = HostDecision::floor(policy, &domain);
            d.policy.policy_type = "sts";
            let failure = SessionResult::Failure(*kind, why.clone());
            // RFC 8460's failure details name the receiving MX: the one this
            // attempt goes to first (no address yet, so no receiving-ip).
            let mx = targets.first().map_or("", |t| t.name.as_str());
            self.report_tls(&d, mx, None, failure, false, uses_mx);
        }
        tracing::debug!(%domain, recipients = batch.len(), "connection for a new batch");
        let shelf = self.open_shelf(self.shelf_key(first), batch);
        let mut source = Batch {
            runner: self.clone(),
            shelf,
            sharing: true,
            leases,
            given: 0,
            pending: std::collections::VecDeque::new(),
            in_flight: std::collections::VecDeque::new(),
            failed: Vec::new(),
            host: String::new(),
            stored: None,
            tls_note: None,
            report_only: false,
        };
        let mut failed: Vec<(Claimed, LastFailure)> = Vec::new();
        for Target { addr, name } in &targets {
            if source.pending.is_empty() && source.shelf.len() == 0 {
                break;
            }
            source.host = name.clone();
            let dane = match &self.dane {
                Some(dane) if uses_mx => dane.host(&domain, name, addr.port()).await,
                _ => DaneHost::NotApplicable,
            };
            let decision = tls_policy::decide(policy, &domain, &sts, dane, name);
            let note = TlsPolicyNote {
                applied: decision.applied.as_str().to_string(),
                failure: decision
                    .known_failure
                    .as_ref()
                    .map(|(k, why)| (k.as_str().to_string(), why.clone())),
            };
            source.tls_note = Some(note.clone());
            source.report_only = decision.report_only;
            let session = match self.session_tls(&decision) {
                Ok(session) => session,
                Err((kind, why)) => {
                    self.report_tls(
                        &decision,
                        name,
                        Some(addr.ip()),
                        SessionResult::Failure(kind, why.clone()),
                        true,
                        uses_mx,
                    );
                    source.unshelve();
                    for c in source.pending.drain(..) {
                        let last = (why.clone(), None, name.clone(), Some(note.clone()));
                        source.failed.push((c, last));
                    }
                    failed = std::mem::take(&mut source.failed);
                    source.pending = failed.iter().map(|(c, _)| c.clone()).collect();
                    continue;
                }
            };
            let (rest, result) = client::deliver_each_tls(
                *addr,
                name,
                &cfg,
                &session,
                &mut source,
                &self.tls_memory,
            )
            .await;
            source.unshelve();
            // One outcome per session: a host outside the policy's mx
            // patterns is the failure, whatever its certificate.
            let result = match (&decision.known_failure, result) {
                (Some((kind, why)), SessionResult::Success) => {
                    SessionResult::Failure(*kind, why.clone())
                }
                (_, result) => result,
            };
            self.report_tls(&decision, name, Some(addr.ip()), result, false, uses_mx);
            if let Err(NotAttempted { reason, tls }) = rest {
                let reason = match decision.applied {
                    Applied::MtaSts => format!("MTA-STS policy of {domain} (enforce): {reason}"),
                    Applied::Dane => format!("DANE: {reason}"),
                    _ => reason,
                };
                let note = source.tls_note.clone();
                let left: Vec<Claimed> = source.pending.drain(..).collect();
                for c in left {
                    source
                        .failed
                        .push((c, (reason.clone(), tls.clone(), name.clone(), note.clone())));
                }
            }
            // RFC 5321 5.1: a temporary failure at one MX host is worth
            // trying at the next.
            failed = std::mem::take(&mut source.failed);
            source.pending = failed.iter().map(|(c, _)| c.clone()).collect();
        }
        source.unshelve();
        if targets.is_empty() {
            let why = "no host could be reached".to_string();
            failed = source
                .pending
                .drain(..)
                .map(|c| (c, (why.clone(), None, String::new(), None)))
                .collect();
        }
        let attempts = failed
            .into_iter()
            .map(|(c, (reason, tls, host, note))| {
                let mut a =
                    self.temp_failure(&c, reason, tls, Some(host).filter(|h| !h.is_empty()));
                a.tls_policy = note;
                a
            })
            .collect();
        self.record(attempts).await;
    }

    /// What the client must do at one host; `Err` when the host must not
    /// be tried (refused by the policy, or no verifier to honour it).
    fn session_tls(
        &self,
        d: &HostDecision,
    ) -> Result<SessionTls, (tls_policy::ResultType, String)> {
        if let Some(refuse) = &d.refuse {
            return Err(refuse.clone());
        }
        let verifier = match &d.verification {
            Verification::AnyCertificate => None,
            Verification::WebPki => match &self.webpki {
                Ok(v) => Some(v.clone()),
                Err(e) => {
                    return Err((tls_policy::ResultType::ValidationFailure, e.clone()));
                }
            },
            Verification::Dane(v) => Some(v.clone()),
        };
        Ok(SessionTls {
            require_tls: d.require_tls,
            verifier,
            report_only: d.report_only,
            applied: d.applied,
        })
    }

    /// The one place every attempt's TLS outcome goes: metrics, and for
    /// MX delivery the outcome sink (TLS-RPT: a static route's or the
    /// smarthost's TLS is none of the recipient domain's business).
    /// `refused`: the host was not even tried.
    fn report_tls(
        &self,
        d: &HostDecision,
        mx_host: &str,
        ip: Option<std::net::IpAddr>,
        result: SessionResult,
        refused: bool,
        uses_mx: bool,
    ) {
        let label = match (&result, refused) {
            (SessionResult::NotApplicable, _) => return,
            (_, true) => "refused",
            (SessionResult::Success, _) => "success",
            (SessionResult::Failure(..), _) if d.report_only => "report_only_failure",
            (SessionResult::Failure(..), _) => "failure",
        };
        self.metrics.tls_policy.session(d.applied.as_str(), label);
        if !uses_mx {
            return;
        }
        self.tls_sink.record(&TlsOutcome {
            at: store::now_ms(),
            applied: d.applied,
            policy: d.policy.clone(),
            mx_host: mx_host.to_string(),
            receiving_ip: ip,
            result,
            report_only: d.report_only,
        });
    }

    /// Deferred on the retry schedule, or bounced once past `expire_after`.
    fn temp_failure(
        &self,
        claim: &Claimed,
        reason: String,
        tls: Option<String>,
        host: Option<String>,
    ) -> Attempt {
        let now = store::now_ms();
        let n = claim.attempts as usize; // attempts before this one
        let delay = self
            .retry
            .get(n)
            .or(self.retry.last())
            .copied()
            .unwrap_or(Duration::from_secs(3600));
        let next = now + delay.as_millis() as i64;
        let expires = claim.email_created_at + self.expire_after.as_millis() as i64;
        if next > expires {
            let why = format!(
                "gave up after {} attempt(s) over {}: {reason}",
                n + 1,
                humantime::format_duration(Duration::from_millis(
                    (now - claim.email_created_at).max(0) as u64 / 1000 * 1000
                ))
            );
            return attempt(claim, QueueOutcome::Bounced, why, tls, host);
        }
        attempt(
            claim,
            QueueOutcome::Deferred {
                next_attempt_at: next,
            },
            reason,
            tls,
            host,
        )
    }

    async fn record(&self, attempts: Vec<Attempt>) {
        if attempts.is_empty() {
            return;
        }
        for a in &attempts {
            match a.outcome {
                QueueOutcome::Delivered => self.metrics.delivered.inc(),
                QueueOutcome::Deferred { .. } => self.metrics.deferred.inc(),
                QueueOutcome::Bounced => self.metrics.bounced.inc(),
                QueueOutcome::Failed => self.metrics.failed.inc(),
            }
            let level_info = matches!(a.outcome, QueueOutcome::Delivered);
            if level_info {
                tracing::info!(email_id = %a.email_id, rcpt = a.idx, host = ?a.mx, tls = ?a.tls, "delivered: {}", a.response);
            } else {
                tracing::info!(email_id = %a.email_id, rcpt = a.idx, host = ?a.mx, outcome = ?a.outcome, "{}", a.response);
            }
        }
        let result = self
            .store
            .record(attempts, &self.suppress_hard_bounce)
            .await;
        match result {
            Ok(suppressed) => {
                for (email_id, idx) in suppressed {
                    tracing::info!(%email_id, rcpt = idx, "recipient suppressed after a hard bounce");
                }
            }
            Err(e) => tracing::error!("recording delivery outcomes: {e}"),
        }
    }
}

fn attempt(
    c: &Claimed,
    outcome: QueueOutcome,
    response: String,
    tls: Option<String>,
    mx: Option<String>,
) -> Attempt {
    Attempt {
        email_id: c.email_id.clone(),
        idx: c.idx,
        lease_id: c.lease_id.clone(),
        at: store::now_ms(),
        outcome,
        response,
        tls,
        mx,
        tls_policy: None,
    }
}

fn rcpt_domain(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or(address)
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
