//! Dashboard sessions: kept in memory, keyed by a random id that only the
//! browser's cookie holds.
//!
//! Why stored and not stateless (an HMAC-signed cookie): logout then
//! really ends a session, and a stolen cookie dies with the process. A
//! restart logs every operator out, which for an admin page is a feature.
//! The table is bounded; when full, expired sessions go first, then the
//! oldest.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A session ends this long after login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once (each is a few hundred bytes).
const MAX_SESSIONS: usize = 1024;

pub const COOKIE: &str = "trackrelay_session";
/// The login form's own CSRF token, set by `GET /login` (double submit).
pub const LOGIN_COOKIE: &str = "trackrelay_login";

#[derive(Clone)]
pub struct Session {
    pub csrf: String,
    created: Instant,
}

#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, base64url: ids and CSRF tokens.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system random generator is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Constant-time equality of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    /// A new session: (cookie value, session).
    pub fn create(&self) -> (String, Session) {
        let id = random_token();
        let s = Session {
            csrf: random_token(),
            created: Instant::now(),
        };
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() >= MAX_SESSIONS {
            t.retain(|_, s| s.created.elapsed() < LIFETIME);
        }
        if t.len() >= MAX_SESSIONS {
            if let Some(oldest) = t
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                t.remove(&oldest);
            }
        }
        t.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session of this cookie value.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match t.get(id) {
            Some(s) if s.created.elapsed() < LIFETIME => Some(s.clone()),
            Some(_) => {
                t.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value; `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_live_until_removed() {
        let s = Sessions::default();
        let (id, sess) = s.create();
        assert_eq!(s.get(&id).unwrap().csrf, sess.csrf);
        assert!(s.get("nope").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let s = Sessions::default();
        let (first, _) = s.create();
        for _ in 0..MAX_SESSIONS {
            s.create();
        }
        assert!(s.get(&first).is_none(), "the oldest made room");
        assert_eq!(s.table.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn reads_cookies_and_writes_strict_ones() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            hyper::header::COOKIE,
            "a=1; trackrelay_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie(COOKIE, "v", 60, true);
        assert_eq!(
            c,
            "trackrelay_session=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
