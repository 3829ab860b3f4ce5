//! Password checks for AUTH, and the per-IP throttle on failures.
//!
//! argon2id is deliberately slow (tens of milliseconds), so checks run on
//! the blocking pool, and a successful check is remembered for a while
//! under a keyed hash of the credentials: applications that open one
//! connection per message do not pay for argon2 each time.

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use ring::hmac;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CACHE_TTL: Duration = Duration::from_secs(600);
const CACHE_MAX: usize = 10_000;
/// The hash of a random password nobody kept, with argon2's default cost.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$vVVq6pyMo/HWwFDiBzXNfQ$KHlKSqwelqUQYyobq8XZzRLNH8qcUlLuVSnd98FHfuo";

pub struct Authenticator {
    users: HashMap<String, String>,
    /// A hash that never matches, so an unknown user costs as much as a known one.
    decoy: String,
    cache_key: hmac::Key,
    cache: Mutex<HashMap<Vec<u8>, Instant>>,
}

impl Authenticator {
    pub fn new(users: impl IntoIterator<Item = (String, String)>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let cache_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .expect("the system random generator is available");
        Authenticator {
            users: users.into_iter().collect(),
            decoy: DECOY_HASH.to_string(),
            cache_key,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cache_tag(&self, user: &str, password: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.cache_key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.sign().as_ref().to_vec()
    }

    /// True when `password` is `user`'s. Blocking: call from the blocking pool.
    pub fn verify_blocking(&self, user: &str, password: &str) -> bool {
        let tag = self.cache_tag(user, password);
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.get(&tag).is_some_and(|t| t.elapsed() < CACHE_TTL) {
                return true;
            }
        }
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
            && known;
        if ok {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, t| t.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(tag, Instant::now());
        }
        ok
    }
}

/// An argon2id PHC string with a random salt (argon2's default parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system random generator failed".to_string())?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Failed AUTH attempts per IP. Each attempt from an IP with recent
/// failures waits a little longer, doubling from the third failure and
/// capped, so guessing is slow while a user who mistyped twice gets in
/// at once. Failures are forgotten after a quiet period.
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    forget_after: Duration,
    cap: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            failures: Mutex::new(HashMap::new()),
            forget_after: Duration::from_secs(900),
            cap: Duration::from_secs(15),
        }
    }
}

impl Throttle {
    /// How long to wait before checking an attempt from `ip`.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((n, last)) if last.elapsed() < self.forget_after && *n >= 3 => {
                let exp = (*n - 3).min(10);
                (Duration::from_millis(500) * (1 << exp)).min(self.cap)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let forget = self.forget_after;
            map.retain(|_, (_, t)| t.elapsed() < forget);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.forget_after {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let a = Authenticator::new([("app".to_string(), h)]);
        assert!(a.verify_blocking("app", "s3cret"));
        assert!(a.verify_blocking("app", "s3cret"), "cached");
        assert!(!a.verify_blocking("app", "wrong"));
        assert!(!a.verify_blocking("nobody", "s3cret"));
    }

    #[test]
    fn throttle_grows_and_forgives() {
        let t = Throttle::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        t.failed(ip);
        t.failed(ip);
        assert_eq!(t.delay(ip), Duration::ZERO, "two mistakes cost nothing");
        t.failed(ip);
        let d3 = t.delay(ip);
        t.failed(ip);
        let d4 = t.delay(ip);
        assert!(d3 > Duration::ZERO && d4 > d3, "{d3:?} {d4:?}");
        for _ in 0..30 {
            t.failed(ip);
        }
        assert_eq!(t.delay(ip), Duration::from_secs(15));
        t.succeeded(ip);
        assert_eq!(t.delay(ip), Duration::ZERO);
    }
}
