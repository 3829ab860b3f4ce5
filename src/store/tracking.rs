//! What the store does for tracking and its consequences: tracking events
//! (opens, clicks, unsubscribes) and the webhook outbox they fill.

use super::Result;
use crate::events::NewEvent;
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Arc;

/// An endpoint's interest, as configured in `[[webhooks]]`.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub url: String,
    /// Event type names; `*` for all.
    pub events: Vec<String>,
    /// Sending domains; all when empty.
    pub domains: Vec<String>,
}

impl Subscription {
    pub fn wants(&self, event_type: &str, domain: Option<&str>) -> bool {
        let type_ok = self.events.iter().any(|e| e == "*" || e == event_type);
        let domain_ok = self.domains.is_empty()
            || domain.is_some_and(|d| self.domains.iter().any(|x| x.eq_ignore_ascii_case(d)));
        type_ok && domain_ok
    }
}

// ---------------------------------------------------------------------------
// Opens and clicks.
// ---------------------------------------------------------------------------

/// A recipient's row, as far as tracking needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientDelivery {
    pub address: String,
    pub delivered_at: Option<i64>,
    /// Start of the latest delivery attempt.
    pub attempt_started_at: Option<i64>,
    /// An attempt is under way: the recipient is leased for sending.
    pub sending: bool,
}

/// Another click of the same recipient's copy of an email, on another
/// link, stored before the one being judged (by any node, or earlier in the
/// same batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearbyClick {
    pub at: i64,
    pub link: Option<String>,
}

/// What the store knows about a tracking event's recipient when it stores
/// the event: facts the listener, answering from the token alone, never
/// reads.
#[derive(Debug, Clone, Copy)]
pub struct TrackingFacts<'a> {
    /// None for an email the store never saw (a `preview` token) or one
    /// pruned since.
    pub recipient: Option<&'a RecipientDelivery>,
    /// For a click: the copy's clicks on other links less than
    /// [`ClickJudge::burst_window_ms`] away from it, whatever node recorded
    /// them. The store may stop at the first one: one is all the burst rule
    /// needs, and on SQLite it keeps a click's cost at one index probe
    /// however many clicks the copy has. Empty for opens.
    pub nearby_clicks: &'a [NearbyClick],
}

/// The rule that flags machine clicks from the store's facts. It is the
/// caller's (`crate::tracking`): the store does not know what makes a click
/// a scanner's, only what it has stored.
pub trait ClickJudge: Send + Sync {
    /// How far (either way) around a click the store looks for the copy's
    /// other clicks.
    fn burst_window_ms(&self) -> i64;

    /// A machine reason for an event not flagged yet, or None.
    fn judge(&self, ev: &NewEvent, facts: &TrackingFacts<'_>) -> Option<&'static str>;
}

/// How one event of a tracking batch was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub event_id: i64,
    /// Filled in from the recipient's row (None when the store has none).
    pub recipient: Option<String>,
    pub machine: bool,
    pub machine_reason: Option<String>,
}

// ---------------------------------------------------------------------------
// Unsubscribes.
// ---------------------------------------------------------------------------

/// How an unsubscribe request came; `detail.via` of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An RFC 8058 POST from a mail client (`List-Unsubscribe=One-Click`).
    OneClick,
    /// The button of our confirmation page, in a browser.
    Page,
    /// Mail to the List-Unsubscribe mailto address.
    Mailto,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::OneClick => "one_click",
            Via::Page => "page",
            Via::Mailto => "mailto",
        }
    }
}

/// One unsubscribe request, as the caller saw it.
#[derive(Debug, Clone)]
pub struct UnsubscribeRequest {
    pub email_id: String,
    pub rcpt_idx: u32,
    pub via: Via,
    pub at: i64,
    /// The client's address and User-Agent for an HTTP request.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsubscribeOutcome {
    /// The first request of this recipient of this email: `event_id` is
    /// its `email.unsubscribed` event.
    Unsubscribed {
        event_id: i64,
        address: String,
        domain: String,
        /// Whether a suppression row was added (false when the domain does
        /// not suppress on unsubscribe, or the address already was).
        suppression_added: bool,
    },
    /// Asked before: no new event (`event_id` is the first one's).
    Repeated {
        event_id: i64,
        suppression_added: bool,
    },
    /// No such recipient in this store (a token from another installation
    /// whose key we share, or a store started afresh).
    UnknownRecipient,
}

// ---------------------------------------------------------------------------
// The webhook outbox.
// ---------------------------------------------------------------------------

/// A webhook delivery due to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The `webhook-id`: the same on every attempt.
    pub id: String,
    pub endpoint: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_at: i64,
}

/// A delivery as `webhooks list` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub endpoint: String,
    pub event_type: String,
    pub email_id: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// Deliveries by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

#[async_trait]
pub trait TrackingStore: Send + Sync {
    /// Stores a batch of opens and clicks from the tracking listener in one
    /// transaction that may lose its last commits on power loss
    /// (`Durability::Normal`), each through the shared event insert (outbox
    /// rows, rollups, first `opened_at`/`clicked_at`). An event with a
    /// recipient index but no address gets the recipient's address, and,
    /// unless it is already flagged, `judge`'s verdict on the store's
    /// facts. Events are judged in order, each seeing those before it.
    /// Returns how each was stored, in order.
    async fn insert_tracking(
        &self,
        events: Arc<[NewEvent]>,
        judge: Arc<dyn ClickJudge>,
    ) -> Result<Vec<Recorded>>;

    /// Records an unsubscribe request in one durable transaction: the first
    /// one of a recipient of an email is an `email.unsubscribed` event; the
    /// address goes on the sending domain's suppression list (linked to
    /// that event) when `suppressing` has the domain (lowercased). A repeat
    /// adds no event but puts a removed suppression back.
    async fn unsubscribe(
        &self,
        req: UnsubscribeRequest,
        suppressing: Arc<HashSet<String>>,
    ) -> Result<UnsubscribeOutcome>;

    /// Leases up to `limit` pending deliveries of `endpoint` due at `now`
    /// until `now + lease_ms`, oldest first. Deliveries leased by anyone
    /// (another worker, another node) are never handed out again before
    /// their lease runs out.
    async fn webhook_claim_due(
        &self,
        endpoint: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>>;

    /// The endpoint answered 2xx.
    async fn webhook_delivered(&self, id: &str, at: i64) -> Result<()>;

    /// An attempt failed: retried at `next`, or given up when `next` is None.
    async fn webhook_failed(&self, id: &str, error: &str, next: Option<i64>) -> Result<()>;

    /// Deliveries, newest first; only those given up with `failed_only`.
    async fn webhook_list(&self, failed_only: bool, limit: usize) -> Result<Vec<OutboxRow>>;

    async fn webhook_counts(&self) -> Result<OutboxCounts>;

    /// Puts one delivery (any status) back in the queue, due at `now`, under
    /// the same webhook-id. Returns how many rows (0 or 1) it touched.
    async fn webhook_replay_one(&self, id: &str, now: i64) -> Result<u64>;

    /// Puts every delivery created at or after `since` back in the queue.
    async fn webhook_replay_since(&self, since: i64, now: i64) -> Result<u64>;
}
