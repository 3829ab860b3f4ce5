//! Who may send as whom. A submission server that relays anywhere must
//! refuse every sender it was not told about: the envelope sender and every
//! From: address must be in a configured domain, and, for an authenticated
//! user, in that user's domains. Pure functions, no I/O.

use super::reply::Reply;
use crate::config::Config;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// Who is submitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authenticated with AUTH as this configured user.
    User(String),
    /// Connected from `submission.trusted_networks`, without AUTH.
    Trusted,
}

impl Identity {
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Identity::User(n) => Some(n),
            Identity::Trusted => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    domains: Vec<String>,
    users: HashMap<String, Vec<String>>,
    trusted: Vec<IpNet>,
    plaintext_auth: Vec<IpNet>,
}

/// What the store keeps from the header block of an accepted message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderInfo {
    /// The sending domain: the From: address's.
    pub domain: String,
    pub from: String,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    /// From `X-Tags: a, b`, kept on the email and its events.
    pub tags: Vec<String>,
}

fn domain_of(address: &str) -> Option<&str> {
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some(domain)
}

impl Policy {
    pub fn from_config(c: &Config) -> Self {
        Policy {
            domains: c
                .domains
                .iter()
                .map(|d| d.name.to_ascii_lowercase())
                .collect(),
            users: c
                .submission
                .users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        u.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                    )
                })
                .collect(),
            trusted: c.submission.trusted_networks.clone(),
            plaintext_auth: c.submission.plaintext_auth_networks.clone(),
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip.to_canonical()))
    }

    pub fn plaintext_auth_allowed(&self, ip: IpAddr) -> bool {
        self.plaintext_auth
            .iter()
            .any(|n| n.contains(&ip.to_canonical()))
    }

    /// Why `identity` may not send as `domain`, if it may not.
    fn refuse(&self, identity: &Identity, domain: &str) -> Option<String> {
        let domain = domain.to_ascii_lowercase();
        if !self.domains.contains(&domain) {
            return Some(format!("{domain} is not a domain this relay sends for"));
        }
        match identity {
            Identity::Trusted => None,
            Identity::User(name) => {
                let ok = self
                    .users
                    .get(name)
                    .is_some_and(|doms| doms.contains(&domain));
                (!ok).then(|| format!("user {name} may not send as {domain}"))
            }
        }
    }

    pub fn check_mail_from(&self, identity: &Identity, address: &str) -> Result<(), Reply> {
        let Some(domain) = domain_of(address) else {
            return Err(Reply::new(
                550,
                "5.7.1",
                format!("Sender <{address}> refused: a submitted message needs a sender address in one of your domains"),
            ));
        };
        match self.refuse(identity, domain) {
            None => Ok(()),
            Some(why) => Err(Reply::new(
                550,
                "5.7.1",
                format!("Sender <{address}> refused: {why}"),
            )),
        }
    }

    /// Checks every From: address of the header block (exactly one From:
    /// header, whatever its display names say) and extracts what the store
    /// keeps.
    pub fn check_header_from(
        &self,
        identity: &Identity,
        message: &[u8],
    ) -> Result<HeaderInfo, Reply> {
        let header_end = header_block_len(message);
        let parsed = mail_parser::MessageParser::new().parse_headers(&message[..header_end]);
        let Some(parsed) = parsed else {
            // mail-parser finds nothing in an empty header block.
            return Err(Reply::new(
                550,
                "5.6.0",
                "Message refused: it has no From: header",
            ));
        };
        let from_headers: Vec<_> = parsed
            .headers()
            .iter()
            .filter(|h| h.name.as_str().eq_ignore_ascii_case("From"))
            .collect();
        if from_headers.is_empty() {
            return Err(Reply::new(
                550,
                "5.6.0",
                "Message refused: it has no From: header",
            ));
        }
        if from_headers.len() > 1 {
            return Err(Reply::new(
                550,
                "5.6.0",
                "Message refused: it has more than one From: header",
            ));
        }
        let addresses: Vec<String> = parsed
            .from()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.address().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if addresses.is_empty() {
            return Err(Reply::new(
                550,
                "5.6.0",
                "Message refused: its From: header holds no address",
            ));
        }
        let mut first_domain = None;
        for addr in &addresses {
            let Some(domain) = domain_of(addr) else {
                return Err(Reply::new(
                    550,
                    "5.7.1",
                    format!("From: address {addr} refused: it has no domain"),
                ));
            };
            if let Some(why) = self.refuse(identity, domain) {
                return Err(Reply::new(
                    550,
                    "5.7.1",
                    format!("From: address {addr} refused: {why}"),
                ));
            }
            first_domain.get_or_insert_with(|| domain.to_ascii_lowercase());
        }
        let raw = |name: &str| parsed.header_raw(name).map(|v| v.trim().to_string());
        Ok(HeaderInfo {
            domain: first_domain.unwrap_or_default(),
            from: raw("From").unwrap_or_default(),
            to: raw("To"),
            subject: parsed.subject().map(str::to_string),
            message_id: parsed.message_id().map(str::to_string),
            tags: raw("X-Tags").map(|v| parse_tags(&v)).unwrap_or_default(),
        })
    }
}

