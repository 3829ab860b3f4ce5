//! Credential checks shared by SMTP AUTH and the admin API's Bearer token:
//! argon2id verification, the cache of recent successes, and the throttle
//! on failures.
//!
//! argon2id is deliberately slow (tens of milliseconds) and each check
//! holds about 19 MiB, so checks run on the blocking pool, at most one per
//! core in the whole process: a flood of wrong passwords costs a bounded
//! amount of CPU and memory and queues instead. A successful check is
//! remembered for a while under a keyed hash of the credentials, so
//! applications that open one connection per message do not pay for argon2
//! each time.

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use aws_lc_rs::hmac;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const CACHE_TTL: Duration = Duration::from_secs(600);
const CACHE_MAX: usize = 10_000;
/// The hash of a random password nobody kept, with argon2's default cost.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$vVVq6pyMo/HWwFDiBzXNfQ$KHlKSqwelqUQYyobq8XZzRLNH8qcUlLuVSnd98FHfuo";

/// argon2 checks running at once in this process, for every listener.
fn argon2_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            Arc::new(Semaphore::new(cores))
        })
        .clone()
}

pub struct Authenticator {
    users: HashMap<String, String>,
    /// A hash that never matches, so an unknown user costs as much as a known one.
    decoy: String,
    cache_key: hmac::Key,
    cache: Mutex<HashMap<Vec<u8>, Instant>>,
}

impl Authenticator {
    pub fn new(users: impl IntoIterator<Item = (String, String)>) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
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

    fn cached(&self, tag: &[u8]) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(tag).is_some_and(|t| t.elapsed() < CACHE_TTL)
    }

    /// True when `password` is `user`'s: from the cache, or else argon2 on
    /// the blocking pool once a process-wide slot is free.
    pub async fn verify(self: &Arc<Self>, user: &str, password: String) -> bool {
        if self.cached(&self.cache_tag(user, &password)) {
            return true;
        }
        let Ok(_slot) = argon2_slots().acquire_owned().await else {
            return false;
        };
        let this = self.clone();
        let user = user.to_string();
        tokio::task::spawn_blocking(move || this.verify_blocking(&user, &password))
            .await
            .unwrap_or(false)
    }

    /// True when `password` is `user`'s. Blocking and unbounded: async code
    /// calls [`Authenticator::verify`].
    pub fn verify_blocking(&self, user: &str, password: &str) -> bool {
        let tag = self.cache_tag(user, password);
        if self.cached(&tag) {
            return true;
        }
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let ok = PasswordHash::new(hash)
            .ok()
            .and_then(|h| with_memory(|blocks| matches(&h, password.as_bytes(), blocks)))
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

/// Runs `f` with a reused argon2 work area. argon2's own verifier
/// allocates its ~19 MiB afresh each time; freed on blocking-pool threads,
/// that memory stays in glibc's per-thread arenas, so peak RSS grew with
/// the number of threads that ever checked a password (757 MB for 150
/// parallel attempts even with one check per core). At most one area per
/// concurrent check exists, and they are kept.
fn with_memory<T>(f: impl FnOnce(&mut Vec<Block>) -> T) -> T {
    static AREAS: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
    let mut area = AREAS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    let out = f(&mut area);
    AREAS.lock().unwrap_or_else(|p| p.into_inner()).push(area);
    out
}

/// Whether `password` hashes to `hash` (its algorithm, version, cost and
/// salt), compared in constant time.
fn matches(hash: &PasswordHash<'_>, password: &[u8], blocks: &mut Vec<Block>) -> Option<bool> {
    let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(hash).ok()?;
    let expected = hash.hash?;
    let mut salt = [0u8; 64];
    let salt = hash.salt?.decode_b64(&mut salt).ok()?;
    blocks.resize(params.block_count(), Block::default());
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..])
        .ok()?;
    Some(subtle::ConstantTimeEq::ct_eq(&out[..], expected.as_bytes()).into())
}

/// An argon2id PHC string with a random salt (argon2's default parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system random generator failed".to_string())?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

mod throttle;
pub use throttle::{Attempt, Limit, Throttle};

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
    fn matches_agrees_with_argon2s_verifier() {
        use argon2::PasswordVerifier;
        let h = hash_password("s3cret").unwrap();
        let parsed = PasswordHash::new(&h).unwrap();
        for pw in ["s3cret", "s3cret ", "", "S3cret"] {
            let ours = with_memory(|b| matches(&parsed, pw.as_bytes(), b));
            let theirs = Argon2::default()
                .verify_password(pw.as_bytes(), &parsed)
                .is_ok();
            assert_eq!(ours, Some(theirs), "{pw:?}");
        }
        let decoy = PasswordHash::new(DECOY_HASH).unwrap();
        assert_eq!(with_memory(|b| matches(&decoy, b"x", b)), Some(false));
    }

    #[tokio::test]
    async fn verify_uses_the_cache_and_the_pool() {
        let h = hash_password("s3cret").unwrap();
        let a = Arc::new(Authenticator::new([("app".to_string(), h)]));
        assert!(!a.verify("app", "wrong".into()).await);
        assert!(a.verify("app", "s3cret".into()).await);
        assert!(a.cached(&a.cache_tag("app", "s3cret")));
        assert!(a.verify("app", "s3cret".into()).await);
    }
}
