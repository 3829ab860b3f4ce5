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

use super::client::{self, ClientConfig, MessageSource, NotAttempted, Outcome, OutgoingMessage};
use super::dkim::{self, DkimKey};
use super::protocol;
use super::route::{RouteError, Router, Target};
use super::tls::TlsMemory;
use crate::config::{Config, TlsPolicy};
use crate::metrics::Metrics;
use crate::prepare::{self, TokenKeys, TrackingOptions};
use crate::store::queue::{Attempt, Claimed, Outcome as QueueOutcome};
use crate::store::{self, Durability, Store};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Due recipients read per claim round, to find a destination with a free
/// slot among them.
const CANDIDATES: usize = 500;
/// Claim rounds before the runner waits for a slot to free up.
const CLAIM_ROUNDS: usize = 4;

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
    max_concurrency: usize,
    max_per_destination: usize,
    lease_time: Duration,
    global: Arc<Semaphore>,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The leases of the batches in flight, with their rows: given back
    /// when shutdown leaves them unfinished.
    active: Mutex<HashMap<String, Vec<(String, u32)>>>,
    /// Preparing and signing is CPU work: off the async threads, and no
    /// more at once than there are cores.
    prepare_slots: Arc<Semaphore>,
    tls_memory: Arc<TlsMemory>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

/// A stored message: our trace header and the bytes as submitted.
type Stored = (Vec<u8>, Vec<u8>);

/// The last temporary failure of a message: reason, TLS version, host.
type LastFailure = (String, Option<String>, String);

