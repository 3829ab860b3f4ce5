//! RFC 5965 abuse reports (complaints).
//!
//! mail-auth's ARF parser sits behind its `report` feature, which also
//! pulls zip and quick-xml (DMARC aggregate reports) into the build; the
//! fields needed here are plain header-like lines, read like the DSN's.

use super::bounce::truncate;
use super::dsn;
use mail_parser::Message;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// `abuse`, `fraud`, `not-spam`, `virus`, `auth-failure`, `other`
    /// (lowercase, as written; bounded).
    pub feedback_type: String,
    pub user_agent: Option<String>,
    /// May be absent or redacted (`xxxxxxx@example.net`) by the provider.
    pub original_rcpt_to: Option<String>,
    pub original_mail_from: Option<String>,
    pub reporting_mta: Option<String>,
    /// The returned message or headers (where our tokens and headers are).
    pub returned: Option<Vec<u8>>,
}

/// `None` when `msg` holds no `message/feedback-report` part with a
/// `Feedback-Type`.
pub fn parse(msg: &Message<'_>) -> Option<Complaint> {
    let idx = dsn::find_part(msg, &[("message", "feedback-report")])?;
    let body = dsn::part_bytes(msg, idx)?;
    let fields: Vec<(String, String)> = dsn::groups(&String::from_utf8_lossy(&body))
        .into_iter()
        .flatten()
        .collect();
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let strip = |s: &str| truncate(s.trim().trim_start_matches('<').trim_end_matches('>'));
    Some(Complaint {
        feedback_type: truncate(&get("feedback-type")?.to_ascii_lowercase()),
        user_agent: get("user-agent").map(truncate),
        original_rcpt_to: get("original-rcpt-to").map(strip),
        original_mail_from: get("original-mail-from").map(strip),
        reporting_mta: get("reporting-mta")
            .map(|m| strip(m.split_once(';').map_or(m, |(_, rest)| rest))),
        returned: dsn::find_part(
            msg,
            &[
                ("message", "rfc822"),
                ("text", "rfc822-headers"),
                ("message", "global"),
            ],
        )
        .and_then(|i| dsn::part_bytes(msg, i))
        .map(|b| b.into_owned()),
    })
}
