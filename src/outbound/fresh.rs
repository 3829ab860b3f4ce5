//! Messages just queued by this process, handed from the submission
//! listener to the runner in memory.
//!
//! The runner usually claims a message within milliseconds of its `250`;
//! reading the body it was just given back from the store cost a blocking
//! pool hand-off, a SQLite read and two 50 KB copies per message (about
//! 3 % of the CPU per message in bench/relay.sh, issue 15). The store stays
//! the truth: a body not found here (taken already, evicted, accepted by
//! another node, or a restart since) is read from the store as before.

use crate::store::queue::StoredBody;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// What the hand-off may hold at most. When the runner falls behind (a
/// destination down, a backlog), the oldest entries make room.
pub const DEFAULT_MAX_BYTES: usize = 32 * 1024 * 1024;

pub struct FreshBodies {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    bodies: HashMap<String, Arc<StoredBody>>,
    /// Insertion order, for eviction; ids already taken are skipped.
    order: VecDeque<String>,
    bytes: usize,
}

fn size(b: &StoredBody) -> usize {
    b.body.len() + b.received.len()
}

impl FreshBodies {
    pub fn new(max_bytes: usize) -> Self {
        FreshBodies {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Called before the store commits, so the runner woken by the commit
    /// finds it. A body bigger than the whole budget is not kept.
    pub fn put(&self, email_id: &str, body: Arc<StoredBody>) {
        let n = size(&body);
        if n > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        while inner.bytes + n > self.max_bytes {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.bodies.remove(&old) {
                inner.bytes -= size(&b);
            }
        }
        if let Some(b) = inner.bodies.insert(email_id.to_string(), body) {
            inner.bytes -= size(&b);
        }
        inner.bytes += n;
        inner.order.push_back(email_id.to_string());
        // Taken ids leave stale entries in `order`; keep it bounded.
        if inner.order.len() > 2 * inner.bodies.len() + 64 {
            let Inner { bodies, order, .. } = &mut *inner;
            order.retain(|id| bodies.contains_key(id));
        }
    }

    /// Takes the body out: one batch reads a message once, and a later
    /// batch of the same message (more recipients, a retry) reads the store.
    pub fn take(&self, email_id: &str) -> Option<Arc<StoredBody>> {
        let mut inner = self.lock();
        let b = inner.bodies.remove(email_id)?;
        inner.bytes -= size(&b);
        Some(b)
    }

    /// The store refused the message: nothing will claim it.
    pub fn forget(&self, email_id: &str) {
        self.take(email_id);
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Arc<StoredBody> {
        Arc::new(StoredBody {
            received: Vec::new(),
            body: vec![b'x'; n].into(),
        })
    }

    #[test]
    fn taken_once_then_gone() {
        let f = FreshBodies::new(1000);
        f.put("a", body(10));
        assert_eq!(f.take("a").map(|b| b.body.len()), Some(10));
        assert!(f.take("a").is_none());
        assert_eq!(f.bytes(), 0);
    }

    #[test]
    fn oldest_make_room_and_oversized_are_not_kept() {
        let f = FreshBodies::new(100);
        f.put("a", body(40));
        f.put("b", body(40));
        f.put("c", body(40)); // evicts a
        assert!(f.take("a").is_none());
        assert!(f.take("b").is_some());
        assert!(f.take("c").is_some());
        f.put("big", body(101));
        assert!(f.take("big").is_none());
        assert_eq!(f.bytes(), 0);
    }

    #[test]
    fn stale_order_entries_stay_bounded() {
        let f = FreshBodies::new(1 << 20);
        for i in 0..10_000 {
            let id = i.to_string();
            f.put(&id, body(1));
            f.take(&id);
        }
        assert!(f.lock().order.len() <= 64 + 1);
        f.put("x", body(1));
        f.forget("x");
        assert_eq!(f.bytes(), 0);
    }
}
