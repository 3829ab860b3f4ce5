//! The `bounce` object of `email.bounced`, from a status code and text.
//!
//! Mapping (RFC 3463 enhanced codes; the class decides `type`):
//!
//! | code                    | sub_type            | suppress (if 5.x.x) |
//! |-------------------------|---------------------|---------------------|
//! | x.1.x except x.1.7/8    | `no_email`          | yes                 |
//! | x.2.2                   | `mailbox_full`      | no                  |
//! | x.2.3, x.3.4            | `message_too_large` | no                  |
//! | x.6.x, x.7.x            | `content_rejected`  | no (policy, reputation) |
//! | anything else           | `general`           | no                  |
//!
//! x.1.7 and x.1.8 are about *our* sender address, so they say nothing
//! about the recipient. When there is no enhanced code, or only x.0.0, the
//! text decides ("user unknown", "mailbox full"...), because that is all
//! older MTAs give. 4.x.x is never suppressed: it may pass.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceType {
    Permanent,
    Transient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubType {
    General,
    NoEmail,
    MailboxFull,
    MessageTooLarge,
    ContentRejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bounce {
    #[serde(rename = "type")]
    pub kind: BounceType,
    pub sub_type: SubType,
    /// The enhanced status code when one was found (`5.1.1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The receiver's diagnostic, or the bounce text.
    pub message: String,
    pub reporting_mta: Option<String>,
    /// Whether the address should go on the suppression list.
    #[serde(skip)]
    pub suppress: bool,
}

impl Bounce {
    /// The `bounce` object of an `email.bounced` event, the same for a
    /// refusal during delivery (`asynchronous` false) and a bounce report
    /// received later: `type, sub_type, status, message, reporting_mta,
    /// timestamp, async`.
    pub fn event_json(&self, at: i64, asynchronous: bool) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("timestamp".into(), crate::time::rfc3339(at).into());
            m.insert("async".into(), asynchronous.into());
        }
        v
    }
}

/// Diagnostic texts are bounded: they come from strangers and land in events.
pub const MAX_TEXT: usize = 1000;