/// What one claim found.
enum Claim {
    /// A batch leased, with the destination slot it will use.
    Batch(Vec<Claimed>, OwnedSemaphorePermit),
    /// Recipients are due, but every destination they go to is busy.
    AllBusy,
    NothingDue,
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
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
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
            max_concurrency: dc.max_concurrency.max(1),
            max_per_destination: dc.max_per_destination.max(1),
            lease_time: dc.lease_time,
            global: Arc::new(Semaphore::new(dc.max_concurrency.max(1))),
            destinations: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            prepare_slots: Arc::new(Semaphore::new(cores)),
            tls_memory: Arc::new(TlsMemory::new(dc.tls_failure_memory)),
            metrics,
            wake,
        }
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

    /// Gives back the leases of the batches still in flight, so that a
    /// restart need not wait for them to expire.
    async fn release_all(&self) {
        let active: Vec<(String, Vec<(String, u32)>)> = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let now = store::now_ms();
        let released = self
            .store
            .write(Durability::Normal, move |tx| {
                let mut n = 0;
                for (lease_id, keys) in &active {
                    n += store::queue::release(tx, lease_id, keys, now)?;
                }
                Ok(n)
            })
            .await;
        match released {
            Ok(n) => tracing::info!("{n} recipient(s) unfinished at shutdown queued again"),
            Err(e) => tracing::error!("giving back delivery leases at shutdown: {e}"),
        }
    }

    async fn recover(&self) {
        let recovered = self
            .store
            .write(Durability::Normal, |tx| {
                store::queue::recover_leases(tx, store::now_ms())
            })
            .await;
        match recovered {
            Ok(n) if n > 0 => tracing::info!(
                "{n} recipient(s) whose delivery lease expired (their runner stopped) queued again"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("recovering expired leases: {e}"),
        }
    }

    /// Leases one connection's worth of due recipients for a destination
    /// that has a free slot, oldest due first.
    async fn claim(&self) -> Claim {
        let mut skip: Vec<String> = Vec::new();
        for _ in 0..CLAIM_ROUNDS {
            let now = store::now_ms();
            let skipped = skip.clone();
            let due = match self
                .store
                .read(move |c| store::queue::due(c, now, CANDIDATES, &skipped))
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("reading due recipients: {e}");
                    return Claim::NothingDue;
                }
            };
            if due.is_empty() {
                return if skip.is_empty() {
                    Claim::NothingDue
                } else {
                    Claim::AllBusy
                };
            }
            for (dest, group) in self.groups(due) {
                let Ok(slot) = self.destination_slots(&dest).try_acquire_owned() else {
                    for c in &group {
                        let d = rcpt_domain(&c.address).to_ascii_lowercase();
                        if !skip.contains(&d) {
                            skip.push(d);
                        }
                    }
                    continue;
                };
                let lease_id = uuid::Uuid::now_v7().to_string();
                let lease_ms = self.lease_time.as_millis() as i64;
                let now = store::now_ms();
                let claimed = self
                    .store
                    .write(Durability::Normal, move |tx| {
                        store::queue::claim(tx, group, &lease_id, now, lease_ms)
                    })
                    .await;
                match claimed {
                    Ok(c) if !c.is_empty() => return Claim::Batch(c, slot),
                    // Taken by another runner since it was read.
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("claiming due recipients: {e}");
                        return Claim::NothingDue;
                    }
                }
            }
        }
        Claim::AllBusy
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

    /// Groups by destination and TLS policy, in order of first appearance,
    /// each cut to one connection's worth.
    fn groups(&self, due: Vec<Claimed>) -> Vec<(String, Vec<Claimed>)> {
        let mut groups: Vec<((String, bool), Vec<Claimed>)> = Vec::new();
        for c in due {
            let dest = self.router.destination(rcpt_domain(&c.address));
            let key = (dest, self.policy_for(&c) == TlsPolicy::Enforced);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) if g.len() >= self.per_connection => {}
                Some((_, g)) => g.push(c),
                None => groups.push((key, vec![c])),
            }
        }
        groups.into_iter().map(|((d, _), g)| (d, g)).collect()
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

    /// Delivers one leased batch, renewing its lease while it works.
    async fn deliver_batch(self: &Arc<Self>, batch: Vec<Claimed>) {
        let Some(first) = batch.first() else { return };
        let lease_id = first.lease_id.clone();
        let keys: Vec<(String, u32)> = batch.iter().map(|c| (c.email_id.clone(), c.idx)).collect();
        self.active_leases().insert(lease_id.clone(), keys.clone());
        let started = Instant::now();
        tokio::select! {
            _ = self.send(batch) => {}
            _ = self.renew(&lease_id, keys) => {}
        }
        self.active_leases().remove(&lease_id);
        self.metrics.delivery_latency.observe(started.elapsed());
    }

    fn active_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(String, u32)>>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extends the lease every third of `lease_time`, for as long as the
    /// connection works (the caller drops this future when it is done).
    async fn renew(&self, lease_id: &str, keys: Vec<(String, u32)>) {
        let every = self.lease_time / 3;
        let lease_ms = self.lease_time.as_millis() as i64;
        let keys = Arc::new(keys);
        loop {
            tokio::time::sleep(every).await;
            let id = lease_id.to_string();
            let keys = keys.clone();
            let until = store::now_ms() + lease_ms;
            if let Err(e) = self
                .store
                .write(Durability::Normal, move |tx| {
                    store::queue::renew(tx, &id, &keys, until)
                })
                .await
            {
                tracing::error!("renewing a delivery lease: {e}");
            }
        }
    }

    /// Prepares and signs one recipient's copy of `stored` on the bounded
    /// blocking pool, just before its transaction.
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
        let this = self.clone();
        let c = claim.clone();
        let data = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.copy_for(&c, &stored.0, &stored.1)
        })
        .await
        .map_err(|e| format!("preparing the message failed: {e}"))?;
        let needs_8bitmime = data.iter().any(|b| *b >= 0x80);
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

    /// Tries each host in turn with the messages not yet settled. Each
    /// delivery or bounce is recorded as its transaction ends; a temporary
    /// failure once no host is left to try.
    async fn send(self: &Arc<Self>, batch: Vec<Claimed>) {
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
        let mut source = Batch {
            runner: self.clone(),
            pending: batch.into(),
            current: None,
            failed: Vec::new(),
            host: String::new(),
            stored: None,
        };
        let mut failed: Vec<(Claimed, LastFailure)> = Vec::new();
        for Target { addr, name } in &targets {
            if source.pending.is_empty() {
                break;
            }
            source.host = name.clone();
            let rest = client::deliver_each(*addr, name, &cfg, &mut source, &self.tls_memory).await;
            if let Err(NotAttempted { reason, tls }) = rest {
                let left: Vec<Claimed> = source.pending.drain(..).collect();
                for c in left {
                    source
                        .failed
                        .push((c, (reason.clone(), tls.clone(), name.clone())));
                }
            }
            // RFC 5321 5.1: a temporary failure at one MX host is worth
            // trying at the next.
            failed = std::mem::take(&mut source.failed);
            source.pending = failed.iter().map(|(c, _)| c.clone()).collect();
        }
        if targets.is_empty() {
            let why = "no host could be reached".to_string();
            failed = source
                .pending
                .drain(..)
                .map(|c| (c, (why.clone(), None, String::new())))
                .collect();
        }
        let attempts = failed
            .into_iter()
            .map(|(c, (reason, tls, host))| {
                self.temp_failure(&c, reason, tls, Some(host).filter(|h| !h.is_empty()))
            })
            .collect();
        self.record(attempts).await;
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
        lease_id: c.lease_id.clone(),
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

/// One leased batch as a connection's message source: each copy is read,
/// prepared and signed when the connection asks for it, and each outcome
/// recorded when the connection reports it.
struct Batch {
    runner: Arc<Runner>,
    /// Not yet tried at the current host.
    pending: VecDeque<Claimed>,
    /// The one in its transaction.
    current: Option<Claimed>,
    /// Temporarily failed at the current host, and why.
    failed: Vec<(Claimed, LastFailure)>,
    host: String,
    /// The last stored message read (recipients of one email come
    /// together), so a batch holds at most one.
    stored: Option<(String, Option<Arc<Stored>>)>,
}

impl Batch {
    async fn stored_for(&mut self, email_id: &str) -> Option<Arc<Stored>> {
        if let Some((id, stored)) = &self.stored {
            if id == email_id {
                return stored.clone();
            }
        }
        let id = email_id.to_string();
        let stored = self
            .runner
            .store
            .read(move |c| store::emails::body(c, &id))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(email_id, "reading the message: {e}");
                None
            })
            .map(Arc::new);
        self.stored = Some((email_id.to_string(), stored.clone()));
        stored
    }
}

