//! The throttle on failed credential checks, shared by every connection.
//!
//! Failures fill a leaky bucket per client network (an IPv4 address, or an
//! IPv6 /64, which one host usually has whole) and, for SMTP, one per user
//! name. A bucket leaks one failure per `every`. An attempt is let through
//! only while its bucket has room for it counting the attempts still being
//! checked, so opening many connections at once buys no more guesses than
//! asking one after the other: `burst` at once, then one per `every`. The
//! others are refused at once (SMTP `454 4.7.0`, HTTP 429), before argon2.
//!
//! A user's bucket does not apply from a network that has logged in as that
//! user recently, so guessing at an account does not lock its own
//! application out; and a couple of mistakes never fill a bucket. Buckets
//! that have drained are forgotten on time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `burst` failures at once, then one more per `every`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub burst: u32,
    pub every: Duration,
}

/// How long a network that logged in as a user stays exempt from that
/// user's bucket.
const KNOWN_GOOD_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Drained buckets are swept at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Entries per map; past it (a large distributed attack) the emptiest go.
const MAX_ENTRIES: usize = 100_000;
/// Longer user names share a bucket with their first bytes.
const MAX_USER_KEY: usize = 256;

pub struct Throttle {
    per_ip: Limit,
    per_user: Option<Limit>,
    state: Mutex<State>,
}

struct State {
    ips: HashMap<IpAddr, Bucket>,
    users: HashMap<String, Bucket>,
    known_good: HashMap<(String, IpAddr), Instant>,
    pruned: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures not yet leaked away, as of `at`.
    level: f64,
    at: Instant,
    /// Attempts let through and not yet decided.
    pending: u32,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            level: 0.0,
            at: now,
            pending: 0,
        }
    }

    fn level_at(&self, limit: Limit, now: Instant) -> f64 {
        let leaked =
            now.saturating_duration_since(self.at).as_secs_f64() / limit.every.as_secs_f64();
        (self.level - leaked).max(0.0)
    }

    fn settle(&mut self, limit: Limit, now: Instant) {
        self.level = self.level_at(limit, now);
        self.at = now;
    }

    fn has_room(&self, limit: Limit, now: Instant) -> bool {
        self.level_at(limit, now) + f64::from(self.pending) + 1.0 <= f64::from(limit.burst)
    }

    fn drained(&self, limit: Limit, now: Instant) -> bool {
        self.pending == 0 && self.level_at(limit, now) == 0.0
    }
}

/// IPv4-mapped IPv6 peers count as their IPv4 address; other IPv6 peers
/// by their /64.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

fn user_key(user: &str) -> String {
    if user.len() <= MAX_USER_KEY {
        return user.to_string();
    }
    let mut end = MAX_USER_KEY;
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    user[..end].to_string()
}

impl Throttle {
    pub fn new(per_ip: Limit, per_user: Option<Limit>) -> Self {
        Throttle {
            per_ip,
            per_user,
            state: Mutex::new(State {
                ips: HashMap::new(),
                users: HashMap::new(),
                known_good: HashMap::new(),
                pruned: Instant::now(),
            }),
        }
    }

    /// SMTP AUTH: 10 failures per network, then one a minute; 20 per user
    /// name, then one every 30 s.
    pub fn smtp() -> Self {
        Self::new(
            Limit {
                burst: 10,
                every: Duration::from_secs(60),
            },
            Some(Limit {
                burst: 20,
                every: Duration::from_secs(30),
            }),
        )
    }

    /// The admin API's token: 10 failures per network, then one a minute.
    pub fn api() -> Self {
        Self::new(
            Limit {
                burst: 10,
                every: Duration::from_secs(60),
            },
            None,
        )
    }

