//! The Bearer token, checked against `api.token_hash` (argon2id).
//!
//! The check is the SMTP AUTH one ([`crate::auth`]): argon2 on the
//! blocking pool, one check per core at most, a successful token
//! remembered under an HMAC keyed with a per-process random key (so the
//! cache holds nothing an attacker could replay or compare against),
//! argon2's own constant-time comparison, and wrong tokens throttled per
//! client network.

use crate::auth::{Authenticator, Throttle};
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The Authenticator is keyed by user name; the API has one token.
const TOKEN_USER: &str = "api";
/// Longer than any token `hash-password` users make; refused unhashed.
const MAX_TOKEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token was sent and is not the configured one.
    Invalid,
    /// Too many wrong tokens from this network lately: not checked.
    Throttled,
    /// `api.token_hash` is not set: nothing is allowed.
    NotConfigured,
}

pub struct TokenCheck {
    auth: Option<Arc<Authenticator>>,
    throttle: Arc<Throttle>,
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
            throttle: Arc::new(Throttle::api()),
        }
    }

    pub async fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Outcome {
        let Some(auth) = &self.auth else {
            return Outcome::NotConfigured;
        };
        let token = match bearer(headers) {
            Bearer::Missing => return Outcome::Missing,
            Bearer::Malformed => return Outcome::Invalid,
            Bearer::Token(t) => t,
        };
        self.verify(token, peer, auth).await
    }

    /// The dashboard's login: the same check (and throttle) for a token
    /// typed into a form.
    pub async fn check_token(&self, token: &str, peer: IpAddr) -> Outcome {
        let Some(auth) = &self.auth else {
            return Outcome::NotConfigured;
        };
        let token = token.trim();
        if token.is_empty() {
            return Outcome::Missing;
        }
        if token.len() > MAX_TOKEN || token.contains(char::is_whitespace) {
            return Outcome::Invalid;
        }
        self.verify(token.to_string(), peer, auth).await
    }

    async fn verify(&self, token: String, peer: IpAddr, auth: &Arc<Authenticator>) -> Outcome {
        let Some(attempt) = self.throttle.begin(peer, None) else {
            return Outcome::Throttled;
        };
        if auth.verify(TOKEN_USER, token).await {
            attempt.succeeded();
            Outcome::Allowed
        } else {
            attempt.failed();
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
        let hash = crate::auth::hash_password("s3cret-token").unwrap();
        let c = TokenCheck::new(Some(&hash));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            c.check(&headers("Bearer s3cret-token"), ip).await,
            Outcome::Allowed
        );
        assert_eq!(
            c.check(&headers("Bearer s3cret-token"), ip).await,
            Outcome::Allowed
        );
        assert_eq!(
            c.check(&headers("Bearer wrong"), ip).await,
            Outcome::Invalid
        );
        assert_eq!(c.check(&HeaderMap::new(), ip).await, Outcome::Missing);
        let none = TokenCheck::new(None);
        assert_eq!(
            none.check(&headers("Bearer s3cret-token"), ip).await,
            Outcome::NotConfigured
        );
    }
}
