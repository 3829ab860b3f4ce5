//! Sharing a destination's leased recipients among its connections.
//!
//! A claim leases up to one connection's worth of recipients. Under load
//! the claims made while every slot was busy are the biggest, and once the
//! queue ran dry one connection went on sending its batch message by
//! message while its siblings had closed and the cores waited (issue 15:
//! the last ~100 ms of a 5,000-message run, at half the CPU). So the
//! recipients a connection has not started sit on its shelf. A connection
//! to the same destination that runs dry takes half of the fullest
//! sibling's shelf; only when no sibling has two to spare does it lease
//! more from the queue, for the connection it has open rather than a new
//! one, up to `max_messages_per_connection`.
//!
//! A recipient moved between shelves keeps its lease: the lease is the
//! runner's, not the connection's, and each connection renews the leases
//! of everything it ever held (a finished row is no longer renewed, by the
//! store's own condition).

use super::{rcpt_domain, Runner};
use crate::config::TlsPolicy;
use crate::store;
use crate::store::queue::{Claimed, LeaseKeys};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a connection can carry: the destination, and whether its TLS must
/// be enforced (the two keys batches are grouped by).
pub(super) type ShelfKey = (String, bool);

/// The leases one connection holds, renewed while it works and given back
/// if the runner stops first.
pub(super) type Leases = Arc<Mutex<Vec<LeaseKeys>>>;

/// One connection's recipients not yet started at its first host.
pub(super) struct Shelf {
    key: ShelfKey,
    state: Mutex<State>,
}

struct State {
    items: VecDeque<Claimed>,
    /// Cleared once the connection is past its first host (or gone): what
    /// is left then is its own to retry elsewhere, not a sibling's to take.
    open: bool,
}

impl Shelf {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pop(&self) -> Option<Claimed> {
        self.state().items.pop_front()
    }

    pub(super) fn len(&self) -> usize {
        self.state().items.len()
    }

    pub(super) fn key(&self) -> &ShelfKey {
        &self.key
    }
}

/// Records under `leases` the keys of `items`, by lease id.
pub(super) fn hold(leases: &Leases, items: &[Claimed]) {
    let mut held = leases.lock().unwrap_or_else(|p| p.into_inner());
    for c in items {
        let key = (c.email_id.clone(), c.idx);
        match held.iter_mut().find(|(id, _)| *id == c.lease_id) {
            Some((_, keys)) => keys.push(key),
            None => held.push((c.lease_id.clone(), vec![key])),
        }
    }
}

impl Runner {
    pub(super) fn shelf_key(&self, c: &Claimed) -> ShelfKey {
        let dest = self.router.destination(rcpt_domain(&c.address));
        (dest, self.policy_for(c) == TlsPolicy::Enforced)
    }

    fn shelves(&self) -> MutexGuard<'_, Vec<Arc<Shelf>>> {
        self.shelves.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `items` (a new batch) on a shelf its siblings can take from.
    pub(super) fn open_shelf(&self, key: ShelfKey, items: Vec<Claimed>) -> Arc<Shelf> {
        let shelf = Arc::new(Shelf {
            key,
            state: Mutex::new(State {
                items: items.into(),
                open: true,
            }),
        });
        self.shelves().push(shelf.clone());
        shelf
    }

    /// Takes `shelf` out of sharing and returns what is left on it.
    pub(super) fn close_shelf(&self, shelf: &Arc<Shelf>) -> Vec<Claimed> {
        self.shelves().retain(|s| !Arc::ptr_eq(s, shelf));
        let mut state = shelf.state();
        state.open = false;
        state.items.drain(..).collect()
    }

    /// Up to `max` recipients for `shelf`'s connection, which has run
    /// dry: half of what the fullest sibling has not started, or else
    /// newly leased from the queue. Nothing once the runner is stopping.
    pub(super) async fn refill(&self, shelf: &Arc<Shelf>, leases: &Leases, max: usize) -> bool {
        if max == 0 || self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        let mut got = self.take_from_sibling(shelf, max);
        let from_sibling = got.len();
        if got.is_empty() {
            got = self.lease_more(shelf.key(), max).await;
        }
        if got.is_empty() {
            return false;
        }
        tracing::debug!(
            destination = %shelf.key().0,
            from_sibling,
            leased = got.len() - from_sibling,
            "an open connection takes on more recipients"
        );
        hold(leases, &got);
        shelf.state().items.extend(got);
        true
    }

    fn take_from_sibling(&self, thief: &Arc<Shelf>, max: usize) -> Vec<Claimed> {
        let shelves = self.shelves();
        let fullest = shelves
            .iter()
            .filter(|s| !Arc::ptr_eq(s, thief) && s.key == thief.key)
            .map(|s| (s.len(), s))
            .filter(|(n, _)| *n >= 2)
            .max_by_key(|(n, _)| *n);
        let Some((_, victim)) = fullest else {
            return Vec::new();
        };
        let mut state = victim.state();
        if !state.open {
            return Vec::new();
        }
        // The back half: the victim sends its oldest next.
        let take = (state.items.len() / 2).min(max);
        let keep = state.items.len() - take;
        state.items.split_off(keep).into()
    }

    /// Leases up to `max` due recipients that go where `key` says.
    async fn lease_more(&self, key: &ShelfKey, max: usize) -> Vec<Claimed> {
        let due = match self
            .store
            .due(store::now_ms(), super::leases::CANDIDATES, &[])
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("reading due recipients: {e}");
                return Vec::new();
            }
        };
        let wanted: Vec<Claimed> = due
            .into_iter()
            .filter(|c| self.shelf_key(c) == *key)
            .take(max)
            .collect();
        if wanted.is_empty() {
            return wanted;
        }
        let lease_ms = self.lease_time.as_millis() as i64;
        match self.store.claim(wanted, store::now_ms(), lease_ms).await {
            Ok(got) => got,
            Err(e) => {
                tracing::error!("claiming due recipients: {e}");
                Vec::new()
            }
        }
    }
}