    /// Lets an attempt from `ip` (as `user`) be checked, or None when it
    /// must be refused without checking. The attempt must then be marked
    /// [`Attempt::succeeded`] or [`Attempt::failed`]; dropped unmarked, it
    /// counts as neither.
    pub fn begin(self: &Arc<Self>, ip: IpAddr, user: Option<&str>) -> Option<Attempt> {
        let now = Instant::now();
        let net = network_of(ip);
        let user = user.map(user_key);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut st, now, false);
        if st
            .ips
            .get(&net)
            .is_some_and(|b| !b.has_room(self.per_ip, now))
        {
            return None;
        }
        let user_limited = match (&user, self.per_user) {
            (Some(u), Some(limit)) => {
                let exempt = st
                    .known_good
                    .get(&(u.clone(), net))
                    .is_some_and(|t| now.saturating_duration_since(*t) < KNOWN_GOOD_FOR);
                !exempt && st.users.get(u).is_some_and(|b| !b.has_room(limit, now))
            }
            _ => false,
        };
        if user_limited {
            return None;
        }
        self.make_room(&mut st, now);
        st.ips
            .entry(net)
            .or_insert_with(|| Bucket::new(now))
            .pending += 1;
        if let (Some(u), Some(_)) = (&user, self.per_user) {
            st.users
                .entry(u.clone())
                .or_insert_with(|| Bucket::new(now))
                .pending += 1;
        }
        Some(Attempt {
            throttle: self.clone(),
            net,
            user: user.filter(|_| self.per_user.is_some()),
            done: false,
        })
    }

    /// Sweeps drained buckets and expired exemptions, at most once a
    /// minute unless `force`.
    fn prune(&self, st: &mut State, now: Instant, force: bool) {
        if !force && now.saturating_duration_since(st.pruned) < PRUNE_EVERY {
            return;
        }
        st.pruned = now;
        let ip_limit = self.per_ip;
        st.ips.retain(|_, b| !b.drained(ip_limit, now));
        if let Some(limit) = self.per_user {
            st.users.retain(|_, b| !b.drained(limit, now));
        }
        st.known_good
            .retain(|_, t| now.saturating_duration_since(*t) < KNOWN_GOOD_FOR);
    }

    /// Keeps each map under MAX_ENTRIES before a new key may go in.
    fn make_room(&self, st: &mut State, now: Instant) {
        if st.ips.len() < MAX_ENTRIES && st.users.len() < MAX_ENTRIES {
            return;
        }
        self.prune(st, now, true);
        evict_emptiest(&mut st.ips, self.per_ip, now);
        if let Some(limit) = self.per_user {
            evict_emptiest(&mut st.users, limit, now);
        }
    }

    fn finish(&self, net: IpAddr, user: Option<&str>, failed: bool) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = st.ips.get_mut(&net) {
            b.pending = b.pending.saturating_sub(1);
            if failed {
                b.settle(self.per_ip, now);
                b.level += 1.0;
            }
        }
        let (Some(user), Some(limit)) = (user, self.per_user) else {
            return;
        };
        if let Some(b) = st.users.get_mut(user) {
            b.pending = b.pending.saturating_sub(1);
            if failed {
                b.settle(limit, now);
                b.level += 1.0;
            } else {
                // Only the holder of the password can clear its bucket. The
                // network's bucket stays: a valid account of one's own must
                // not buy guesses at others.
                b.level = 0.0;
            }
        }
        if !failed {
            if st.known_good.len() >= MAX_ENTRIES {
                self.prune(&mut st, now, true);
            }
            if st.known_good.len() < MAX_ENTRIES {
                st.known_good.insert((user.to_string(), net), now);
            }
        }
    }
}

fn evict_emptiest<K: Clone + Eq + std::hash::Hash>(
    map: &mut HashMap<K, Bucket>,
    limit: Limit,
    now: Instant,
) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    let mut levels: Vec<(f64, K)> = map
        .iter()
        .filter(|(_, b)| b.pending == 0)
        .map(|(k, b)| (b.level_at(limit, now), k.clone()))
        .collect();
    levels.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, k) in levels.into_iter().take(MAX_ENTRIES / 2) {
        map.remove(&k);
    }
}

/// One credential check let through by the throttle.
pub struct Attempt {
    throttle: Arc<Throttle>,
    net: IpAddr,
    user: Option<String>,
    done: bool,
}

