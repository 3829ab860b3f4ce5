//! What the store does for the feedback loop: the reports the return-path
//! MX receives, what applying one does to the recipient it names, and the
//! suppression list.
//!
//! The types here are what callers (the inbound listener and processor,
//! the API, the dashboard, the CLI, the submission listener at RCPT) see;
//! the backends turn them into rows.

use super::Result;
use crate::events::EventType;
use async_trait::async_trait;
use serde_json::{json, Value};

#[async_trait]
pub trait FeedbackStore: Send + Sync {
    /// Stores a received report unprocessed and returns its id, durably
    /// (`Durability::Full`): the sender hears 250 only after this returns.
    async fn insert_report(&self, r: NewReport) -> Result<i64>;

    /// Up to `limit` unprocessed reports with an id above `after`, oldest
    /// first (ids grow with arrival).
    async fn pending_reports(&self, after: i64, limit: usize) -> Result<Vec<Pending>>;

    /// Applies `batch` in order in one transaction, each report on its own:
    /// it is claimed (a report no longer pending changes nothing and comes
    /// back as `Ok(None)`), its plan carried out, and its outcome kept (or
    /// the report deleted, for a `Drop`). A report whose effects fail is
    /// rolled back alone and kept, processed, with the error (`Err`), so
    /// it never blocks the queue. An `Err` of the whole call means nothing
    /// was applied.
    async fn apply_reports(&self, batch: Vec<ReportWork>, now: i64) -> Result<Vec<Applied>>;

    /// A stored report, for the operator.
    async fn report(&self, id: i64) -> Result<Option<ReportInfo>>;

    /// The reason and the time `address` was suppressed for mail from
    /// `sending_domain` (an every-domain entry, or one for that domain), if
    /// an entry applies that has not expired at `now`.
    async fn suppression_lookup(
        &self,
        address: &str,
        sending_domain: &str,
        now: i64,
    ) -> Result<Option<(String, i64)>>;

    /// Adds `s` unless the address is already suppressed in that scope
    /// (the first reason, and its event, are kept). Returns whether a row
    /// was added. Durable before it returns.
    async fn add_suppression(&self, s: Suppression) -> Result<bool>;

    /// Adds every entry in one transaction (all or none), each like
    /// `add_suppression`; returns how many were added.
    async fn import_suppressions(&self, rows: Vec<Suppression>) -> Result<usize>;

    /// Removes the address from one scope (None: the every-domain entry).
    /// Returns whether there was one.
    async fn remove_suppression(&self, address: &str, domain: Option<&str>) -> Result<bool>;

    /// One page of the list in (address, scope) order: entries after the
    /// cursor `after` (see `Suppression::cursor`), only those scoped to
    /// `domain` and the every-domain ones when given. `limit` 0: no limit
    /// (callers that print the whole list page instead, to stay in
    /// constant memory).
    async fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<Suppression>>;
}

// ---------------------------------------------------------------------
// Received reports

/// A message as the inbound listener received it.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub received_at: i64,
    pub peer_ip: String,
    pub helo: String,
    /// Empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub raw: Vec<u8>,
}

/// A report waiting for the feedback processor.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub received_at: i64,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub raw: Vec<u8>,
}

/// A stored report with its metadata, for the operator.
#[derive(Debug, Clone)]
pub struct ReportInfo {
    pub id: i64,
    pub received_at: i64,
    pub peer_ip: String,
    pub helo: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub size: i64,
    pub processed_at: Option<i64>,
    pub kind: Option<String>,
    pub outcome: Option<serde_json::Value>,
    pub raw: Vec<u8>,
}

impl ReportInfo {
    /// Everything but the raw bytes: `id, received_at, peer_ip, helo,
    /// mail_from, rcpt_to, size, processed_at, kind, outcome`.
    pub fn metadata_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "received_at": super::rfc3339(self.received_at),
            "peer_ip": self.peer_ip,
            "helo": self.helo,
            "mail_from": self.mail_from,
            "rcpt_to": self.rcpt_to,
            "size": self.size,
            "processed_at": self.processed_at.map(super::rfc3339),
            "kind": self.kind,
            "outcome": self.outcome,
        })
    }
}