pub(crate) fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Parsed `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl std::fmt::Display for Enhanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The first `[245].d{1,3}.d{1,3}` in `text` standing as its own word.
pub fn find_enhanced(text: &str) -> Option<Enhanced> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.');
        if word_start && matches!(b[i], b'2' | b'4' | b'5') && b.get(i + 1) == Some(&b'.') {
            if let Some((code, end)) = parse_enhanced_at(b, i) {
                let word_end = b.get(end).is_none_or(|c| {
                    !(c.is_ascii_alphanumeric()
                        || *c == b'.' && b.get(end + 1).is_some_and(u8::is_ascii_digit))
                });
                if word_end {
                    return Some(code);
                }
            }
        }
        i += 1;
    }
    None
}

fn parse_enhanced_at(b: &[u8], start: usize) -> Option<(Enhanced, usize)> {
    let class = b[start] - b'0';
    let mut pos = start + 2;
    let mut parts = [0u16; 2];
    for (n, part) in parts.iter_mut().enumerate() {
        let digits = b[pos..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 3 {
            return None;
        }
        *part = std::str::from_utf8(&b[pos..pos + digits])
            .ok()?
            .parse()
            .ok()?;
        pos += digits;
        if n == 0 {
            if b.get(pos) != Some(&b'.') {
                return None;
            }
            pos += 1;
        }
    }
    Some((Enhanced(class, parts[0], parts[1]), pos))
}

/// The first basic reply code `4xx`/`5xx` followed by a space, `-` or `:`
/// (Yahoo writes `554:`).
pub fn find_basic(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(3)).find_map(|i| {
        let start = i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.';
        let w = &b[i..i + 4];
        (start
            && matches!(w[0], b'4' | b'5')
            && w[1].is_ascii_digit()
            && w[2].is_ascii_digit()
            && matches!(w[3], b' ' | b'-' | b':'))
        .then(|| {
            u16::from(w[0] - b'0') * 100 + u16::from(w[1] - b'0') * 10 + u16::from(w[2] - b'0')
        })
    })
}

fn from_text(text: &str) -> Option<SubType> {
    let t = text.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if any(&[
        "mailbox full",
        "mailbox is full",
        "over quota",
        "quota exceeded",
        "exceeded storage",
        "insufficient storage",
    ]) {
        Some(SubType::MailboxFull)
    } else if any(&["too large", "too big", "size limit", "message size exceeds"]) {
        Some(SubType::MessageTooLarge)
    } else if any(&[
        "user unknown",
        "unknown user",
        "no such user",
        "does not exist",
        "doesn't exist",
        "doesn't have a",
        "no mailbox",
        "mailbox not found",
        "mailbox unavailable",
        "recipient not found",
        "recipientnotfound",
        "invalid recipient",
        "address rejected: user",
        "unknown recipient",
        "no such recipient",
    ]) {
        Some(SubType::NoEmail)
    } else if any(&[
        "spam",
        "blocked",
        "blacklist",
        "blocklist",
        "policy",
        "rejected for content",
    ]) {
        Some(SubType::ContentRejected)
    } else {
        None
    }
}

fn from_enhanced(c: Enhanced) -> Option<SubType> {
    match (c.1, c.2) {
        (0, 0) => None,
        (1, 7 | 8) => Some(SubType::General),
        (1, _) => Some(SubType::NoEmail),
        (2, 2) => Some(SubType::MailboxFull),
        (2, 3) | (3, 4) => Some(SubType::MessageTooLarge),
        (6 | 7, _) => Some(SubType::ContentRejected),
        _ => Some(SubType::General),
    }
}

/// Classifies a failure from its status (DSN `Status`, may be absent) and
/// text (diagnostic or bounce body). `permanent_default` is what to assume
/// when no code says otherwise.
pub fn classify(
    status: Option<&str>,
    text: &str,
    reporting_mta: Option<&str>,
    permanent_default: bool,
) -> Bounce {
    let code = status
        .and_then(find_enhanced)
        .or_else(|| find_enhanced(text))
        .filter(|c| c.0 != 2);
    let permanent = match (code, find_basic(text)) {
        (Some(c), _) => c.0 == 5,
        (None, Some(b)) => b >= 500,
        (None, None) => permanent_default,
    };
    let sub_type = code
        .and_then(from_enhanced)
        .or_else(|| from_text(text))
        .unwrap_or(SubType::General);
    // A 5.0.0 with "user unknown" text is as good as a 5.1.1; a 5.7.1 with
    // "user unknown" in it is still policy, so the code wins when specific.
    let suppress = permanent && sub_type == SubType::NoEmail;
    Bounce {
        kind: if permanent {
            BounceType::Permanent
        } else {
            BounceType::Transient
        },
        sub_type,
        status: code.map(|c| c.to_string()),
        message: truncate(text),
        reporting_mta: reporting_mta.map(truncate),
        suppress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_codes_as_words_only() {
        assert_eq!(
            find_enhanced("smtp; 550 5.1.1 <a@b>"),
            Some(Enhanced(5, 1, 1))
        );
        assert_eq!(find_enhanced("5.1.10 RESOLVER"), Some(Enhanced(5, 1, 10)));
        assert_eq!(find_enhanced("version 15.2.1 and 10.5.1.1"), None);
        assert_eq!(find_enhanced("5.1"), None);
        assert_eq!(find_basic("said: 550-5.1.1 The"), Some(550));
        assert_eq!(find_basic("1550 x"), None);
        assert_eq!(find_basic("554: delivery error"), Some(554));
    }

    #[test]
    fn mapping_table() {
        let c = |s: &str| classify(Some(s), "", None, true);
        assert_eq!(
            (c("5.1.1").sub_type, c("5.1.1").suppress),
            (SubType::NoEmail, true)
        );
        assert_eq!(
            (c("4.1.1").kind, c("4.1.1").suppress),
            (BounceType::Transient, false)
        );
        assert_eq!(
            (c("5.1.8").sub_type, c("5.1.8").suppress),
            (SubType::General, false)
        );
        assert_eq!(c("5.2.2").sub_type, SubType::MailboxFull);
        assert!(!c("5.2.2").suppress);
        assert_eq!(c("5.3.4").sub_type, SubType::MessageTooLarge);
        assert_eq!(c("5.2.3").sub_type, SubType::MessageTooLarge);
        assert_eq!(
            (c("5.7.1").sub_type, c("5.7.1").suppress),
            (SubType::ContentRejected, false)
        );
        assert_eq!(c("5.4.4").sub_type, SubType::General);
        let t = classify(
            Some("5.0.0"),
            "554 delivery error: dd This user doesn't have a yahoo.com account",
            None,
            true,
        );
        assert_eq!((t.sub_type, t.suppress), (SubType::NoEmail, true));
        let none = classify(None, "something odd happened", None, false);
        assert_eq!(
            (none.kind, none.sub_type, none.suppress),
            (BounceType::Transient, SubType::General, false)
        );
    }
}
