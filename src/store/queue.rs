//! What the store does for the queue: accepting an email with its
//! recipients, claiming due recipients under a lease, recording attempts,
//! and the operator's queue commands.
//!
//! A recipient row is `queued` (never tried), `sending` (leased by one
//! node's runner until its lease expires), `deferred` (waiting for its next
//! attempt), or done: `delivered`, `bounced`, `failed`, `suppressed`.

use super::Result;
use crate::events::{EventType, NewEvent};
use async_trait::async_trait;
use serde_json::json;
use std::collections::HashSet;

/// A message accepted at end of DATA, about to be made durable.
#[derive(Debug, Clone)]
pub struct NewEmail {
    pub id: String,
    pub created_at: i64,
    pub domain: String,
    pub mail_from: String,
    pub header_from: Option<String>,
    pub to_header: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub tags: Vec<String>,
    pub auth_user: Option<String>,
    pub client_ip: Option<String>,
    pub smtputf8: bool,
    pub received: Vec<u8>,
    /// Shared, not copied, with the runner's copy of a fresh message.
    pub body: bytes::Bytes,
    pub recipients: Vec<String>,
}

/// The stored message, as delivery sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBody {
    /// Our `Received:` trace header, prepended at delivery.
    pub received: Vec<u8>,
    /// The message exactly as submitted.
    pub body: bytes::Bytes,
}

/// One recipient as `queue list` shows it.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub email_id: String,
    pub idx: u32,
    pub recipient: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_response: Option<String>,
}

impl QueueEntry {
    /// The contract's fields: `email_id, recipient, status, attempts,
    /// next_attempt_at, last_response`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "email_id": self.email_id,
            "recipient": self.recipient,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.map(super::rfc3339),
            "last_response": self.last_response,
        })
    }

    /// Where the next page of a listing starts.
    pub fn key(&self) -> (String, u32) {
        (self.email_id.clone(), self.idx)
    }
}

/// A recipient due for delivery, or taken for it (then `lease_id` names
/// its lease).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub email_id: String,
    pub idx: u32,
    pub address: String,
    pub attempts: u32,
    pub email_created_at: i64,
    pub domain: String,
    pub mail_from: String,
    pub smtputf8: bool,
    /// Empty until claimed.
    pub lease_id: String,
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    /// Retry at the given time.
    Deferred {
        next_attempt_at: i64,
    },
    /// Permanently refused by the receiver (or expired): a bounce.
    Bounced,
    /// Could not be sent for a local reason (or removed by the operator).
    Failed,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub email_id: String,
    pub idx: u32,
    /// The lease the attempt ran under: only its owner may record it.
    pub lease_id: String,
    pub at: i64,
    pub outcome: Outcome,
    pub response: String,
    pub tls: Option<String>,
    pub mx: Option<String>,
    /// The outbound TLS policy that governed the attempt, if known.
    pub tls_policy: Option<TlsPolicyNote>,
}

/// `detail.tls_policy` of delivery events and the recipient's
/// `tls_policy` column (see `outbound::tls_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicyNote {
    /// `dane`, `mta-sts`, `enforced` or `opportunistic`.
    pub applied: String,
    /// A policy check that failed without stopping delivery (MTA-STS
    /// `testing`): RFC 8460 result type and what happened.
    pub failure: Option<(String, String)>,
}

/// One lease's recipients: its id and their keys (email id, index).
pub type LeaseKeys = (String, Vec<(String, u32)>);

#[async_trait]
pub trait QueueStore: Send + Sync {
    /// The email row, one recipient row per address due at once, and an
    /// `email.sent` event per recipient: all or nothing, on disk (SQLite
    /// `synchronous=FULL`, PostgreSQL `synchronous_commit=on`) before this
    /// returns, so a `250` is never lost. Wakes every node's runner.
    async fn accept(&self, email: NewEmail) -> Result<()>;

    /// The stored message of `email_id`; None once pruned or unknown.
    async fn body(&self, email_id: &str) -> Result<Option<StoredBody>>;

    /// Up to `limit` recipients due at `now`, oldest due first, skipping
    /// those whose recipient domain (lower case) is in `skip_domains`.
    /// Reads only: `claim` takes them.
    async fn due(&self, now: i64, limit: usize, skip_domains: &[String]) -> Result<Vec<Claimed>>;

    /// Leases those of `wanted` still due to this node under one new lease
    /// id until `now + lease_ms`, and returns them with the lease id set:
    /// a row another runner (of any node) took since it was read stays
    /// theirs. A recipient on the suppression list is settled as
    /// `suppressed` (with its `email.suppressed` event) instead.
    async fn claim(&self, wanted: Vec<Claimed>, now: i64, lease_ms: i64) -> Result<Vec<Claimed>>;

    /// `due` then `claim` for up to `limit` recipients (tools and tests;
    /// the runner claims per destination).
    async fn claim_due(&self, now: i64, lease_ms: i64, limit: usize) -> Result<Vec<Claimed>>;

    /// Extends to `until` the leases `lease_id` still holds among `keys`;
    /// returns how many.
    async fn renew(&self, lease_id: &str, keys: &[(String, u32)], until: i64) -> Result<usize>;

    /// Gives back, due at `now`, the rows each lease still holds among its
    /// keys (a runner stopping with deliveries unfinished); returns how many.
    async fn release(&self, leases: &[LeaseKeys], now: i64) -> Result<usize>;

