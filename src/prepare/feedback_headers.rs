//! The headers that let mail come back to the email it is about:
//! `X-Trackrelay-Ref` (the return-path token, so a complaint whose
//! provider redacted the recipient is still linked) and, when asked for,
//! `List-Unsubscribe` / `List-Unsubscribe-Post` (RFC 2369, RFC 8058).
//!
//! They go at the top of the header block, above everything the sender
//! wrote, so no byte of the original header block moves or changes. DKIM
//! signs them (src/outbound/dkim.rs), which is what makes mailbox
//! providers honour them.

use super::headers::{self, HeaderBlock};

/// What the feedback headers need to know about this copy.
#[derive(Debug, Clone, Copy)]
pub struct Feedback<'a> {
    /// The return-path token of this email and recipient
    /// (`crate::feedback::return_path::encode`).
    pub token: &'a str,
    /// `{return_path}.{domain}`, where the unsubscribe mailto goes; `None`
    /// when the domain has no return path.
    pub return_path_domain: Option<&'a str>,
    /// The domain's `list_unsubscribe`; `X-Track-Unsubscribe` overrides it.
    pub list_unsubscribe: bool,
}

/// What became of List-Unsubscribe for this copy (for the log and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListUnsubscribe {
    /// Not asked for (domain setting or `X-Track-Unsubscribe: false`).
    Off,
    /// The message carries its own, which is kept as it is.
    OwnKept,
    /// Added; `one_click` when it has a URL and List-Unsubscribe-Post.
    Added { one_click: bool },
    /// Asked for, but there is neither a tracking host nor a return path
    /// to point at (or the token is unusable).
    NoAddress,
}

pub(crate) const REF: &str = "X-Trackrelay-Ref";
const LIST_UNSUBSCRIBE: &str = "List-Unsubscribe";
const LIST_UNSUBSCRIBE_POST: &str = "List-Unsubscribe-Post";

/// The lines to insert at the top of the header block, and the outcome.
/// `base` is the tracking host's `{scheme}://{host}/`, when there is one.
pub(crate) fn lines(
    raw: &[u8],
    block: &HeaderBlock,
    feedback: Option<&Feedback>,
    base: Option<&url::Url>,
    wanted: Option<bool>,
) -> (Vec<u8>, ListUnsubscribe) {
    let Some(f) = feedback.filter(|f| usable_token(f.token)) else {
        let outcome = if wanted.unwrap_or(feedback.is_some_and(|f| f.list_unsubscribe)) {
            ListUnsubscribe::NoAddress
        } else {
            ListUnsubscribe::Off
        };
        return (Vec::new(), outcome);
    };
    let mailto_domain = f.return_path_domain.filter(|d| usable_domain(d));
    let eol = headers::line_ending(raw, block);
    let mut out = Vec::new();
    if base.is_some() || mailto_domain.is_some() {
        push_field(&mut out, REF, f.token, eol);
    }
    if !wanted.unwrap_or(f.list_unsubscribe) {
        return (out, ListUnsubscribe::Off);
    }
    if block.named(raw, LIST_UNSUBSCRIBE).next().is_some() {
        return (out, ListUnsubscribe::OwnKept);
    }
    let url = base.map(|b| format!("<{b}v1/unsubscribe/{}>", f.token));
    let mailto = mailto_domain.map(|d| format!("<mailto:unsubscribe+{}@{d}>", f.token));
    let value = match (&url, &mailto) {
        (Some(u), Some(m)) => {
            // Folded between the two URIs: the line stays short, and
            // unfolding gives back exactly `<url>, <mailto>`.
            let mut v = format!("{u},").into_bytes();
            v.extend_from_slice(eol);
            v.extend_from_slice(format!(" {m}").as_bytes());
            v
        }
        (Some(one), None) | (None, Some(one)) => one.clone().into_bytes(),
        (None, None) => return (out, ListUnsubscribe::NoAddress),
    };
    out.extend_from_slice(LIST_UNSUBSCRIBE.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(&value);
    out.extend_from_slice(eol);
    // RFC 8058 one-click needs a URL to POST to; a message that already
    // says how (its own List-Unsubscribe-Post) keeps its word.
    let one_click = url.is_some() && block.named(raw, LIST_UNSUBSCRIBE_POST).next().is_none();
    if one_click {
        push_field(
            &mut out,
            LIST_UNSUBSCRIBE_POST,
            "List-Unsubscribe=One-Click",
            eol,
        );
    }
    (out, ListUnsubscribe::Added { one_click })
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str, eol: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(eol);
}

/// Our tokens are base32; anything else would be a bug upstream, and must
/// not become header syntax.
fn usable_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn usable_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback<'a>(token: &'a str, rp: Option<&'a str>) -> Feedback<'a> {
        Feedback {
            token,
            return_path_domain: rp,
            list_unsubscribe: true,
        }
    }

    #[test]
    fn nothing_that_could_become_header_syntax_is_written() {
        let raw = b"From: a@b\r\n\r\nx";
        let block = HeaderBlock::scan(raw, 0);
        for bad in ["abc\r\nBcc: x@y", "", "a b", "tok>en"] {
            let (lines_out, outcome) = lines(
                raw,
                &block,
                Some(&feedback(bad, Some("rp.example.com"))),
                None,
                None,
            );
            assert!(lines_out.is_empty(), "{bad:?}");
            assert_eq!(outcome, ListUnsubscribe::NoAddress);
        }
        for bad in ["rp.example.com>\r\nBcc: x", "a..b", "a b.c", ""] {
            let (lines_out, outcome) =
                lines(raw, &block, Some(&feedback("tok", Some(bad))), None, None);
            assert!(lines_out.is_empty(), "{bad:?}");
            assert_eq!(outcome, ListUnsubscribe::NoAddress);
        }
    }
}