/// What happened to a report, as the metric's `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Bounced,
    Delayed,
    Complained,
    Unsubscribe,
    AutoReply,
    /// No verified token, or one naming a recipient the store does not have.
    Unlinked,
    /// A token-shaped envelope recipient that does not verify.
    Forged,
    /// Linked but nothing to do (delivered/relayed DSN, duplicate, not a report).
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Bounced => "bounced",
            Outcome::Delayed => "delayed",
            Outcome::Complained => "complained",
            Outcome::Unsubscribe => "unsubscribe",
            Outcome::AutoReply => "auto_reply",
            Outcome::Unlinked => "unlinked",
            Outcome::Forged => "forged",
            Outcome::Ignored => "ignored",
        }
    }
}

/// What one report of a batch came to: its id, and its outcome (`None`:
/// no longer pending, nothing done) or why it could not be applied.
pub type Applied = (i64, std::result::Result<Option<Outcome>, String>);

/// The recipient a verified return-path token names, as the store has it
/// when the report is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedRecipient {
    pub address: String,
    pub status: String,
    /// Whether it has had an `email.complained` (even one retention has
    /// pruned since).
    pub complained: bool,
    /// The email's sending domain, lowercased: the scope of suppressions.
    pub domain: String,
}

/// Decides what a linked report does once its recipient's state is read,
/// in the transaction that applies it. Pure: no I/O.
pub type Decide = Box<dyn Fn(&LinkedRecipient) -> Action + Send + Sync>;

/// One report for `apply_reports`.
pub struct ReportWork {
    pub id: i64,
    /// The `kind` column: `dsn`, `arf`, `plain_bounce`, ...
    pub kind: &'static str,
    /// When it arrived: the time of its events and suppressions.
    pub received_at: i64,
    pub plan: Plan,
}

pub enum Plan {
    /// The parser failed (a bug): kept, processed, with the error.
    Error(String),
    /// About no recipient: deleted, only counted.
    Drop(Outcome),
    /// Linked to a recipient by a verified token; `linked_by` says where
    /// the token was found.
    Linked {
        email_id: String,
        idx: u32,
        linked_by: &'static str,
        decide: Decide,
    },
}

/// What a linked report does to its recipient.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// An event (and maybe more): see `Change`.
    Change(Outcome, Change),
    /// Mail to the unsubscribe mailbox: `email.unsubscribed` once per
    /// recipient (via `mailto`), and a suppression when `suppress`.
    Unsubscribe { suppress: bool },
    /// Kept and recorded, nothing changed; says why.
    Nothing(Outcome, String),
    /// Not about a recipient at all: deleted, only counted.
    Drop(Outcome),
}

/// The changes of one report, in this order: the recipient bounced, the
/// event stored, the address suppressed (linked to the event).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The recipient becomes `bounced` with this last response, whatever
    /// it was (`delivered_at` kept), and leaves the queue; nothing changes
    /// for one already bounced or never sent (suppressed).
    pub bounce: Option<String>,
    pub event: EventType,
    pub detail: Value,
    /// Put the address on the sending domain's list for this reason.
    pub suppress: Option<Reason>,
    /// The report's outcome as kept; the store adds `event_id`, and
    /// `suppressed` when `suppress` is set.
    pub outcome: Value,
}

/// The outcome kept for a linked report: `outcome` with what the store
/// knows added (the same on every backend).
pub fn linked_outcome(
    mut detail: Value,
    outcome: Outcome,
    email_id: &str,
    idx: u32,
    recipient: &str,
    linked_by: &str,
) -> Value {
    if let Value::Object(m) = &mut detail {
        m.insert("outcome".into(), outcome.as_str().into());
        m.insert("email_id".into(), email_id.into());
        m.insert("rcpt_idx".into(), idx.into());
        m.insert("recipient".into(), recipient.into());
        m.insert("linked_by".into(), linked_by.into());
    }
    detail
}

/// The outcome of an unsubscribe by mail: `first` is the event of the
/// first request of this recipient (`None`: no such recipient), `new`
/// whether it is this one.
pub fn unsubscribe_outcome(first: Option<i64>, new: bool, suppressed: bool) -> Value {
    match first {
        None => json!({ "changed": false, "why": "no such recipient" }),
        Some(event_id) if new => {
            json!({ "changed": true, "event_id": event_id, "suppressed": suppressed })
        }
        Some(event_id) => json!({
            "changed": suppressed,
            "why": "unsubscribed before",
            "event_id": event_id,
            "suppressed": suppressed,
        }),
    }
}

