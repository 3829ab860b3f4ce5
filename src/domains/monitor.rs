//! The background checker `serve` runs: every configured domain is checked
//! at start, then every `[domain_checks] interval` while it is not
//! verified and every `verified_interval` once it is, with the same code
//! as `trackrelay dns-check`. Each result is stored; a status change is
//! written with its history entry and its `domain.updated` event (and
//! webhooks) in one transaction, and the tracking host in use is updated
//! in memory for the queue runner.
//!
//! The first check of a domain that finds it merely pending (nothing
//! published yet) goes into the history but sends no event: every new
//! domain starts there, and a webhook saying so tells nobody anything.
//!
//! Several nodes sharing one store each run this checker. Each re-reads a
//! domain's row before checking it, and the store records a change only
//! while the stored status is still the one it started from: a change is
//! recorded (and `domain.updated` sent) once, by the first node to store
//! it; the others only refresh the row (last check wins). Each node keeps
//! its own tracking-host choice in memory, from the store at start and
//! after each of its checks, so a node may use the previous host until its
//! own next check (at most `[domain_checks] interval`).
//!
//! Tests fake the passage of days with `TRACKRELAY_TEST_CLOCK_SKEW`:
//! seconds added to the clock the status rules see (the 72-hour windows),
//! and to nothing else; recorded times (checks, history, events, webhooks)
//! stay real.

use super::rules::{self, DomainState, DomainStatus};
use super::{tracking, TrackingHosts};
use crate::config::{Config, DomainConfig};
use crate::dnscheck::{self, RecordCheck, RecordKind, Status};
use crate::store::domains::{Change, DomainRow};
use crate::store::{self, Store};
use mail_auth::MessageAuthenticator;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Seconds added to the checker's clock (tests of the 72-hour window).
pub const CLOCK_SKEW_ENV: &str = "TRACKRELAY_TEST_CLOCK_SKEW";

pub struct Monitor {
    config: Config,
    store: Store,
    resolver: Arc<MessageAuthenticator>,
    hosts: TrackingHosts,
    skew_ms: i64,
}

/// The stored state the rules start from.
pub fn state_of(row: Option<&DomainRow>) -> DomainState {
    match row {
        Some(r) => DomainState {
            status: DomainStatus::parse(&r.status),
            since: r.since,
            lost_since: r.lost_since,
        },
        None => DomainState::default(),
    }
}

/// The configured tracking host of `d`, lowercased.
pub fn configured_host(d: &DomainConfig) -> Option<String> {
    d.tracking_host().map(|h| h.to_ascii_lowercase())
}

/// Its previous tracking hosts, lowercased, most recent first.
pub fn previous_hosts(d: &DomainConfig) -> Vec<String> {
    d.previous_tracking_hosts()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect()
}

/// How often to check, and the status rules' clock.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub interval: Duration,
    pub verified_interval: Duration,
    /// Added to `now` for the status rules only (tests).
    pub skew_ms: i64,
}

/// What a check at `now` means for a domain: its new row, and the change
/// to record when its status moved.
pub fn evaluate(
    d: &DomainConfig,
    prev: Option<&DomainRow>,
    checks: &[RecordCheck],
    now: i64,
    schedule: Schedule,
) -> (DomainRow, Option<Change>) {
    let before = state_of(prev);
    let (state, reason) = rules::next(&before, checks, now.saturating_add(schedule.skew_ms));
    let configured = configured_host(d);
    let verified = checks
        .iter()
        .find(|c| c.record == RecordKind::Tracking)
        .map(|c| c.status == Status::Verified && Some(&c.name) == configured.as_ref());
    let choice = tracking::choose(
        configured.as_deref(),
        &previous_hosts(d),
        prev.and_then(|r| r.tracking_host.as_deref()),
        verified,
    );
    let wait = if state.status == DomainStatus::Verified {
        schedule.verified_interval
    } else {
        schedule.interval
    };
    let records = serde_json::to_value(checks).unwrap_or_else(|_| json!([]));
    let changed = state.status != before.status || prev.is_none();
    let row = DomainRow {
        domain: d.name.to_ascii_lowercase(),
        status: state.status.as_str().to_string(),
        status_at: match prev {
            Some(p) if !changed => p.status_at,
            _ => now,
        },
        since: state.since,
        lost_since: state.lost_since,
        checked_at: Some(now),
        next_check_at: Some(now.saturating_add(wait.as_millis() as i64)),
        records: records.clone(),
        reason: Some(reason.clone()),
        tracking_host: choice.host.clone(),
        tracking_reason: Some(choice.reason),
    };
    if state.status == before.status {
        return (row, None);
    }
    let quiet = before.status == DomainStatus::NotStarted && state.status == DomainStatus::Pending;
    let event = (!quiet).then(|| {
        json!({
            "name": row.domain,
            "status": state.status.as_str(),
            "previous_status": before.status.as_str(),
            "reason": reason,
            "records": records,
            "tracking_host": choice.host,
        })
    });
    let change = Change {
        from: before.status.as_str().to_string(),
        to: state.status.as_str().to_string(),
        at: now,
        reason,
        event,
    };
    (row, Some(change))
}

