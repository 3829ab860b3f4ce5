//! The queue runner: takes due recipients from the store, prepares and signs
//! each recipient's copy, delivers them one connection's worth at a time,
//! and records every outcome with its event.
//!
//! A recipient is leased while it is being delivered; a lease that outlives
//! its process (SIGKILL, power loss) is given back at the next start, so
//! delivery is at least once and nothing is left stranded "in flight".

use super::client::{self, ClientConfig, Outcome, OutgoingMessage};
use super::dkim::{self, DkimKey};
use super::route::{RouteError, Router, Target};
use super::tls::TlsMemory;
use crate::config::{Config, TlsPolicy};
use crate::metrics::Metrics;
use crate::prepare::{self, TokenKeys, TrackingOptions};
use crate::store::queue::{Attempt, Claimed, Outcome as QueueOutcome};
use crate::store::{self, Durability, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// How long a claimed recipient stays ours without news. Longer than the
/// longest attempt (RFC 5321 timeouts add up to about 25 minutes).
const LEASE_MS: i64 = 45 * 60 * 1000;

/// What the runner needs to know about a sending domain.
pub struct SendingDomain {
    pub tls: TlsPolicy,
    pub return_path: Option<String>,
    pub tracking_host: Option<String>,
    pub previous_tracking_hosts: Vec<String>,
    pub open_tracking: bool,
    pub click_tracking: bool,
    pub dkim: Vec<DkimKey>,
}

pub struct Runner {
    store: Store,
    router: Router,
    keys: Arc<TokenKeys>,
    domains: HashMap<String, SendingDomain>,
    hostname: String,
    scheme: String,
    retry: Vec<Duration>,
    expire_after: Duration,
    per_connection: usize,
    max_per_destination: usize,
    global: Arc<Semaphore>,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Arc<Semaphore>,
    max_tasks: u32,
    tls_memory: Arc<TlsMemory>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

/// A stored message: our trace header and the bytes as submitted.
type Stored = (Vec<u8>, Vec<u8>);

/// The last temporary failure of a message: reason, TLS version, host.
type LastFailure = (String, Option<String>, String);

/// A recipient's copy, ready for the wire.
struct Ready {
    claim: Claimed,
    message: OutgoingMessage,
}

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
                        dkim: keys,
                    },
                )
            })
            .collect();
        let dc = &config.delivery;
        // Tasks waiting for a per-destination slot hold their lease, so
        // their number is bounded too.
        let max_tasks = (dc.max_concurrency * 2).max(4) as u32;
        Runner {
            store,
            router,
            keys,
            domains,
            hostname: config.server.hostname.clone(),
            scheme: config.tracking.scheme.clone(),
            retry: dc.retry.clone(),
            expire_after: dc.expire_after,
            per_connection: dc.max_messages_per_connection.max(1),
            max_per_destination: dc.max_per_destination.max(1),
            global: Arc::new(Semaphore::new(dc.max_concurrency.max(1))),
            destinations: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Semaphore::new(max_tasks as usize)),
            max_tasks,
            tls_memory: Arc::new(TlsMemory::new(dc.tls_failure_memory)),
            metrics,
            wake,
        }
    }

    /// Runs until shutdown, then waits up to `grace` for deliveries in
    /// flight (those still running are recovered at the next start).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let recovered = self
            .store
            .write(Durability::Normal, |tx| {
                store::queue::recover_leases(tx, store::now_ms(), true)
            })
            .await;
        match recovered {
            Ok(n) if n > 0 => tracing::info!(
                "{n} recipient(s) were being delivered when trackrelay stopped; queued again"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("recovering leases: {e}"),
        }
        let mut last_recover = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_recover.elapsed() > Duration::from_secs(60) {
                last_recover = Instant::now();
                let _ = self
                    .store
                    .write(Durability::Normal, |tx| {
                        store::queue::recover_leases(tx, store::now_ms(), false)
                    })
                    .await;
            }
            let free = self.in_flight.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                let limit = free * self.per_connection;
                let now = store::now_ms();
                match self
                    .store
                    .write(Durability::Normal, move |tx| {
                        store::queue::claim_due(tx, now, LEASE_MS, limit)
                    })
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("claiming due recipients: {e}");
                        Vec::new()
                    }
                }
            };
            if claimed.is_empty() {
                let wait = self.idle_wait().await;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            for batch in self.batches(claimed) {
                let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                    break;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    this.deliver_batch(batch).await;
                    drop(permit);
                    this.wake.notify_one();
                });
            }
        }
        if tokio::time::timeout(grace, self.in_flight.acquire_many(self.max_tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                "deliveries still in flight at shutdown; they are retried at the next start"
            );
        }
    }

    async fn idle_wait(&self) -> Duration {
        let next = self.store.read(store::queue::next_due).await.ok().flatten();
        let now = store::now_ms();
        match next {
            Some(t) if t <= now => Duration::from_millis(50),
            Some(t) => Duration::from_millis((t - now) as u64).min(Duration::from_secs(30)),
            None => Duration::from_secs(30),
        }
    }

    /// Groups by destination and TLS policy, then cuts into connection-sized batches.
    fn batches(&self, claimed: Vec<Claimed>) -> Vec<Vec<Claimed>> {
        let mut groups: HashMap<(String, bool), Vec<Claimed>> = HashMap::new();
        for c in claimed {
            let dest = self.router.destination(rcpt_domain(&c.address));
            let enforced = self.policy_for(&c) == TlsPolicy::Enforced;
            groups.entry((dest, enforced)).or_default().push(c);
        }
        groups
            .into_values()
            .flat_map(|g| {
                g.chunks(self.per_connection)
                    .map(|c| c.to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
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

    fn destination_slots(&self, dest: &str) -> Arc<Semaphore> {
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(dest.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_destination)))
            .clone()
    }

    async fn deliver_batch(&self, batch: Vec<Claimed>) {
        let Some(first) = batch.first() else { return };
        let domain = rcpt_domain(&first.address).to_string();
        let dest = self.router.destination(&domain);
        let policy = self.policy_for(first);
        let slots = self.destination_slots(&dest);
        let (Ok(_dest_permit), Ok(_global_permit)) =
            (slots.acquire().await, self.global.acquire().await)
        else {
            return;
        };
        let started = Instant::now();
        let (ready, mut attempts) = self.build(batch).await;
        if !ready.is_empty() {
            attempts.extend(self.send(&domain, policy, ready).await);
        }
        self.metrics.delivery_latency.observe(started.elapsed());
        self.record(attempts).await;
    }

    /// Prepares, stamps and signs each recipient's copy. Recipients whose
    /// message is gone come back as failed attempts.
    async fn build(&self, batch: Vec<Claimed>) -> (Vec<Ready>, Vec<Attempt>) {
        // Email id to its (trace header, body), read once per batch.
        let mut bodies: HashMap<String, Option<Stored>> = HashMap::new();
        let mut ready = Vec::new();
        let mut failed = Vec::new();
        for claim in batch {
            if !bodies.contains_key(&claim.email_id) {
                let id = claim.email_id.clone();
                let body = self
                    .store
                    .read(move |c| store::emails::body(c, &id))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(email_id = %claim.email_id, "reading the message: {e}");
                        None
                    });
                bodies.insert(claim.email_id.clone(), body);
            }
            let Some(Some((received, raw))) = bodies.get(&claim.email_id) else {
                failed.push(attempt(
                    &claim,
                    QueueOutcome::Failed,
                    "the message body is no longer stored".into(),
                    None,
                    None,
                ));
                continue;
            };
            let data = self.copy_for(&claim, received, raw);
            let mail_from = self.envelope_sender(&claim);
            let needs_8bitmime = data.iter().any(|b| *b >= 0x80);
            ready.push(Ready {
                message: OutgoingMessage {
                    mail_from,
                    rcpt_to: claim.address.clone(),
                    data,
                    needs_smtputf8: claim.smtputf8,
                    needs_8bitmime,
                },
                claim,
            });
        }
        (ready, failed)
    }

    /// The recipient's own copy: tracked, with our Received: line, signed.
    fn copy_for(&self, claim: &Claimed, received: &[u8], raw: &[u8]) -> Vec<u8> {
        let domain = self.domains.get(&claim.domain.to_ascii_lowercase());
        let email_id = uuid::Uuid::parse_str(&claim.email_id).unwrap_or_default();
        let no_hosts: Vec<String> = Vec::new();
        let opts = TrackingOptions {
            email_id,
            rcpt_index: claim.idx,
            scheme: &self.scheme,
            tracking_host: domain.and_then(|d| d.tracking_host.as_deref()),
            other_tracking_hosts: domain
                .map(|d| d.previous_tracking_hosts.as_slice())
                .unwrap_or(&no_hosts),
            open_tracking: domain.is_some_and(|d| d.open_tracking),
            click_tracking: domain.is_some_and(|d| d.click_tracking),
        };
        let prepared = prepare::prepare(raw, &opts, &self.keys);
        for why in &prepared.unchanged_parts {
            tracing::info!(email_id = %claim.email_id, "part left unchanged: {why}");
        }
        let mut message = Vec::with_capacity(received.len() + prepared.message.len() + 1024);
        message.extend_from_slice(received);
        message.extend_from_slice(&prepared.message);
        let keys = domain.map(|d| d.dkim.as_slice()).unwrap_or(&[]);
        if keys.is_empty() {
            return message;
        }
        match dkim::sign(&message, keys) {
            Ok(sig) => {
                let mut signed = sig;
                signed.extend_from_slice(&message);
                signed
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
            Some(rp) => {
                let id = uuid::Uuid::parse_str(&claim.email_id)
                    .map(|u| u.simple().to_string())
                    .unwrap_or_else(|_| claim.email_id.replace('-', ""));
                format!("bounces+{id}.{}@{rp}.{domain}", claim.idx)
            }
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

    /// Tries each host in turn with the messages not yet settled.
    async fn send(&self, domain: &str, policy: TlsPolicy, ready: Vec<Ready>) -> Vec<Attempt> {
        let targets = match self.router.targets(domain).await {
            Ok(t) => t,
            Err(RouteError::Temporary(why)) => {
                return ready
                    .iter()
                    .map(|r| self.temp_failure(&r.claim, why.clone(), None, None))
                    .collect();
            }
            Err(RouteError::Permanent(why)) => {
                return ready
                    .iter()
                    .map(|r| attempt(&r.claim, QueueOutcome::Bounced, why.clone(), None, None))
                    .collect();
            }
        };
        let cfg = self.client_config(domain, policy);
        // Each message still to settle, with its last temporary failure
        // (reason, TLS version, host).
        let mut pending: Vec<(Ready, Option<LastFailure>)> =
            ready.into_iter().map(|r| (r, None)).collect();
        let mut done = Vec::new();
        for Target { addr, name } in &targets {
            if pending.is_empty() {
                break;
            }
            let msgs: Vec<OutgoingMessage> =
                pending.iter().map(|(r, _)| r.message.clone()).collect();
            let outcomes = client::deliver(*addr, name, &cfg, &msgs, &self.tls_memory).await;
            let mut still = Vec::new();
            for ((r, _), outcome) in pending.into_iter().zip(outcomes) {
                let tls = outcome.tls().map(str::to_string);
                match outcome {
                    Outcome::Delivered { response, .. } => done.push(attempt(
                        &r.claim,
                        QueueOutcome::Delivered,
                        response,
                        tls,
                        Some(name.clone()),
                    )),
                    Outcome::PermFail { reason, .. } => done.push(attempt(
                        &r.claim,
                        QueueOutcome::Bounced,
                        reason,
                        tls,
                        Some(name.clone()),
                    )),
                    // RFC 5321 5.1: a temporary failure at one MX host is
                    // worth trying at the next.
                    Outcome::TempFail { reason, .. } => {
                        still.push((r, Some((reason, tls, name.clone()))))
                    }
                }
            }
            pending = still;
        }
        for (r, last) in pending {
            let (reason, tls, host) =
                last.unwrap_or_else(|| ("no host could be reached".into(), None, String::new()));
            done.push(self.temp_failure(
                &r.claim,
                reason,
                tls,
                Some(host).filter(|h| !h.is_empty()),
            ));
        }
        done
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
        // A lost record means a resend after the lease runs out (at least
        // once), never a lost message, so NORMAL durability is enough.
        let result = self
            .store
            .write(Durability::Normal, move |tx| {
                for a in &attempts {
                    store::queue::record(tx, a)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::error!("recording delivery outcomes: {e}");
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
        at: store::now_ms(),
        outcome,
        response,
        tls,
        mx,
    }
}

fn rcpt_domain(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or(address)
}
