//! What the store keeps about the sending domains and their mail
//! servers' TLS: DNS status and its history, MTA-STS policies and TLS
//! report counts.
//!
//! Several relay nodes may share one store; what each method guarantees
//! then is said on the method:
//! - a domain status change is recorded once however many nodes see it
//!   ([`DomainStore::save_domain_status`]);
//! - MTA-STS writes are idempotent (the later use wins), so every node may
//!   run the background refresh;
//! - TLS report counts are added, never overwritten; a (policy domain, day)
//!   gets one report row, and a pending report is sent by the one node that
//!   claimed it ([`DomainStore::claim_tls_reports`]).

use super::Result;
use async_trait::async_trait;
use serde_json::{json, Value};

/// A domain's stored state.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainRow {
    /// Lowercased.
    pub domain: String,
    pub status: String,
    /// When this status began (unix ms).
    pub status_at: i64,
    pub since: Option<i64>,
    pub lost_since: Option<i64>,
    pub checked_at: Option<i64>,
    pub next_check_at: Option<i64>,
    /// The last check: an array of dns-check record objects.
    pub records: Value,
    /// Why the domain has this status.
    pub reason: Option<String>,
    /// The tracking host new links use, and why.
    pub tracking_host: Option<String>,
    pub tracking_reason: Option<String>,
}

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub id: i64,
    pub domain: String,
    pub from: String,
    pub to: String,
    pub at: i64,
    pub reason: String,
}

/// A status change to record with a row.
#[derive(Debug, Clone)]
pub struct Change {
    pub from: String,
    pub to: String,
    pub at: i64,
    pub reason: String,
    /// The `domain.updated` webhook data; None: history only, no event.
    pub event: Option<Value>,
}

/// An MTA-STS policy as cached (RFC 8461 section 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicy {
    pub domain: String,
    pub policy_id: String,
    /// The policy text as fetched; parsed again when read.
    pub policy: String,
    pub fetched_at: i64,
    pub expires_at: i64,
    /// When a delivery last asked for it (unix ms, coarse: deliveries
    /// mark it at most every few minutes).
    pub used_at: i64,
}

/// What one TLS report count is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub day: String,
    pub policy_domain: String,
    pub policy_type: String,
    /// JSON array of strings.
    pub policy_strings: String,
    /// JSON array of strings.
    pub mx_host: String,
    /// '' for a success.
    pub result_type: String,
    pub sending_ip: String,
    pub receiving_mx: String,
    pub receiving_ip: String,
}

/// A TLS report row: one per (policy domain, day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub policy_domain: String,
    pub day: String,
    /// pending, sent, failed, no_policy
    pub status: String,
    pub report_id: String,
    pub report: Option<String>,
    pub rua: Vec<String>,
    pub done: Vec<String>,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

/// Which pending reports a sending round takes.
#[derive(Debug, Clone)]
pub struct ReportClaim {
    /// Reports whose next attempt is at or before this (unix ms).
    pub due_by: i64,
    /// The claimed reports' next attempt moves here: no other node (or
    /// `tls-reports send`) takes them before, and if this one dies they
    /// are due again then.
    pub lease_until: i64,
    /// Only this day / this policy domain.
    pub day: Option<String>,
    pub domain: Option<String>,
    pub limit: usize,
}

/// One (policy domain, day) as `tls-reports list` and `GET /v1/tls-reports`
/// show it: its session totals, and its report's state when it has one
/// (`counting` while the day is not over or not yet looked at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub policy_domain: String,
    pub day: String,
    pub successful: i64,
    pub failed: i64,
    pub report: Option<ReportRow>,
}

impl Summary {
    /// Fields: `policy_domain, day, status, successful_sessions,
    /// failed_sessions, report_id, rua, delivered_to, attempts,
    /// next_attempt_at, last_error, sent_at` (times RFC 3339 UTC).
    pub fn to_json(&self) -> Value {
        let r = self.report.as_ref();
        json!({
            "policy_domain": self.policy_domain,
            "day": self.day,
            "status": r.map_or("counting", |r| r.status.as_str()),
            "successful_sessions": self.successful,
            "failed_sessions": self.failed,
            "report_id": r.map(|r| r.report_id.as_str()).filter(|s| !s.is_empty()),
            "rua": r.map_or_else(Vec::new, |r| r.rua.clone()),
            "delivered_to": r.map_or_else(Vec::new, |r| r.done.clone()),
            "attempts": r.map_or(0, |r| r.attempts),
            "next_attempt_at": r.and_then(|r| r.next_attempt_at).filter(|_| r.is_some_and(|r| r.status == "pending")).map(super::rfc3339),
            "last_error": r.and_then(|r| r.last_error.clone()),
            "sent_at": r.and_then(|r| r.sent_at).map(super::rfc3339),
        })
    }
}

