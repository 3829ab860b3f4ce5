//! Who may send as whom. A submission server that relays anywhere must
//! refuse every sender it was not told about: the envelope sender and every
//! From: address must be in a configured domain, and, for an authenticated
//! user, in that user's domains. Pure functions, no I/O.

use super::address;
use super::reply::Reply;
use crate::config::Config;
/// One header-end scanner for submission, `preview` and prepare.
pub use crate::prepare::header_block_len;
use crate::prepare::headers::{unfolded, HeaderBlock};
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

    /// Checks the header block of a submitted message: it must read the
    /// same to every parser (no bare CR, no NUL, 8-bit only under SMTPUTF8),
    /// hold exactly one From: field that reads without guessing, and every
    /// From: address must be `identity`'s to send as. Extracts what the
    /// store keeps.
    pub fn check_header_from(
        &self,
        identity: &Identity,
        message: &[u8],
        smtputf8: bool,
    ) -> Result<HeaderInfo, Reply> {
        let head = &message[..header_block_len(message)];
        header_bytes_ok(head, smtputf8)?;
        let block = HeaderBlock::scan(head, 0);
        fields_ok(head, &block)?;
        let mut from_fields = block.named(head, "From");
        let (Some(field), None) = (from_fields.next(), from_fields.next()) else {
            let text = match block.named(head, "From").count() {
                0 => "Message refused: it has no From: header",
                _ => "Message refused: it has more than one From: header",
            };
            return Err(Reply::new(550, "5.6.0", text));
        };
        let from = unfolded(head, &field.value);
        let mailboxes = address::mailbox_list(&from).map_err(|why| {
            Reply::new(
                550,
                "5.6.0",
                format!("Message refused: its From: header cannot be read without guessing: {why}"),
            )
        })?;
        if mailboxes.is_empty() {
            return Err(Reply::new(
                550,
                "5.6.0",
                "Message refused: its From: header holds no address",
            ));
        }
        for m in &mailboxes {
            if let Some(why) = self.refuse(identity, &m.domain) {
                return Err(Reply::new(
                    550,
                    "5.7.1",
                    format!("From: address {} refused: {why}", m.address()),
                ));
            }
        }
        let parsed = mail_parser::MessageParser::new().parse_headers(head);
        let parsed = parsed.as_ref();
        let raw = |name: &str| {
            parsed
                .and_then(|p| p.header_raw(name))
                .map(|v| v.trim().to_string())
        };
        Ok(HeaderInfo {
            domain: mailboxes[0].domain.to_ascii_lowercase(),
            from,
            to: raw("To"),
            subject: parsed.and_then(|p| p.subject()).map(str::to_string),
            message_id: parsed.and_then(|p| p.message_id()).map(str::to_string),
            tags: crate::prepare::control_headers(head).tags,
        })
    }
}

/// Every line of the header section must be a field (`name: value`, the
/// name printable ASCII without blanks) or continue one. Parsers recover
/// from other lines in different ways, and one of them may find a From:
/// field where the check here found none (found by fuzzing: a line
/// `: From: ...` is a From: field to mail-parser).
fn fields_ok(head: &[u8], block: &HeaderBlock) -> Result<(), Reply> {
    let ftext = |b: &u8| (33..=126).contains(b) && *b != b':';
    let Some(bad) = block.fields.iter().find(|f| {
        let name = &head[f.name.clone()];
        name.is_empty() || !name.iter().all(ftext)
    }) else {
        return Ok(());
    };
    let line = String::from_utf8_lossy(&head[bad.whole.clone()]);
    let line: String = line.lines().next().unwrap_or("").chars().take(60).collect();
    Err(Reply::new(
        550,
        "5.6.0",
        format!(
            "Message refused: its header section has a line that is not a header field: \"{line}\""
        ),
    ))
}

