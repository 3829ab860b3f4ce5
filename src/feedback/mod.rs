//! Bounces, complaints and auto-replies that come back to the return path.
//!
//! Pure like `prepare`: bytes in, a typed [`Report`] out, no IO, and no
//! panic on any input (fuzzed: fuzz/fuzz_targets/feedback.rs). Which email
//! and recipient a report is about comes from the return-path token
//! ([`return_path`]), found with [`Report::tokens`].

pub mod arf;
pub mod bounce;
pub mod dsn;
pub mod return_path;

use crate::prepare::TokenKeys;
use bounce::{truncate, Bounce};
use mail_parser::{Message, MessageParser};

pub use arf::Complaint;
pub use dsn::{Action, Dsn, RecipientStatus};
pub use return_path::ReturnPath;

/// A bounce that is not RFC 3464: classified from its codes and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainBounce {
    pub bounce: Bounce,
    /// Addresses the text names (bounded), besides postmaster-like ones.
    pub recipients: Vec<String>,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `multipart/report; report-type=delivery-status`.
    Dsn(Dsn),
    /// `multipart/report; report-type=feedback-report`: a complaint.
    Arf(Complaint),
    /// A bounce in free text (older MTAs, some Exchange versions).
    PlainBounce(PlainBounce),
    /// Out-of-office and other automatic answers: never a bounce.
    AutoReply,
    /// Not recognised: neither a report nor a bounce.
    Unknown,
}

/// Reads a report. Order matters: DSNs themselves carry
/// `Auto-Submitted: auto-replied`, so structure wins over headers.
pub fn classify(raw: &[u8]) -> Report {
    let Some(msg) = MessageParser::new().parse(raw) else {
        return Report::Unknown;
    };
    if let Some(c) = arf::parse(&msg) {
        return Report::Arf(c);
    }
    if let Some(d) = dsn::parse(&msg) {
        if !d.recipients.is_empty() || d.returned.is_some() {
            return Report::Dsn(d);
        }
    }
    let subject = msg.subject().unwrap_or("").to_ascii_lowercase();
    let from = msg
        .from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_ascii_lowercase();
    if looks_like_bounce(&from, &subject) {
        return Report::PlainBounce(plain_bounce(&msg, &from));
    }
    if is_auto_reply(&msg, &subject) {
        return Report::AutoReply;
    }
    Report::Unknown
}

fn looks_like_bounce(from: &str, subject: &str) -> bool {
    let local = from.split('@').next().unwrap_or("");
    let daemon = matches!(local, "mailer-daemon" | "postmaster" | "mail-daemon");
    let subjects = [
        "undeliverable",
        "undelivered mail",
        "delivery status notification (failure)",
        "delivery status notification (delay)",
        "mail delivery failed",
        "delivery failure",
        "failure notice",
        "returned mail",
        "mail delivery subsystem",
        "non-delivery",
        "could not be delivered",
    ];
    daemon || subjects.iter().any(|s| subject.contains(s))
}

fn header_text<'a>(msg: &'a Message<'a>, name: &'a str) -> Option<&'a str> {
    msg.header_raw(name).map(str::trim)
}

fn is_auto_reply(msg: &Message<'_>, subject: &str) -> bool {
    let auto_submitted = header_text(msg, "Auto-Submitted")
        .is_some_and(|v| !v.to_ascii_lowercase().starts_with("no"));
    let precedence = header_text(msg, "Precedence").is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        v == "auto_reply" || v == "auto-reply"
    });
    let x_auto = ["X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"]
        .iter()
        .any(|h| header_text(msg, h).is_some());
    // Subjects alone are weak: a person may write "Out of office" too. They
    // count only for mail that says it was sent by software.
    let weak = [
        "out of office",
        "automatic reply",
        "auto:",
        "autoreply",
        "vacation",
    ]
    .iter()
    .any(|s| subject.contains(s))
        && header_text(msg, "In-Reply-To").is_some();
    auto_submitted || precedence || x_auto || weak
}

