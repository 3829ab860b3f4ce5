//! What the store answers: emails, events, statistics and the dashboard's
//! views; and retention, which prunes what those read.
//!
//! Everything here is read-only except `retry_group` (an operator's
//! "retry these now" on the dashboard's grouped queue view, kept beside the
//! view it acts on) and `prune` (retention).

use super::Result;
use crate::events::StoredEvent;
use async_trait::async_trait;
use serde_json::json;
use std::ops::ControlFlow;

pub use super::sqlite::suppressions::Suppression;

/// The length of a rollup bucket: statistics are kept per hour of
/// acceptance.
pub const HOUR_MS: i64 = 3_600_000;

/// The start of the hour `at` falls in.
pub fn hour_of(at: i64) -> i64 {
    at.div_euclid(HOUR_MS) * HOUR_MS
}

/// The event fields as the contract names and orders them (DESIGN.md: CLI
/// `--json`, the API, the CSV export's header). Each is also the column's
/// name in both backends.
pub const EVENT_FIELDS: [&str; 11] = [
    "id",
    "email_id",
    "type",
    "recipient",
    "at",
    "ip",
    "user_agent",
    "referer",
    "link",
    "machine",
    "machine_reason",
];

/// Emails a search by subject, tag or status looks at, newest first, at
/// most: those filters have no index, so a search that finds little would
/// otherwise read every email. The page says when it stopped, and where
/// to continue (an earlier `until`).
pub const SCAN_BUDGET: i64 = 10_000;

/// Filters for `trackrelay events` and `GET /v1/events`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub email_id: Option<String>,
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only events with an id above this (paging).
    pub after_id: Option<i64>,
    /// 0: no limit.
    pub limit: usize,
}

/// An email as the API and CLI show it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailInfo {
    pub id: String,
    pub created_at: i64,
    pub domain: String,
    pub mail_from: String,
    pub header_from: Option<String>,
    pub to_header: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub tags: Vec<String>,
    pub size: i64,
    pub pruned: bool,
    pub recipients: Vec<RecipientInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecipientInfo {
    pub idx: u32,
    pub address: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_response: Option<String>,
    pub tls: Option<String>,
    /// The TLS policy of the last attempt (dane, mta-sts, enforced, opportunistic).
    pub tls_policy: Option<String>,
    pub delivered_at: Option<i64>,
    pub bounced_at: Option<i64>,
    pub opened_at: Option<i64>,
    pub clicked_at: Option<i64>,
}

/// Sending statistics, unique per recipient: a recipient who opened five
/// times counts once. Machine activity (image proxies that prefetch,
/// scanners) is counted apart from human activity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub sent: i64,
    pub delivered: i64,
    pub delayed: i64,
    pub bounced: i64,
    pub failed: i64,
    pub opened: i64,
    pub opened_human: i64,
    pub clicked: i64,
    pub clicked_human: i64,
    pub complained: i64,
    /// Skipped because of the suppression list.
    pub suppressed: i64,
    pub unsubscribed: i64,
    pub opened_machine: i64,
    pub clicked_machine: i64,
}

impl Stats {
    fn rate(n: i64, d: i64) -> f64 {
        if d == 0 {
            0.0
        } else {
            // Four decimals: enough for a percentage with two.
            ((n as f64 / d as f64) * 10_000.0).round() / 10_000.0
        }
    }

    /// Opens (any) per delivered recipient.
    pub fn open_rate(&self) -> f64 {
        Self::rate(self.opened, self.delivered)
    }

    pub fn click_rate(&self) -> f64 {
        Self::rate(self.clicked, self.delivered)
    }

    /// Complaints per delivered recipient, what the mailbox providers'
    /// bulk-sender rules measure.
    pub fn complaint_rate(&self) -> f64 {
        Self::rate(self.complained, self.delivered)
    }

