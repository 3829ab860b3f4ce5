//! The Bearer token, checked against `api.token_hash` (argon2id).
//!
//! The check is the SMTP AUTH one ([`Authenticator`]): argon2 on the
//! blocking pool, a successful token remembered under an HMAC keyed with a
//! per-process random key (so the cache holds nothing an attacker could
//! replay or compare against), and argon2's own constant-time comparison.

use crate::submission::auth::Authenticator;
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The Authenticator is keyed by user name; the API has one token.
const TOKEN_USER: &str = "api";
/// Longer than any token `hash-password` users make; refused unhashed.
const MAX_TOKEN: usize = 4096;
/// argon2 checks running at once: each takes a core for tens of ms, so a
/// flood of wrong tokens is held to this many cores.
const CONCURRENT_CHECKS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token was sent and is not the configured one.
    Invalid,
    /// `api.token_hash` is not set: nothing is allowed.
    NotConfigured,
}

pub struct TokenCheck {
    auth: Option<Arc<Authenticator>>,
    slots: Semaphore,
}

impl TokenCheck {
    /// `token_hash` must already be a valid PHC string (see `Api::new`).
    pub fn new(token_hash: Option<&str>) -> Self {
        TokenCheck {
            auth: token_hash.map(|h| {
                Arc::new(Authenticator::new([(
                    TOKEN_USER.to_string(),
                    h.to_string(),
                )]))
            }),
            slots: Semaphore::new(CONCURRENT_CHECKS),
        }
    }

    pub async fn check(&self, headers: &HeaderMap) -> Outcome {
        let Some(auth) = &self.auth else {
            return Outcome::NotConfigured;
        };
        let token = match bearer(headers) {
            Bearer::Missing => return Outcome::Missing,
            Bearer::Malformed => return Outcome::Invalid,
            Bearer::Token(t) => t,
        };
        let Ok(_slot) = self.slots.acquire().await else {
            return Outcome::Invalid;
        };
        let auth = auth.clone();
        let ok = tokio::task::spawn_blocking(move || auth.verify_blocking(TOKEN_USER, &token))
            .await
            .unwrap_or(false);
        if ok {
            Outcome::Allowed
        } else {
            Outcome::Invalid
        }
    }
}

enum Bearer {
    Missing,
    Malformed,
    Token(String),
}

/// `Authorization: Bearer <token>` (RFC 6750 2.1; the scheme name is
/// case-insensitive, RFC 9110 11.1).
fn bearer(headers: &HeaderMap) -> Bearer {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Bearer::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    // Another scheme (Basic ...) carries no bearer token at all.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Bearer::Missing;
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN || token.contains(char::is_whitespace) {
        return Bearer::Malformed;
    }
    Bearer::Token(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn parses_the_bearer_header() {
        assert!(matches!(bearer(&HeaderMap::new()), Bearer::Missing));
        assert!(matches!(bearer(&headers("Bearer abc")), Bearer::Token(t) if t == "abc"));
        assert!(matches!(bearer(&headers("bearer   abc ")), Bearer::Token(t) if t == "abc"));
        for bad in ["Bearer", "Bearer ", "Bearer a b"] {
            assert!(matches!(bearer(&headers(bad)), Bearer::Malformed), "{bad}");
        }
        for other in ["Basic YWJj", "abc"] {
            assert!(
                matches!(bearer(&headers(other)), Bearer::Missing),
                "{other}"
            );
        }
    }

    #[tokio::test]
    async fn checks_the_token() {
        let hash = crate::submission::auth::hash_password("s3cret-token").unwrap();
        let c = TokenCheck::new(Some(&hash));
        assert_eq!(
            c.check(&headers("Bearer s3cret-token")).await,
            Outcome::Allowed
        );
        assert_eq!(
            c.check(&headers("Bearer s3cret-token")).await,
            Outcome::Allowed
        );
        assert_eq!(c.check(&headers("Bearer wrong")).await, Outcome::Invalid);
        assert_eq!(c.check(&HeaderMap::new()).await, Outcome::Missing);
        let none = TokenCheck::new(None);
        assert_eq!(
            none.check(&headers("Bearer s3cret-token")).await,
            Outcome::NotConfigured
        );
    }
}