    /// Rows whose lease expired before `now` (their runner died, on this
    /// node or another) go back to the queue, due now. A live lease is
    /// left alone, whichever node holds it.
    async fn recover_expired(&self, now: i64) -> Result<usize>;

    /// When the next recipient falls due, if any is waiting.
    async fn next_due(&self) -> Result<Option<i64>>;

    /// Recipients waiting or in flight, for metrics.
    async fn depth(&self) -> Result<i64>;

    /// Records each attempt's outcome and its event, where the attempt's
    /// lease still owns the row, in one transaction; a permanent 5.1.x
    /// refusal also puts the address on its sending domain's suppression
    /// list (linked to the bounce event) when that domain is in
    /// `suppress_hard_bounce`. Returns the attempts so suppressed (email
    /// id, index).
    async fn record(
        &self,
        attempts: Vec<Attempt>,
        suppress_hard_bounce: &HashSet<String>,
    ) -> Result<Vec<(String, u32)>>;

    /// One page of `queue list`: recipients waiting or in flight (every
    /// row with `all`) in acceptance order, after the key `after`.
    async fn list(
        &self,
        all: bool,
        after: Option<(String, u32)>,
        limit: usize,
    ) -> Result<Vec<QueueEntry>>;

    /// `queue retry ID`: the email's waiting recipients become due at `now`.
    async fn retry(&self, email_id: &str, now: i64) -> Result<usize>;

    /// `queue delete ID`: the email's waiting and in-flight recipients leave
    /// the queue as `failed`, each with an `email.failed` event.
    async fn delete(&self, email_id: &str, now: i64) -> Result<usize>;
}

/// `last_response` and `detail.response` of a recipient the operator
/// deleted from the queue.
pub(crate) const DELETED: &str = "deleted from the queue by the operator";

/// The row's new status, next attempt and the event an outcome records.
pub(crate) fn outcome_columns(o: &Outcome) -> (&'static str, Option<i64>, EventType) {
    match *o {
        Outcome::Delivered => ("delivered", None, EventType::Delivered),
        Outcome::Deferred { next_attempt_at } => (
            "deferred",
            Some(next_attempt_at),
            EventType::DeliveryDelayed,
        ),
        Outcome::Bounced => ("bounced", None, EventType::Bounced),
        Outcome::Failed => ("failed", None, EventType::Failed),
    }
}

/// The event of a recorded attempt, from the attempt and what its row
/// said: the attempt number, when it was claimed and the address.
pub(crate) fn attempt_event(
    a: &Attempt,
    attempts: i64,
    started: Option<i64>,
    address: String,
) -> NewEvent {
    let (_, next, kind) = outcome_columns(&a.outcome);
    let mut ev = NewEvent::new(a.email_id.clone(), kind, a.at);
    ev.rcpt_idx = Some(a.idx);
    ev.recipient = Some(address);
    let mut detail = json!({
        "response": a.response,
        "tls": a.tls,
        "mx": a.mx,
        "attempt": attempts,
    });
    if let Some(p) = &a.tls_policy {
        detail["tls_policy"] = json!(p.applied);
        if let Some((result_type, why)) = &p.failure {
            detail["tls_policy_failure"] = json!({ "result_type": result_type, "detail": why });
        }
    }
    if let Some(ms) = duration_ms(started, a.at) {
        detail["duration_ms"] = json!(ms);
    }
    if let Some(next) = next {
        detail["next_attempt_at"] = json!(super::rfc3339(next));
    }
    if kind == EventType::Bounced {
        // The same `bounce` object as a bounce report's (src/inbound/process.rs).
        let b = crate::feedback::bounce::classify(None, &a.response, a.mx.as_deref(), true);
        detail["bounce"] = b.event_json(a.at, false);
    }
    ev.detail = Some(detail);
    ev
}

/// From the claim that started the attempt to its outcome: connecting,
/// the transaction and any queueing behind earlier recipients of the same
/// batch. None without a recorded start (rows claimed before the column
/// existed); a wall clock stepped back gives 0, not a negative time.
fn duration_ms(started: Option<i64>, at: i64) -> Option<i64> {
    started.map(|s| (at - s).max(0))
}

/// A claimed recipient found on the suppression list: its `last_response`
/// and its `email.suppressed` event.
pub(crate) fn suppressed_event(
    c: &Claimed,
    reason: &str,
    since: i64,
    now: i64,
) -> (String, NewEvent) {
    let response = format!("not sent: the address is suppressed ({reason})");
    let mut ev = NewEvent::new(c.email_id.clone(), EventType::Suppressed, now);
    ev.rcpt_idx = Some(c.idx);
    ev.recipient = Some(c.address.clone());
    ev.detail = Some(json!({
        "reason": reason,
        "suppressed_since": super::rfc3339(since),
        "response": response,
    }));
    (response, ev)
}

/// The `email.failed` event of a recipient deleted by the operator.
pub(crate) fn deleted_event(email_id: &str, idx: u32, now: i64) -> NewEvent {
    let mut ev = NewEvent::new(email_id.to_string(), EventType::Failed, now);
    ev.rcpt_idx = Some(idx);
    ev.detail = Some(json!({ "response": DELETED }));
    ev
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn a_clock_stepped_back_gives_no_negative_duration() {
        assert_eq!(duration_ms(Some(5_000), 4_000), Some(0));
        assert_eq!(duration_ms(Some(1_000), 4_000), Some(3_000));
        assert_eq!(duration_ms(None, 4_000), None);
    }
}