impl Attempt {
    pub fn succeeded(mut self) {
        self.done = true;
        self.throttle.finish(self.net, self.user.as_deref(), false);
    }

    pub fn failed(mut self) {
        self.done = true;
        self.throttle.finish(self.net, self.user.as_deref(), true);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self
            .throttle
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(b) = st.ips.get_mut(&self.net) {
            b.pending = b.pending.saturating_sub(1);
        }
        if let Some(u) = &self.user {
            if let Some(b) = st.users.get_mut(u) {
                b.pending = b.pending.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small() -> Arc<Throttle> {
        Arc::new(Throttle::new(
            Limit {
                burst: 3,
                every: Duration::from_secs(3600),
            },
            Some(Limit {
                burst: 5,
                every: Duration::from_secs(3600),
            }),
        ))
    }

    #[test]
    fn attempts_in_flight_count_against_the_burst() {
        let t = small();
        let a: Vec<_> = (0..3)
            .map(|_| {
                t.begin(ip("192.0.2.1"), Some("app"))
                    .expect("within the burst")
            })
            .collect();
        assert!(
            t.begin(ip("192.0.2.1"), Some("app")).is_none(),
            "parallel attempts are counted"
        );
        assert!(
            t.begin(ip("192.0.2.2"), Some("app")).is_some(),
            "another network is not"
        );
        drop(a);
        assert!(
            t.begin(ip("192.0.2.1"), Some("app")).is_some(),
            "undecided attempts count as nothing"
        );
    }

    #[test]
    fn a_couple_of_mistakes_then_the_right_password() {
        let t = small();
        for _ in 0..2 {
            t.begin(ip("192.0.2.1"), Some("app")).unwrap().failed();
        }
        t.begin(ip("192.0.2.1"), Some("app")).unwrap().succeeded();
        t.begin(ip("192.0.2.1"), Some("app")).unwrap().failed();
        assert!(
            t.begin(ip("192.0.2.1"), Some("app")).is_none(),
            "three failures fill the network's bucket"
        );
    }

    #[test]
    fn the_user_bucket_spares_networks_that_logged_in() {
        let t = small();
        t.begin(ip("198.51.100.7"), Some("app"))
            .unwrap()
            .succeeded();
        for i in 1..=5 {
            t.begin(ip(&format!("192.0.2.{i}")), Some("app"))
                .unwrap()
                .failed();
        }
        assert!(
            t.begin(ip("192.0.2.99"), Some("app")).is_none(),
            "the user is being guessed at"
        );
        assert!(t.begin(ip("192.0.2.99"), Some("other")).is_some());
        t.begin(ip("198.51.100.7"), Some("app"))
            .expect("known network")
            .succeeded();
        assert!(
            t.begin(ip("192.0.2.99"), Some("app")).is_some(),
            "a success clears the user's bucket"
        );
    }

    #[test]
    fn ipv6_counts_by_64() {
        let t = small();
        for i in 1..=3 {
            t.begin(ip(&format!("2001:db8:1:2::{i}")), None)
                .unwrap()
                .failed();
        }
        assert!(t.begin(ip("2001:db8:1:2:ffff::1"), None).is_none());
        assert!(t.begin(ip("2001:db8:1:3::1"), None).is_some());
        assert_eq!(network_of(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn buckets_leak_and_are_pruned_on_time() {
        let t = Arc::new(Throttle::new(
            Limit {
                burst: 1,
                every: Duration::from_millis(1),
            },
            None,
        ));
        t.begin(ip("192.0.2.1"), None).unwrap().failed();
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.begin(ip("192.0.2.1"), None).is_some(), "leaked");
        let now = Instant::now();
        let mut st = t.state.lock().unwrap();
        assert_eq!(st.ips.len(), 1);
        st.pruned = now - PRUNE_EVERY;
        t.prune(&mut st, now + Duration::from_millis(10), false);
        assert!(st.ips.is_empty(), "drained buckets are forgotten");
    }
}