/// `a, b ,c` → `["a", "b", "c"]`; empty items dropped.
pub fn parse_tags(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the header block including the blank line, or the whole input.
pub fn header_block_len(message: &[u8]) -> usize {
    let mut i = 0;
    while i < message.len() {
        let line_end = match memchr_lf(&message[i..]) {
            Some(p) => i + p + 1,
            None => return message.len(),
        };
        let line = &message[i..line_end];
        if line == b"\r\n" || line == b"\n" {
            return line_end;
        }
        i = line_end;
    }
    message.len()
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            domains: vec!["example.com".into(), "example.org".into()],
            users: [("app".to_string(), vec!["example.com".to_string()])].into(),
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
            plaintext_auth: vec![],
        }
    }

    #[test]
    fn mail_from_needs_a_users_domain() {
        let p = policy();
        let app = Identity::User("app".into());
        assert!(p.check_mail_from(&app, "a@example.com").is_ok());
        assert!(p.check_mail_from(&app, "a@EXAMPLE.com").is_ok());
        let e = p.check_mail_from(&app, "a@example.org").unwrap_err();
        assert_eq!((e.code, e.status), (550, "5.7.1"));
        assert!(
            e.text.contains("user app may not send as example.org"),
            "{}",
            e.text
        );
        let e = p.check_mail_from(&app, "a@evil.test").unwrap_err();
        assert!(e.text.contains("not a domain this relay sends for"));
        assert!(p.check_mail_from(&app, "").is_err());
        assert!(p
            .check_mail_from(&Identity::Trusted, "a@example.org")
            .is_ok());
        assert!(p
            .check_mail_from(&Identity::Trusted, "a@evil.test")
            .is_err());
    }

    #[test]
    fn header_from_is_checked_by_address_not_display_name() {
        let p = policy();
        let app = Identity::User("app".into());
        let msg = b"From: \"a@example.com\" <ceo@evil.test>\r\nSubject: hi\r\n\r\nbody\r\n";
        let e = p.check_header_from(&app, msg).unwrap_err();
        assert!(e.text.contains("ceo@evil.test"), "{}", e.text);
        let msg = b"From: \"Evil <ceo@evil.test>\" <news@example.com>\r\nSubject: hi\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n";
        let info = p.check_header_from(&app, msg).unwrap();
        assert_eq!(info.domain, "example.com");
        assert_eq!(info.subject.as_deref(), Some("hi"));
        assert_eq!(info.message_id.as_deref(), Some("x@y"));
    }

    #[test]
    fn exactly_one_from_header() {
        let p = policy();
        let app = Identity::User("app".into());
        let two = b"From: a@example.com\r\nFrom: b@evil.test\r\n\r\nx\r\n";
        assert!(p
            .check_header_from(&app, two)
            .unwrap_err()
            .text
            .contains("more than one"));
        let none = b"Subject: x\r\n\r\nx\r\n";
        assert!(p
            .check_header_from(&app, none)
            .unwrap_err()
            .text
            .contains("no From:"));
        let list = b"From: a@example.com, b@evil.test\r\n\r\nx\r\n";
        assert!(p.check_header_from(&app, list).is_err());
    }

    #[test]
    fn header_in_body_is_not_looked_at() {
        let p = policy();
        let msg = b"From: a@example.com\r\n\r\nFrom: b@evil.test\r\n";
        assert!(p.check_header_from(&Identity::Trusted, msg).is_ok());
    }

    #[test]
    fn mapped_v6_matches_v4_networks() {
        let p = policy();
        assert!(p.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.is_trusted("127.0.0.1".parse().unwrap()));
    }
}
