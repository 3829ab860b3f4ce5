//! Domains that keep verifying themselves: `serve` re-checks each
//! configured domain's DNS records with the dns-check code (often while it
//! is not verified, daily once it is), keeps a Resend-style status with its
//! history in the store, sends `domain.updated` on every change, and
//! decides which tracking host new links use.
//!
//! - [`rules`]: the statuses and their transitions (pure, 72-hour window).
//! - [`tracking`]: which tracking host is in use (pure).
//! - [`monitor`]: the background task.
//! - [`view`]: the JSON shapes of the API (and of anything else showing a
//!   domain).

pub mod monitor;
pub mod rules;
pub mod tracking;
pub mod view;

pub use monitor::Monitor;
pub use rules::{DomainState, DomainStatus};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The tracking host in use per sending domain, shared between the
/// checker (which writes it) and the queue runner (which puts it into
/// links). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TrackingHosts(Arc<RwLock<HashMap<String, String>>>);

impl TrackingHosts {
    /// The host for `domain` (any case), if one was chosen.
    pub fn get(&self, domain: &str) -> Option<String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(&domain.to_ascii_lowercase()).cloned()
    }

    pub fn set(&self, domain: &str, host: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        let key = domain.to_ascii_lowercase();
        match host {
            Some(h) => map.insert(key, h),
            None => map.remove(&key),
        };
    }
}