    /// The contract's fields, plus the human-only rates and `failed`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "sent": self.sent,
            "delivered": self.delivered,
            "delayed": self.delayed,
            "bounced": self.bounced,
            "failed": self.failed,
            "opened": self.opened,
            "opened_human": self.opened_human,
            "clicked": self.clicked,
            "clicked_human": self.clicked_human,
            "open_rate": self.open_rate(),
            "click_rate": self.click_rate(),
            "open_rate_human": Self::rate(self.opened_human, self.delivered),
            "click_rate_human": Self::rate(self.clicked_human, self.delivered),
            "complained": self.complained,
            "complaint_rate": self.complaint_rate(),
            "unsubscribed": self.unsubscribed,
            "suppressed": self.suppressed,
        })
    }
}

/// The warning `stats` prints when a domain's complaints pass the bulk
/// sender thresholds of Gmail and Yahoo: 0.1 % of delivered recipients (a
/// warning) and 0.3 % (the limit past which they throttle or reject).
/// Compared on the counts, not on the rounded rate.
pub fn complaint_warning(domain: &str, st: &Stats) -> Option<String> {
    let (c, d) = (st.complained, st.delivered);
    if c == 0 || d == 0 {
        return None;
    }
    let pct = c as f64 * 100.0 / d as f64;
    let (level, what) = if c * 1000 > 3 * d {
        (
            "limit",
            "over the 0.3 % limit of Gmail's and Yahoo's bulk-sender rules",
        )
    } else if c * 1000 > d {
        (
            "warning",
            "over the 0.1 % Gmail and Yahoo ask senders to stay under",
        )
    } else {
        return None;
    };
    Some(format!(
        "{level}: {domain}: complaint rate {pct:.2} % ({c} of {d} delivered) is {what}"
    ))
}

/// What the email search filters on; `None` or empty: not filtered.
#[derive(Debug, Clone, Default)]
pub struct EmailSearch {
    /// A recipient address, exact (case-insensitive).
    pub recipient: Option<String>,
    /// A substring of the subject (case-insensitive for ASCII).
    pub subject: Option<String>,
    pub tag: Option<String>,
    /// A recipient status (queued, deferred, delivered, bounced, ...).
    pub status: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: usize,
}

impl EmailSearch {
    /// A filter's text, when it filters.
    pub fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|r| !r.is_empty())
    }

    /// Whether the search reads emails without an index (and so within
    /// [`SCAN_BUDGET`]): a recipient is looked up by index and bounds the
    /// rest.
    pub fn is_scan(&self) -> bool {
        Self::given(&self.recipient).is_none()
            && (Self::given(&self.subject).is_some()
                || Self::given(&self.tag).is_some()
                || Self::given(&self.status).is_some())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailRow {
    pub id: String,
    pub created_at: i64,
    pub from: String,
    pub subject: Option<String>,
    pub tags: Vec<String>,
    /// `address (status)` of each recipient, in index order.
    pub recipients: Vec<(String, String)>,
}

/// What a search found, and, when a scan stopped at [`SCAN_BUDGET`]
/// emails, the acceptance time of the oldest one it read.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub rows: Vec<EmailRow>,
    pub scanned_back_to: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSent {
    pub event_id: i64,
    pub endpoint: String,
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// Waiting recipients sharing a destination domain and last reply.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueGroup {
    pub destination: String,
    /// The last reply (`None`: never tried).
    pub reason: Option<String>,
    pub recipients: i64,
    pub next_attempt_at: Option<i64>,
}

/// A suppression with what caused it: the event's type and email.
#[derive(Debug, Clone)]
pub struct SuppressionWhy {
    pub entry: Suppression,
    pub event_type: Option<String>,
    pub email_id: Option<String>,
}

/// The store's gauges for `/metrics`, read together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Recipients queued, deferred or being delivered.
    pub queue_depth: i64,
    pub webhooks_pending: i64,
    pub webhooks_failed: i64,
    /// `(domain, status)` of every domain with a stored status.
    pub domain_statuses: Vec<(String, String)>,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub bodies: usize,
    pub events: usize,
    pub webhooks: usize,
    pub reports: usize,
}

/// What retention removes in one batch: message bodies of emails accepted
/// before `bodies_before` whose recipients are all done, and events,
/// finished webhook deliveries and processed inbound reports from before
/// `events_before`; at most `batch` of each.
#[derive(Debug, Clone, Copy)]
pub struct PruneBatch {
    pub bodies_before: i64,
    pub events_before: i64,
    /// Written as `pruned_at` on the emails whose body goes.
    pub now: i64,
    pub batch: usize,
}