/// Refuses header bytes that parsers read differently: a CR that does not
/// end a line is a line break to some and not to others, so the From: that
/// is checked here might not be the one a receiver shows; a NUL ends the
/// text early in others. 8-bit bytes are only allowed where SMTPUTF8 says
/// the header is UTF-8 (RFC 6532); elsewhere a receiver guesses a charset.
fn header_bytes_ok(head: &[u8], smtputf8: bool) -> Result<(), Reply> {
    let refuse =
        |status, why: &str| Err(Reply::new(550, status, format!("Message refused: {why}")));
    if memchr::memchr(0, head).is_some() {
        return refuse("5.6.0", "its header section contains a NUL byte");
    }
    // Other control characters too: some readers take a form feed for a
    // blank, others for text (found by fuzz/header_checks: "From: \x0c,App
    // <a@example.com>" holds no address to mail-parser).
    let control = |b: &u8| (*b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || *b == 0x7f;
    if let Some(b) = head.iter().find(|b| control(b)) {
        return refuse(
            "5.6.0",
            &format!("its header section contains the control character 0x{b:02X}"),
        );
    }
    if memchr::memchr_iter(b'\r', head).any(|i| head.get(i + 1) != Some(&b'\n')) {
        return refuse(
            "5.6.0",
            "its header section contains a bare CR (a carriage return not followed by a line feed), which receivers read in different ways; end every line with CRLF",
        );
    }
    if head.is_ascii() {
        return Ok(());
    }
    if !smtputf8 {
        return refuse(
            "5.6.7",
            "its header section has 8-bit (non-ASCII) characters, which need SMTPUTF8 on MAIL FROM; send with SMTPUTF8 or encode them as RFC 2047 encoded words",
        );
    }
    if std::str::from_utf8(head).is_err() {
        return refuse(
            "5.6.7",
            "its header section is not valid UTF-8, as SMTPUTF8 requires",
        );
    }
    Ok(())
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
        let e = p.check_header_from(&app, msg, false).unwrap_err();
        assert!(e.text.contains("ceo@evil.test"), "{}", e.text);
        let msg = b"From: \"Evil <ceo@evil.test>\" <news@example.com>\r\nSubject: hi\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n";
        let info = p.check_header_from(&app, msg, false).unwrap();
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
            .check_header_from(&app, two, false)
            .unwrap_err()
            .text
            .contains("more than one"));
        let none = b"Subject: x\r\n\r\nx\r\n";
        assert!(p
            .check_header_from(&app, none, false)
            .unwrap_err()
            .text
            .contains("no From:"));
        let list = b"From: a@example.com, b@evil.test\r\n\r\nx\r\n";
        assert!(p.check_header_from(&app, list, false).is_err());
    }

    #[test]
    fn header_in_body_is_not_looked_at() {
        let p = policy();
        let msg = b"From: a@example.com\r\n\r\nFrom: b@evil.test\r\n";
        assert!(p.check_header_from(&Identity::Trusted, msg, false).is_ok());
    }

    fn refusal(message: &[u8], smtputf8: bool) -> Reply {
        let app = Identity::User("app".into());
        policy()
            .check_header_from(&app, message, smtputf8)
            .expect_err(&String::from_utf8_lossy(message))
    }

    #[test]
    fn bare_cr_or_nul_in_the_header_is_refused() {
        let e = refusal(
            b"X-A: x\rFrom: ceo@evil.test\r\nFrom: a@example.com\r\n\r\nbody\r\n",
            false,
        );
        assert_eq!((e.code, e.status), (550, "5.6.0"));
        assert!(e.text.contains("bare CR"), "{}", e.text);
        let e = refusal(
            b"From: a@example.com\r\nSubject: a\0b\r\n\r\nbody\r\n",
            false,
        );
        assert!(e.text.contains("NUL"), "{}", e.text);
        let e = refusal(b"From: a@example.com\r\nSubject: x\r\r\n\r\n", false);
        assert!(e.text.contains("bare CR"), "{}", e.text);
        // In the body they are the delivery side's to normalise, not refused here.
        let p = policy();
        let body = b"From: a@example.com\r\n\r\nline\r.\r\n\0\r\n";
        assert!(p.check_header_from(&Identity::Trusted, body, false).is_ok());
    }

    #[test]
    fn every_header_line_must_be_a_field() {
        // Found by fuzz/header_checks: mail-parser reads a From: in the
        // line ": From: ..." that the field scan does not.
        let e = refusal(
            b"From: lic <a@example.com>\r\n: From: ceo@evil.test\r\n\r\nx\r\n",
            false,
        );
        assert_eq!((e.code, e.status), (550, "5.6.0"));
        assert!(
            e.text
                .contains("not a header field: \": From: ceo@evil.test\""),
            "{}",
            e.text
        );
        for bad in [
            &b"From: a@example.com\r\nample.org>\r\n\r\nx\r\n"[..],
            b" X: folded first\r\nFrom: a@example.com\r\n\r\n",
            b"From a@example.com Mon Jan 1 00:00:00 2024\r\nFrom: a@example.com\r\n\r\n",
            b"From: a@example.com\r\nX Y: z\r\n\r\n",
        ] {
            let e = refusal(bad, false);
            assert!(e.text.contains("not a header field"), "{}", e.text);
        }
        // Blanks before the colon are obsolete syntax everyone reads alike.
        let ok = b"From : a@example.com\r\nX-A:\r\n folded\r\n\r\nx\r\n";
        let p = policy();
        assert!(p.check_header_from(&Identity::Trusted, ok, false).is_ok());
    }

    #[test]
    fn control_characters_in_the_header_are_refused() {
        // Found by fuzz/header_checks.
        let e = refusal(b"From: \x0c,App <a@example.com>,\r\n\r\nbody\r\n", false);
        assert_eq!((e.code, e.status), (550, "5.6.0"));
        assert!(e.text.contains("control character 0x0C"), "{}", e.text);
        let e = refusal(
            b"From: a@example.com\r\nSubject: \x1b[2J\x7f\r\n\r\n",
            false,
        );
        assert!(e.text.contains("control character 0x1B"), "{}", e.text);
        let tab = b"From:\ta@example.com\r\nSubject: a\tb\r\n\r\n\x0c body\r\n";
        assert!(policy()
            .check_header_from(&Identity::Trusted, tab, false)
            .is_ok());
    }

    #[test]
    fn an_address_as_display_name_is_refused() {
        let e = refusal(b"From: ceo@evil.test <a@example.com>\r\n\r\nx\r\n", false);
        assert_eq!((e.code, e.status), (550, "5.6.0"));
        assert!(e.text.contains("unquoted address"), "{}", e.text);
        let e = refusal(b"From: <a@example.com> ceo@evil.test\r\n\r\nx\r\n", false);
        assert!(e.text.contains("follows the <address>"), "{}", e.text);
        let ok = b"From: \"ceo@evil.test\" <a@example.com>\r\n\r\nx\r\n";
        let info = policy()
            .check_header_from(&Identity::User("app".into()), ok, false)
            .unwrap();
        assert_eq!(info.domain, "example.com");
    }

    #[test]
    fn a_quoted_local_part_is_an_address_at_its_domain() {
        let p = policy();
        let app = Identity::User("app".into());
        let msg = b"From: \"ceo@evil.test\"@example.com\r\n\r\nx\r\n";
        let info = p.check_header_from(&app, msg, false).unwrap();
        assert_eq!(info.domain, "example.com");
        assert_eq!(info.from, "\"ceo@evil.test\"@example.com");
        let e = refusal(b"From: \"a@example.com\"@evil.test\r\n\r\nx\r\n", false);
        assert!(
            e.text
                .contains("\"a@example.com\"@evil.test refused: evil.test is not a domain"),
            "{}",
            e.text
        );
    }

    #[test]
    fn eight_bit_headers_need_smtputf8() {
        let msg = "From: J\u{f6}rg <a@example.com>\r\nSubject: caf\u{e9}\r\n\r\nx\r\n";
        let e = refusal(msg.as_bytes(), false);
        assert_eq!((e.code, e.status), (550, "5.6.7"));
        assert!(e.text.contains("SMTPUTF8"), "{}", e.text);
        let info = policy()
            .check_header_from(&Identity::Trusted, msg.as_bytes(), true)
            .unwrap();
        assert_eq!(info.subject.as_deref(), Some("caf\u{e9}"));
        let e = refusal(b"From: a@example.com\r\nSubject: \xff\r\n\r\nx\r\n", true);
        assert!(e.text.contains("not valid UTF-8"), "{}", e.text);
        // 8-bit bodies are 8BITMIME's business, not this check's.
        let body = "From: a@example.com\r\n\r\ncaf\u{e9}\r\n";
        assert!(policy()
            .check_header_from(&Identity::Trusted, body.as_bytes(), false)
            .is_ok());
    }

    #[test]
    fn tags_come_from_the_one_tags_parser() {
        let msg =
            b"From: a@example.com\r\nX-Tags: a, b, a\r\nX-Tags: =?UTF-8?Q?c,_d?=\r\n\r\nx\r\n";
        let info = policy()
            .check_header_from(&Identity::Trusted, msg, false)
            .unwrap();
        assert_eq!(info.tags, ["a", "b", "c", "d"]);
        assert_eq!(info.tags, crate::prepare::control_headers(msg).tags);
    }

    #[test]
    fn mapped_v6_matches_v4_networks() {
        let p = policy();
        assert!(p.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.is_trusted("127.0.0.1".parse().unwrap()));
    }
}
