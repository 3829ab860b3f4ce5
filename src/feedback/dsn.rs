//! RFC 3464 delivery status notifications.
//!
//! mail-parser finds the parts; the `message/delivery-status` body is read
//! here: groups of header-like fields separated by blank lines, the first
//! about the message, each further one about a recipient. Real DSNs bend
//! this (no blank line after the per-message group, odd case, folded
//! diagnostics), so a group that names a recipient is one, wherever it is.

use super::bounce::{self, truncate, Bounce};
use mail_parser::{Message, MimeHeaders, PartType};
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
    /// Absent or unknown; kept as written (bounded).
    Other(String),
}

impl Action {
    fn parse(v: &str) -> Action {
        // "failed (bad mailbox)" happens: the first word decides.
        let word = v
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("");
        match word.to_ascii_lowercase().as_str() {
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            _ => Action::Other(truncate(v)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub action: Action,
    pub status: Option<String>,
    pub diagnostic_code: Option<String>,
    /// The address alone (`rfc822;` removed).
    pub final_recipient: Option<String>,
    pub original_recipient: Option<String>,
    pub remote_mta: Option<String>,
}

impl RecipientStatus {
    /// The recipient the report is about: the original one when given.
    pub fn recipient(&self) -> Option<&str> {
        self.original_recipient
            .as_deref()
            .or(self.final_recipient.as_deref())
    }

    /// The `bounce` object for a failed or delayed recipient.
    pub fn bounce(&self, reporting_mta: Option<&str>) -> Option<Bounce> {
        let permanent = match self.action {
            Action::Failed => true,
            Action::Delayed => false,
            _ => return None,
        };
        let text = self.diagnostic_code.as_deref().unwrap_or("");
        let mut b = bounce::classify(
            self.status.as_deref(),
            text,
            reporting_mta.or(self.remote_mta.as_deref()),
            permanent,
        );
        if self.action == Action::Delayed {
            // A delay is never final, whatever code it quotes.
            b.kind = bounce::BounceType::Transient;
            b.suppress = false;
        }
        Some(b)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    pub reporting_mta: Option<String>,
    pub recipients: Vec<RecipientStatus>,
    /// The returned message or its headers, as sent back (where our tokens
    /// and headers are).
    pub returned: Option<Vec<u8>>,
    /// The human-readable first part, bounded.
    pub text: Option<String>,
}

/// The decoded body of a part of `msg` (a nested message as its raw bytes).
pub(crate) fn part_bytes<'a>(msg: &'a Message<'a>, idx: usize) -> Option<Cow<'a, [u8]>> {
    let part = msg.parts.get(idx)?;
    Some(match &part.body {
        PartType::Text(t) | PartType::Html(t) => Cow::Borrowed(t.as_bytes()),
        PartType::Binary(b) | PartType::InlineBinary(b) => Cow::Borrowed(b.as_ref()),
        PartType::Message(m) => match &m.raw_message {
            // Borrowed: the outer buffer; the part's offsets say where.
            Cow::Borrowed(_) => Cow::Borrowed(
                msg.raw_message
                    .get(part.offset_body as usize..part.offset_end as usize)
                    .unwrap_or_default(),
            ),
            Cow::Owned(v) => Cow::Borrowed(v.as_slice()),
        },
        PartType::Multipart(_) => return None,
    })
}

fn is_type(msg: &Message<'_>, idx: usize, t: &str, sub: &str) -> bool {
    msg.parts
        .get(idx)
        .and_then(|p| p.content_type())
        .is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case(t)
                && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case(sub))
        })
}

/// The first part of one of these types.
pub(crate) fn find_part(msg: &Message<'_>, types: &[(&str, &str)]) -> Option<usize> {
    (0..msg.parts.len()).find(|&i| types.iter().any(|(t, s)| is_type(msg, i, t, s)))
}

/// Finds and reads the delivery-status part; `None` if there is none.
/// Some MTAs send more than one, the first holding prose instead of fields
/// (seen in the wild): every such part is read, and their recipients and
/// first reporting MTA kept.
pub fn parse(msg: &Message<'_>) -> Option<Dsn> {
    let is_status = |i: usize| {
        is_type(msg, i, "message", "delivery-status")
            || is_type(msg, i, "message", "global-delivery-status")
    };
    let status_idx = (0..msg.parts.len()).find(|&i| is_status(i))?;
    let mut reporting_mta = None;
    let mut recipients = Vec::new();
    for i in (status_idx..msg.parts.len()).filter(|&i| is_status(i)) {
        let Some(body) = part_bytes(msg, i) else {
            continue;
        };
        let (mta, rcpts) = parse_fields(&String::from_utf8_lossy(&body));
        if reporting_mta.is_none() {
            reporting_mta = mta;
        }
        recipients.extend(rcpts);
    }
    let returned = (0..msg.parts.len())
        .find(|&i| {
            is_type(msg, i, "message", "rfc822")
                || is_type(msg, i, "text", "rfc822-headers")
                || is_type(msg, i, "message", "global")
                || is_type(msg, i, "message", "global-headers")
        })
        .and_then(|i| part_bytes(msg, i))
        .map(|b| b.into_owned());
    let text = (0..status_idx)
        .find(|&i| is_type(msg, i, "text", "plain"))
        .and_then(|i| part_bytes(msg, i))
        .map(|b| truncate(&String::from_utf8_lossy(&b)));
    Some(Dsn {
        reporting_mta,
        recipients,
        returned,
        text,
    })
}

/// Unfolded `(name, value)` groups of a delivery-status body.
pub(crate) fn groups(body: &str) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in body.lines() {
        let group = out.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !group.is_empty() {
                out.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = group.last_mut() {
                if v.len() < bounce::MAX_TEXT {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            }
        } else if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    out.retain(|g| !g.is_empty());
    out
}

/// `rfc822; a@b` → `a@b`; also drops the angle brackets some MTAs add.
fn typed_value(v: &str) -> String {
    let v = v.split_once(';').map_or(v, |(_, rest)| rest).trim();
    truncate(v.trim_start_matches('<').trim_end_matches('>'))
}

fn parse_fields(body: &str) -> (Option<String>, Vec<RecipientStatus>) {
    let mut reporting_mta = None;
    let mut recipients = Vec::new();
    for group in groups(body) {
        let get = |name: &str| {
            group
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(mta) = get("reporting-mta") {
            reporting_mta.get_or_insert_with(|| typed_value(mta));
        }
        if get("final-recipient").is_none() && get("original-recipient").is_none() {
            continue;
        }
        recipients.push(RecipientStatus {
            action: Action::parse(get("action").unwrap_or("")),
            status: get("status").map(truncate),
            diagnostic_code: get("diagnostic-code").map(typed_value),
            final_recipient: get("final-recipient").map(typed_value),
            original_recipient: get("original-recipient").map(typed_value),
            remote_mta: get("remote-mta").map(typed_value),
        });
    }
    (reporting_mta, recipients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_with_folding_and_missing_blank_line() {
        let body = "Reporting-MTA: dns; mx.example.net\r\nFinal-Recipient: rfc822; <A@example.net>\r\n\
                    Action: failed (bad)\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n  user unknown\r\n\r\n\
                    Final-Recipient: rfc822;b@example.net\r\nAction: delayed\r\nStatus: 4.4.1\r\n";
        let (mta, r) = parse_fields(body);
        assert_eq!(mta.as_deref(), Some("mx.example.net"));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].action, Action::Failed);
        assert_eq!(r[0].recipient(), Some("A@example.net"));
        assert_eq!(
            r[0].diagnostic_code.as_deref(),
            Some("550 5.1.1 user unknown")
        );
        assert_eq!(r[1].action, Action::Delayed);
        let b = r[1].bounce(None).unwrap();
        assert_eq!(b.kind, bounce::BounceType::Transient);
    }
}