fn plain_bounce(msg: &Message<'_>, from: &str) -> PlainBounce {
    let text: String = (0..msg.parts.len())
        .filter_map(|i| {
            let p = &msg.parts[i];
            match &p.body {
                mail_parser::PartType::Text(t) => Some(t.as_ref()),
                _ => None,
            }
        })
        .take(4)
        .collect::<Vec<_>>()
        .join("\n");
    // The line quoting the receiver is the diagnostic; the whole text is
    // the fallback.
    let diag = text
        .lines()
        .find(|l| bounce::find_enhanced(l).is_some() || bounce::find_basic(l).is_some())
        .map(str::trim)
        .unwrap_or(&text);
    let b = bounce::classify(None, diag, None, false);
    // Without any code, only the text says it failed: record it as transient.
    let b = if b.status.is_none() && bounce::find_basic(diag).is_none() {
        Bounce {
            kind: bounce::BounceType::Transient,
            suppress: false,
            message: truncate(&text),
            ..b
        }
    } else {
        b
    };
    PlainBounce {
        bounce: b,
        recipients: addresses(&text, from),
    }
}

/// Addresses in free text, without postmaster-like ones and our own return
/// paths; at most 10.
fn addresses(text: &str, from: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let ok = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    for word in text.split(|c: char| !(ok(c) || c == '@')) {
        let Some((l, d)) = word.split_once('@') else {
            continue;
        };
        let l = l.trim_start_matches('.');
        let d = d.trim_end_matches('.');
        // Our own return path is in most bounces; it is not a recipient.
        let ours = l
            .rsplit_once('+')
            .is_some_and(|(_, t)| t.len() == return_path::TOKEN_LEN);
        if l.is_empty() || !d.contains('.') || d.contains('@') || ours {
            continue;
        }
        let a = format!("{l}@{d}");
        let lower = a.to_ascii_lowercase();
        let daemon = lower.starts_with("mailer-daemon@") || lower.starts_with("postmaster@");
        if !daemon && lower != from && !out.iter().any(|x| x.eq_ignore_ascii_case(&a)) {
            out.push(a);
        }
        if out.len() == 10 {
            break;
        }
    }
    out
}

impl Report {
    /// Every verified return-path token in the report: in its raw bytes
    /// (envelope-addressed `To:`, quoted headers, `Final-Recipient`) and in
    /// the decoded returned message, which may be base64.
    pub fn tokens(&self, raw: &[u8], keys: &TokenKeys) -> Vec<ReturnPath> {
        self.scan(raw, keys, return_path::find_tokens)
    }

    /// Every verified token in an `X-Trackrelay-Ref:` header, in the raw
    /// report or its decoded returned message: the fallback when a
    /// provider redacted the recipient and the return path.
    pub fn ref_tokens(&self, raw: &[u8], keys: &TokenKeys) -> Vec<ReturnPath> {
        self.scan(raw, keys, return_path::find_ref_tokens)
    }

    fn scan(
        &self,
        raw: &[u8],
        keys: &TokenKeys,
        find: fn(&TokenKeys, &[u8]) -> Vec<ReturnPath>,
    ) -> Vec<ReturnPath> {
        let mut found = find(keys, raw);
        let returned: Option<&[u8]> = match self {
            Report::Dsn(d) => d.returned.as_deref(),
            Report::Arf(c) => c.returned.as_deref(),
            _ => None,
        };
        for t in returned.map(|r| find(keys, r)).unwrap_or_default() {
            if !found.contains(&t) {
                found.push(t);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_addresses_skip_daemons_and_our_return_path() {
        let token = "a".repeat(return_path::TOKEN_LEN);
        let text = format!(
            "to <user+tag@example.org>: 550 x\nMAILER-DAEMON@mx.example.org\n\
             bounces+{token}@bounces.example.com\nuser+tag@example.org."
        );
        assert_eq!(
            addresses(&text, "postmaster@x.example"),
            ["user+tag@example.org"]
        );
    }
}