/// The detail of the `email.unsubscribed` an unsubscribe by mail records.
pub fn unsubscribe_detail(domain: &str, suppress: bool) -> Value {
    json!({ "via": "mailto", "domain": domain, "suppressed": suppress })
}

// ---------------------------------------------------------------------
// Suppressions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    HardBounce,
    Complaint,
    Unsubscribe,
    Manual,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::HardBounce,
        Reason::Complaint,
        Reason::Unsubscribe,
        Reason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HardBounce => "hard_bounce",
            Reason::Complaint => "complaint",
            Reason::Unsubscribe => "unsubscribe",
            Reason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One row of the list, as the CLI and the API show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub address: String,
    /// None: every sending domain.
    pub domain: Option<String>,
    pub reason: String,
    pub event_id: Option<i64>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl Suppression {
    /// The contract's fields: `address, domain, reason, event_id,
    /// created_at, expires_at`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "address": self.address,
            "domain": self.domain,
            "reason": self.reason,
            "event_id": self.event_id,
            "created_at": super::rfc3339(self.created_at),
            "expires_at": self.expires_at.map(super::rfc3339),
        })
    }

    /// Its key in list order, for `FeedbackStore::suppressions`' `after`.
    pub fn cursor(&self) -> (String, String) {
        (self.address.clone(), scope(self.domain.as_deref()))
    }
}

/// The stored scope of an entry: the lowercased domain, or '' for every
/// domain (not NULL, so that the primary key keeps one row per scope).
pub fn scope(domain: Option<&str>) -> String {
    domain.map(str::to_lowercase).unwrap_or_default()
}

/// An address as the list keeps it, or why it cannot be one. Loose on
/// purpose (the list must take whatever address mail was sent to), but
/// never empty, never without a domain, never with spaces or controls
/// (the message quotes it with `{:?}`, so controls show escaped).
pub fn check_address(a: &str) -> std::result::Result<String, String> {
    let a = a.trim();
    let ok = a.len() <= 320
        && a.rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !a.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(a.to_lowercase())
    } else {
        Err(format!("{a:?} is not an email address"))
    }
}

pub fn check_domain(d: &str) -> std::result::Result<String, String> {
    let d = d.trim().trim_end_matches('.');
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(d.to_ascii_lowercase())
    } else {
        Err(format!("{d:?} is not a domain name"))
    }
}

pub fn check_reason(r: &str) -> std::result::Result<Reason, String> {
    Reason::parse(r).ok_or_else(|| {
        format!("{r:?} is not a reason (hard_bounce, complaint, unsubscribe, manual)")
    })
}

/// Whether a remote reply (as recorded: `RCPT TO: 550 5.1.1 text`) says
/// the address itself is bad: a 5xx whose enhanced status is 5.1.x. Policy
/// and reputation refusals (5.7.x), other 5.x.x and every 4xx are not, so
/// a receiver's bad day never suppresses anyone. Only the first reply code
/// in the text counts: the remote's own text may quote anything.
pub fn is_bad_address(response: &str) -> bool {
    let mut words = response.split_whitespace();
    while let Some(w) = words.next() {
        let b = w.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&b[0]) {
            let Some(esc) = words.next() else {
                return false;
            };
            return b[0] == b'5'
                && esc.strip_prefix("5.1.").is_some_and(|d| {
                    !d.is_empty() && d.len() <= 3 && d.bytes().all(|c| c.is_ascii_digit())
                });
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_5_1_x_refusal_is_a_bad_address() {
        assert!(is_bad_address("RCPT TO: 550 5.1.1 no such user"));
        assert!(is_bad_address("550 5.1.10 recipient address rejected"));
        assert!(!is_bad_address("RCPT TO: 550 5.7.1 blocked by policy"));
        assert!(!is_bad_address("RCPT TO: 450 4.1.1 try later"));
        assert!(!is_bad_address("RCPT TO: 451 4.3.0 said 550 5.1.1 earlier"));
        assert!(!is_bad_address("RCPT TO: 550 no enhanced code"));
        assert!(!is_bad_address("no MX: the domain accepts no mail"));
        assert!(!is_bad_address(
            "gave up after 3 attempt(s) over 1h: 450 4.1.1"
        ));
    }
}