impl Monitor {
    pub fn new(config: &Config, store: Store, resolver: Arc<MessageAuthenticator>) -> Monitor {
        let skew_ms = std::env::var(CLOCK_SKEW_ENV)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map_or(0, |s| s.saturating_mul(1000));
        if skew_ms != 0 {
            tracing::warn!(
                "{CLOCK_SKEW_ENV}: the domain checker's clock is {}s off (tests only)",
                skew_ms / 1000
            );
        }
        Monitor {
            config: config.clone(),
            store,
            resolver,
            hosts: TrackingHosts::default(),
            skew_ms,
        }
    }

    /// The tracking hosts in use, as the checker keeps them up to date.
    pub fn hosts(&self) -> TrackingHosts {
        self.hosts.clone()
    }

    fn now(&self) -> i64 {
        store::now_ms()
    }

    async fn load(&self) -> Result<HashMap<String, DomainRow>, String> {
        let rows = self
            .store
            .domain_statuses()
            .await
            .map_err(|e| format!("reading the domain statuses: {e}"))?;
        Ok(rows.into_iter().map(|r| (r.domain.clone(), r)).collect())
    }

    /// Sets the tracking hosts in use from the store, before anything is
    /// delivered: a restart keeps using what was chosen before.
    pub async fn start(&self) -> Result<(), String> {
        let rows = self.load().await?;
        for d in &self.config.domains {
            let name = d.name.to_ascii_lowercase();
            let choice = tracking::choose(
                configured_host(d).as_deref(),
                &previous_hosts(d),
                rows.get(&name).and_then(|r| r.tracking_host.as_deref()),
                None,
            );
            self.hosts.set(&name, choice.host);
        }
        Ok(())
    }