/// The callback of the streaming readers: `Break` stops the reading (the
/// reader returns `Ok`; the caller knows why it stopped).
pub type Each<'a, T> = &'a mut (dyn FnMut(T) -> ControlFlow<()> + Send);

#[async_trait]
pub trait QueryStore: Send + Sync {
    /// An email with its recipients' delivery state.
    async fn email(&self, id: &str) -> Result<Option<EmailInfo>>;

    /// Whether the store knows this email id: as an email, or through
    /// events that outlived it (pruned, or tokens from `preview`).
    async fn email_known(&self, id: &str) -> Result<bool>;

    /// Events in id order (oldest first); `filter.limit` bounds the Vec.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>>;

    /// Events in id order, handed to `on` one at a time as they are read,
    /// so a million events cost a bounded amount of memory.
    async fn each_event(&self, filter: &EventFilter, on: Each<'_, StoredEvent>) -> Result<()>;

    /// Emails accepted in `[since, until)`, oldest first, with their
    /// recipients, handed to `on` one at a time (for `export emails`).
    async fn each_email(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        on: Each<'_, EmailInfo>,
    ) -> Result<()>;

    /// Over the emails accepted in `[since, until)`, optionally of one
    /// sending domain (case-insensitive), from the hourly rollups: exact
    /// for any window.
    async fn stats(
        &self,
        domain: Option<&str>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Stats>;

    /// Rollup counters per bucket of `bucket` ms (at least an hour) over
    /// the whole hours `[from, to)`, oldest first, empty buckets included.
    /// Fills the counters the dashboard charts (not `failed`,
    /// `suppressed`, `unsubscribed`).
    async fn series(
        &self,
        domain: Option<&str>,
        from: i64,
        to: i64,
        bucket: i64,
    ) -> Result<Vec<(i64, Stats)>>;

    /// The dashboard's email search, newest first, with each email's first
    /// 20 recipients and their status.
    async fn search(&self, s: &EmailSearch) -> Result<Found>;

    /// The webhook deliveries of one email's events (at most 1000).
    async fn webhooks_for_email(&self, email_id: &str) -> Result<Vec<WebhookSent>>;

    /// The queue (queued and deferred recipients) grouped by destination
    /// domain and last reply, biggest first.
    async fn queue_groups(&self, limit: usize) -> Result<Vec<QueueGroup>>;

    /// Makes a group's recipients (see `queue_groups`) due at `now`;
    /// returns how many.
    async fn retry_group(&self, destination: &str, reason: Option<&str>, now: i64)
        -> Result<usize>;

    /// Suppressions whose address starts with `prefix` (case-insensitive),
    /// in address order, with the event that caused each.
    async fn suppressions_view(&self, prefix: &str, limit: usize) -> Result<Vec<SuppressionWhy>>;

    /// The gauges `/metrics` shows.
    async fn gauges(&self) -> Result<Gauges>;

    /// One retention batch, in one short write (see `PruneBatch`).
    async fn prune(&self, p: PruneBatch) -> Result<Pruned>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(complained: i64, delivered: i64) -> Stats {
        Stats {
            complained,
            delivered,
            ..Stats::default()
        }
    }

    #[test]
    fn complaint_thresholds() {
        assert_eq!(complaint_warning("d", &st(0, 0)), None);
        assert_eq!(complaint_warning("d", &st(1, 1000)), None);
        let w = complaint_warning("d", &st(2, 1000)).unwrap();
        assert!(w.starts_with("warning: d: complaint rate 0.20 %"), "{w}");
        assert!(complaint_warning("d", &st(3, 1000))
            .unwrap()
            .starts_with("warning"));
        let l = complaint_warning("d", &st(4, 1000)).unwrap();
        assert!(l.starts_with("limit: d:"), "{l}");
        assert_eq!(st(4, 1000).to_json()["complaint_rate"], 0.004);
    }

    #[test]
    fn hours_round_down_also_before_1970() {
        assert_eq!(hour_of(HOUR_MS + 5), HOUR_MS);
        assert_eq!(hour_of(-1), -HOUR_MS);
    }
}
