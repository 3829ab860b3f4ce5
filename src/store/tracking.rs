//! What the store does for tracking and its consequences: tracking events
//! (opens, clicks, unsubscribes) and the webhook outbox they fill.

use async_trait::async_trait;

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

#[async_trait]
pub trait TrackingStore: Send + Sync {}