    /// Checks every domain now, then each when it is due, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let dc = &self.config.domain_checks;
        let schedule = Schedule {
            interval: dc.interval,
            verified_interval: dc.verified_interval,
            skew_ms: self.skew_ms,
        };
        let mut rows = match self.load().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("domain checks: {e}; statuses are not updated until a restart");
                return;
            }
        };
        // Everything at start: the config (and DNS) may have changed while
        // serve was down.
        let mut due: HashMap<String, i64> = HashMap::new();
        loop {
            for d in &self.config.domains {
                if *shutdown.borrow() {
                    return;
                }
                let name = d.name.to_ascii_lowercase();
                if due.get(&name).is_some_and(|t| *t > self.now()) {
                    continue;
                }
                let checks = tokio::select! {
                    c = dnscheck::check(&self.config, &self.resolver, d) => c,
                    _ = shutdown.changed() => return,
                };
                // Another node checking the same domain may have stored a
                // newer row since: start from the store's.
                match self.store.domain_status(&name).await {
                    Ok(Some(stored)) => {
                        rows.insert(name.clone(), stored);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("domain checks: reading the status of {name}: {e}"),
                }
                let now = self.now();
                let (row, change) = evaluate(d, rows.get(&name), &checks, now, schedule);
                due.insert(name.clone(), row.next_check_at.unwrap_or(now));
                if let Err(e) = self.save(&row, change.clone()).await {
                    // Tried again at the next check; the old row stays.
                    tracing::warn!("domain checks: storing the status of {name}: {e}");
                    continue;
                }
                if let Some(c) = &change {
                    tracing::info!("domain {name}: {} -> {} ({})", c.from, c.to, c.reason);
                }
                let old_host = self.hosts.get(&name);
                if old_host != row.tracking_host {
                    tracing::info!(
                        "domain {name}: new links use {} ({})",
                        row.tracking_host.as_deref().unwrap_or("no tracking host"),
                        row.tracking_reason.as_deref().unwrap_or("")
                    );
                }
                self.hosts.set(&name, row.tracking_host.clone());
                rows.insert(name, row);
            }
            let next = due.values().min().copied().unwrap_or_else(|| self.now());
            let wait = Duration::from_millis(next.saturating_sub(self.now()).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn save(&self, row: &DomainRow, change: Option<Change>) -> Result<(), String> {
        self.store
            .save_domain_status(row.clone(), change)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> DomainConfig {
        let text = "[server]\nhostname = \"relay.test\"\n[[domains]]\nname = \"Example.com\"\n\
                    tracking_subdomain = \"t2\"\nprevious_tracking_subdomains = [\"links\"]\n";
        Config::parse(text, std::path::Path::new("/tmp/c.toml"))
            .unwrap()
            .domains
            .remove(0)
    }

    fn check(record: RecordKind, name: &str, status: Status) -> RecordCheck {
        RecordCheck {
            domain: "example.com".into(),
            record,
            name: name.into(),
            record_type: "TXT",
            expected: String::new(),
            found: Vec::new(),
            status,
            required: true,
            note: None,
        }
    }

    const EVERY: Schedule = Schedule {
        interval: Duration::from_secs(300),
        verified_interval: Duration::from_secs(86400),
        skew_ms: 0,
    };

    #[test]
    fn a_sequence_of_checks() {
        let d = domain();
        let dkim = |s| check(RecordKind::Dkim, "s1._domainkey.example.com", s);
        let track = |s| check(RecordKind::Tracking, "t2.example.com", s);

        // First check, nothing published: pending, history only.
        let checks = [dkim(Status::Pending), track(Status::Pending)];
        let (r1, c) = evaluate(&d, None, &checks, 1000, EVERY);
        let c = c.expect("a change");
        assert_eq!(
            (c.from.as_str(), c.to.as_str(), c.event.is_none()),
            ("not_started", "pending", true)
        );
        assert_eq!(
            (r1.domain.as_str(), r1.status.as_str()),
            ("example.com", "pending")
        );
        assert_eq!(r1.next_check_at, Some(1000 + 300_000));
        assert_eq!(r1.tracking_host.as_deref(), Some("links.example.com"));

        // Same again: no change, the status keeps its start.
        let (r2, c) = evaluate(&d, Some(&r1), &checks, 2000, EVERY);
        assert!(c.is_none());
        assert_eq!((r2.status_at, r2.checked_at), (1000, Some(2000)));

        // Everything verified: an event with the domain's data, the new
        // tracking host, the daily schedule.
        let checks = [dkim(Status::Verified), track(Status::Verified)];
        let (r3, c) = evaluate(&d, Some(&r2), &checks, 3000, EVERY);
        let event = c.expect("a change").event.expect("an event");
        assert_eq!(event["name"], "example.com");
        assert_eq!(event["status"], "verified");
        assert_eq!(event["previous_status"], "pending");
        assert_eq!(event["tracking_host"], "t2.example.com");
        assert_eq!(event["records"][1]["record"], "tracking");
        assert_eq!(r3.status_at, 3000);
        assert_eq!(r3.next_check_at, Some(3000 + 86_400_000));

        // The tracking record goes: partially verified, the host stays.
        let checks = [dkim(Status::Verified), track(Status::Pending)];
        let (r4, c) = evaluate(&d, Some(&r3), &checks, 4000, EVERY);
        assert_eq!(c.unwrap().to, "partially_verified");
        assert_eq!(r4.tracking_host.as_deref(), Some("t2.example.com"));

        // The rules' clock may be moved (tests), recorded times are not.
        let skewed = Schedule {
            skew_ms: 80 * 3600 * 1000,
            ..EVERY
        };
        let (r5, c) = evaluate(&d, Some(&r4), &checks, 5000, skewed);
        let c = c.unwrap();
        assert_eq!((c.to.as_str(), c.at), ("partially_failed", 5000));
        assert_eq!(r5.checked_at, Some(5000));
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::Config;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn domain_checks_keys_and_defaults() {
        let base = "[server]\nhostname = \"relay.test\"\n";
        let c = Config::parse(base, Path::new("/tmp/c.toml")).unwrap();
        assert!(c.domain_checks.enabled);
        assert_eq!(c.domain_checks.interval, Duration::from_secs(300));
        assert_eq!(
            c.domain_checks.verified_interval,
            Duration::from_secs(86400)
        );
        let text =
            format!("{base}[domain_checks]\ninterval = \"1m\"\nverified_interval = \"12h\"\n");
        let c = Config::parse(&text, Path::new("/tmp/c.toml")).unwrap();
        assert_eq!(c.domain_checks.interval, Duration::from_secs(60));
        assert_eq!(
            c.domain_checks.verified_interval,
            Duration::from_secs(43200)
        );
        let text = format!("{base}[domain_checks]\ninterval = \"0s\"\n");
        let e = Config::parse(&text, Path::new("/tmp/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("domain_checks.interval: must be greater than 0"),
            "{e}"
        );
        let text = format!("{base}[[webhooks]]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nevents = [\"domain.updated\"]\n");
        assert!(
            Config::parse(&text, Path::new("/tmp/c.toml")).is_ok(),
            "domain.updated is subscribable"
        );
    }
}
