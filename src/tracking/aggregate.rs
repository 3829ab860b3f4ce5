//! The flood rule: one pixel or link fetched in a loop must not write one
//! event (and one webhook) per hit. A hit of a token by a client (address,
//! User-Agent and method) is folded into the event of that client's first
//! hit of the same token when it comes within `window` of it; it is answered
//! as usual and only counted (`trackrelay_tracking_hits_aggregated_total`).
//! The window is fixed from the stored hit, not sliding, so a loop that never
//! stops still writes one event per window and client: the activity stays
//! visible, its volume does not.
//!
//! A person's double click is one event or two depending on the client; both
//! are fine. HEAD and GET are different clients here: a link checker's HEAD
//! must not swallow the reader's GET that follows it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

const SHARDS: usize = 16;

/// Bounded in time and size: each shard keeps two generations of keys. A
/// generation covers at most `window` (then it becomes the previous one and
/// the one before is dropped, being older than the window), and at most
/// `capacity / 16` keys (then it turns over early). Turning over early
/// forgets hits that could still have been folded, so under a flood of
/// distinct clients more hits are stored, never fewer.
pub struct Aggregator {
    window_ms: i64,
    shard_capacity: usize,
    /// Keys are hashes of (token, client) under two random keys: the map
    /// holds 16 bytes per entry whatever the token and User-Agent lengths,
    /// and nobody outside can make two clients collide on purpose.
    hashers: [std::collections::hash_map::RandomState; 2],
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// Key → unix ms of the stored hit it folds into.
    current: HashMap<u128, i64>,
    previous: HashMap<u128, i64>,
    current_since: i64,
}

/// Who made a hit.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub ip: IpAddr,
    /// The header's bytes as sent (not necessarily UTF-8).
    pub user_agent: Option<&'a [u8]>,
    pub head: bool,
}

impl Aggregator {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Aggregator {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            shard_capacity: (capacity / SHARDS).max(1),
            hashers: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// True when this hit repeats one stored less than the window ago (fold
    /// it); false when it is to be stored (and later hits fold into it).
    pub fn fold(&self, token: &str, client: Client<'_>, at_ms: i64) -> bool {
        let key = self.key(token, client);
        let mut shard = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stored_at = shard
            .current
            .get(&key)
            .or_else(|| shard.previous.get(&key))
            .copied();
        if stored_at.is_some_and(|t| at_ms.saturating_sub(t) < self.window_ms) {
            return true;
        }
        let full = shard.current.len() >= self.shard_capacity;
        if full || at_ms.saturating_sub(shard.current_since) >= self.window_ms {
            shard.previous = std::mem::take(&mut shard.current);
            shard.current_since = at_ms;
        }
        shard.current.insert(key, at_ms);
        false
    }

    fn key(&self, token: &str, client: Client<'_>) -> u128 {
        let [a, b] = self.hashers.each_ref().map(|s| {
            let mut h = s.build_hasher();
            token.hash(&mut h);
            client.ip.hash(&mut h);
            client.user_agent.hash(&mut h);
            client.head.hash(&mut h);
            h.finish()
        });
        (u128::from(a) << 64) | u128::from(b)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    fn client(ip: &str, ua: Option<&'static str>) -> Client<'static> {
        Client {
            ip: ip.parse().unwrap(),
            user_agent: ua.map(str::as_bytes),
            head: false,
        }
    }

    #[test]
    fn repeats_within_the_window_fold_into_the_first() {
        let a = Aggregator::new(Duration::from_secs(10), 1_000);
        let c = client("192.0.2.1", Some("Firefox"));
        assert!(!a.fold("tok", c, T), "the first hit is stored");
        for i in 1..50 {
            assert!(a.fold("tok", c, T + i * 100), "hit {i}");
        }
        // The window runs from the stored hit: a loop still shows once per window.
        assert!(!a.fold("tok", c, T + 10_000));
        assert!(a.fold("tok", c, T + 10_001));
    }

    #[test]
    fn other_tokens_and_clients_are_their_own() {
        let a = Aggregator::new(Duration::from_secs(10), 1_000);
        let c = client("192.0.2.1", Some("Firefox"));
        assert!(!a.fold("tok", c, T));
        assert!(!a.fold("other", c, T));
        assert!(!a.fold("tok", client("192.0.2.2", Some("Firefox")), T));
        assert!(!a.fold("tok", client("192.0.2.1", Some("Chrome")), T));
        assert!(!a.fold("tok", client("192.0.2.1", None), T));
        let head = Client { head: true, ..c };
        assert!(
            !a.fold("tok", head, T),
            "a checker's HEAD is not the reader's GET"
        );
        assert!(a.fold("tok", c, T + 1));
        assert!(a.fold("tok", head, T + 1));
    }

    #[test]
    fn memory_is_capped() {
        let a = Aggregator::new(Duration::from_secs(10), 160);
        let c = client("192.0.2.1", None);
        for i in 0..10_000 {
            assert!(!a.fold(&format!("tok{i}"), c, T));
        }
        assert!(a.len() <= 2 * 160, "{}", a.len());
    }

    #[test]
    fn old_keys_are_pruned_by_time() {
        let a = Aggregator::new(Duration::from_secs(10), 1_000_000);
        let c = client("192.0.2.1", None);
        for i in 0..10_000 {
            a.fold(&format!("tok{i}"), c, T);
        }
        assert_eq!(a.len(), 10_000);
        // Two windows later, each shard that sees a hit has let the old keys go.
        for wave in [25_000, 36_000] {
            for i in 0..1_000 {
                a.fold(&format!("new{wave}-{i}"), c, T + wave);
            }
        }
        assert_eq!(a.len(), 2_000);
        assert!(!a.fold("tok0", c, T + 36_001));
    }

    #[test]
    fn a_window_of_zero_folds_nothing() {
        let a = Aggregator::new(Duration::ZERO, 1_000);
        let c = client("192.0.2.1", None);
        assert!(!a.fold("tok", c, T));
        assert!(!a.fold("tok", c, T));
    }
}