#[async_trait]
pub trait DomainStore: Send + Sync {
    // Domain statuses (`crate::domains`).

    /// Every stored domain, by name. Domains removed from the config keep
    /// their rows; callers show the configured ones.
    async fn domain_statuses(&self) -> Result<Vec<DomainRow>>;

    /// One domain's row (any case).
    async fn domain_status(&self, domain: &str) -> Result<Option<DomainRow>>;

    /// A domain's status changes, newest first, at most `limit`.
    async fn domain_history(&self, domain: &str, limit: usize) -> Result<Vec<HistoryRow>>;

    /// Writes a domain's row and, with a change, its history entry and its
    /// `domain.updated` event (when the change has one) with the event's
    /// webhook outbox rows, in one transaction. Returns the event id.
    ///
    /// The change is recorded only if the stored status is still
    /// `change.from` (or the domain has no row yet): when several nodes
    /// check the same domain, the first to store a change records it and
    /// the others, arriving with the same change, only refresh the row.
    async fn save_domain_status(
        &self,
        row: DomainRow,
        change: Option<Change>,
    ) -> Result<Option<i64>>;

    // The MTA-STS policy cache (`crate::outbound::mta_sts`).

    async fn sts_policy(&self, domain: &str) -> Result<Option<CachedPolicy>>;

    /// Stores a freshly fetched policy, replacing the domain's previous one
    /// but keeping the later `used_at` of the two.
    async fn put_sts_policy(&self, policy: CachedPolicy) -> Result<()>;

    /// Records that a delivery used the domain's policy at `now` (never
    /// moves `used_at` back).
    async fn mark_sts_used(&self, domain: &str, now: i64) -> Result<()>;

    /// Policies to fetch again ahead of expiry, soonest to expire first, at
    /// most `limit`: three quarters of their max_age have passed, and a
    /// delivery used them within their max_age (the others are left to
    /// expire).
    async fn sts_refresh_due(&self, now: i64, limit: usize) -> Result<Vec<CachedPolicy>>;

    /// Drops the policies expired for longer than their max_age. Returns
    /// how many went.
    async fn drop_stale_sts(&self, now: i64) -> Result<usize>;

    // TLS reporting, RFC 8460 (`crate::outbound::tls_report`).

    /// Adds a batch of counts to the stored ones (one transaction).
    async fn add_tls_counts(&self, counts: Vec<(CountKey, i64)>) -> Result<()>;

    /// Every count of one policy domain's day.
    async fn tls_counts(&self, policy_domain: &str, day: &str) -> Result<Vec<(CountKey, i64)>>;

    /// (policy domain, day) pairs with counts from before `today` and no
    /// report row yet.
    async fn tls_unreported_days(&self, today: &str) -> Result<Vec<(String, String)>>;

    /// Forgets counts and reports of days before `before_day`. Returns the
    /// rows deleted.
    async fn prune_tls_reports(&self, before_day: &str) -> Result<usize>;

    /// Creates the day's report row unless one exists (then nothing
    /// changes: a day is decided once, by whichever node comes first).
    /// Returns whether it was created.
    async fn insert_tls_report(&self, report: ReportRow) -> Result<bool>;

    /// Takes the pending reports due by `claim.due_by` for one sending
    /// round, moving their next attempt to `claim.lease_until`. A report is
    /// claimed by one caller only, whatever the number of nodes.
    async fn claim_tls_reports(&self, claim: ReportClaim) -> Result<Vec<ReportRow>>;

    /// Records the result of a sending round. Only a pending row changes,
    /// so a report already settled stays as it was.
    async fn record_tls_attempt(&self, report: ReportRow) -> Result<()>;

    async fn tls_report(&self, policy_domain: &str, day: &str) -> Result<Option<ReportRow>>;

    /// Every (policy domain, day) with counts, newest day first, optionally
    /// only one day and/or one domain; at most `limit`.
    async fn tls_report_list(
        &self,
        day: Option<&str>,
        domain: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Summary>>;
}