impl MessageSource for Batch {
    async fn next(&mut self) -> Option<OutgoingMessage> {
        while let Some(c) = self.pending.pop_front() {
            let Some(stored) = self.stored_for(&c.email_id).await else {
                let why = "the message body is no longer stored".to_string();
                let failed = attempt(&c, QueueOutcome::Failed, why, None, None);
                self.runner.record(vec![failed]).await;
                continue;
            };
            match self.runner.prepare_copy(&c, stored).await {
                Ok(msg) => {
                    self.current = Some(c);
                    return Some(msg);
                }
                Err(why) => {
                    tracing::error!(email_id = %c.email_id, rcpt = c.idx, "{why}");
                    self.failed.push((c, (why, None, self.host.clone())));
                }
            }
        }
        None
    }

    async fn outcome(&mut self, outcome: Outcome) {
        let Some(c) = self.current.take() else { return };
        let tls = outcome.tls().map(str::to_string);
        let host = Some(self.host.clone());
        let done = match outcome {
            Outcome::Delivered { response, .. } => {
                attempt(&c, QueueOutcome::Delivered, response, tls, host)
            }
            Outcome::PermFail { reason, .. } => {
                attempt(&c, QueueOutcome::Bounced, reason, tls, host)
            }
            Outcome::TempFail { reason, .. } => {
                self.failed.push((c, (reason, tls, self.host.clone())));
                return;
            }
        };
        self.runner.record(vec![done]).await;
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
