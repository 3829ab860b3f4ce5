//! The feedback headers prepare adds: List-Unsubscribe (+ -Post, RFC 8058)
//! when asked for, `X-Trackrelay-Ref` always (where there is an address to
//! come back to), at the top of the header block, the rest byte for byte.

mod prepare_util;

use prepare_util::*;
use trackrelay::feedback::return_path;
use trackrelay::prepare::{prepare, Feedback, ListUnsubscribe, Prepared, TrackingOptions};

const RP: &str = "bounces.example.com";

fn text_message(extra_headers: &str) -> Vec<u8> {
    crlf(&format!(
        "From: a@example.com\nTo: b@example.net\n{extra_headers}Subject: t\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\nhello\n"
    ))
}

fn token(rcpt: u32) -> String {
    return_path::encode(&keys(), email_id(), rcpt)
}

/// prepare with tracking off (the headers do not depend on it), the given
/// tracking host, return-path domain and domain setting.
fn run_feedback(raw: &[u8], host: Option<&str>, rp: Option<&str>, on: bool) -> Prepared {
    let token = token(3);
    let opts = TrackingOptions {
        rcpt_index: 3,
        tracking_host: host,
        feedback: Some(Feedback {
            token: &token,
            return_path_domain: rp,
            list_unsubscribe: on,
        }),
        ..options(false, false)
    };
    prepare(raw, &opts, &keys())
}

/// What was inserted before the original bytes (which must follow intact).
fn inserted<'a>(out: &'a [u8], original: &[u8]) -> &'a str {
    assert!(
        out.ends_with(original),
        "the original message follows unchanged:\n{}",
        String::from_utf8_lossy(out)
    );
    std::str::from_utf8(&out[..out.len() - original.len()]).unwrap()
}

#[test]
fn both_uris_and_one_click_at_the_top_the_rest_untouched() {
    let raw = text_message("");
    let out = run_feedback(&raw, Some(HOST), Some(RP), true);
    assert_eq!(
        out.list_unsubscribe,
        ListUnsubscribe::Added { one_click: true }
    );
    let t = token(3);
    assert_eq!(
        inserted(&out.message, &raw),
        format!(
            "X-Trackrelay-Ref: {t}\r\n\
             List-Unsubscribe: <https://{HOST}/v1/unsubscribe/{t}>,\r\n <mailto:unsubscribe+{t}@{RP}>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        )
    );
    // The token names this email and recipient.
    let v = return_path::verify(&keys(), &t).unwrap();
    assert_eq!((v.email_id, v.rcpt_index), (email_id(), 3));
    // A MIME parser reads the folded field as the two URIs.
    let parsed = mail_parser::MessageParser::default()
        .parse(&out.message)
        .unwrap();
    let value = parsed
        .header_raw("List-Unsubscribe")
        .unwrap()
        .replace("\r\n", "");
    assert_eq!(
        value.trim(),
        format!("<https://{HOST}/v1/unsubscribe/{t}>, <mailto:unsubscribe+{t}@{RP}>")
    );
}

#[test]
fn without_a_tracking_host_only_the_mailto_and_no_one_click() {
    let raw = text_message("");
    let out = run_feedback(&raw, None, Some(RP), true);
    assert_eq!(
        out.list_unsubscribe,
        ListUnsubscribe::Added { one_click: false }
    );
    let t = token(3);
    assert_eq!(
        inserted(&out.message, &raw),
        format!("X-Trackrelay-Ref: {t}\r\nList-Unsubscribe: <mailto:unsubscribe+{t}@{RP}>\r\n")
    );
}

#[test]
fn without_a_return_path_only_the_url() {
    let raw = text_message("");
    let out = run_feedback(&raw, Some(HOST), None, true);
    let t = token(3);
    assert_eq!(
        inserted(&out.message, &raw),
        format!(
            "X-Trackrelay-Ref: {t}\r\nList-Unsubscribe: <https://{HOST}/v1/unsubscribe/{t}>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        )
    );
}

#[test]
fn with_neither_nothing_is_added_and_the_outcome_says_why() {
    let raw = text_message("");
    let out = run_feedback(&raw, None, None, true);
    assert_eq!(out.message, raw);
    assert_eq!(out.list_unsubscribe, ListUnsubscribe::NoAddress);
    // No feedback options at all, but the message asks for it.
    let asked = text_message("X-Track-Unsubscribe: true\n");
    let out = prepare(&asked, &options(false, false), &keys());
    assert_eq!(out.message, raw, "the control header is removed");
    assert_eq!(out.list_unsubscribe, ListUnsubscribe::NoAddress);
    // A tracking host the URL parser refuses counts as none.
    let out = run_feedback(&raw, Some("bad host"), None, true);
    assert_eq!(out.message, raw);
    assert_eq!(out.list_unsubscribe, ListUnsubscribe::NoAddress);
}

#[test]
fn off_by_domain_still_carries_the_reference() {
    let raw = text_message("");
    let out = run_feedback(&raw, Some(HOST), Some(RP), false);
    assert_eq!(out.list_unsubscribe, ListUnsubscribe::Off);
    assert_eq!(
        inserted(&out.message, &raw),
        format!("X-Trackrelay-Ref: {}\r\n", token(3))
    );
}

#[test]
fn the_control_header_overrides_the_domain_both_ways_and_is_removed() {
    let plain = text_message("");
    let off = text_message("X-Track-Unsubscribe: false\n");
    let out = run_feedback(&off, Some(HOST), Some(RP), true);
    assert_eq!(out.list_unsubscribe, ListUnsubscribe::Off);
    assert_eq!(
        inserted(&out.message, &plain),
        format!("X-Trackrelay-Ref: {}\r\n", token(3))
    );
    let on = text_message("x-track-unsubscribe:  YES\n");
    let out = run_feedback(&on, Some(HOST), Some(RP), false);
    assert_eq!(
        out.list_unsubscribe,
        ListUnsubscribe::Added { one_click: true }
    );
    assert!(inserted(&out.message, &plain).contains("List-Unsubscribe: <https://"));
    // An unreadable value leaves the domain's setting in force.
    let junk = text_message("X-Track-Unsubscribe: perhaps\n");
    let out = run_feedback(&junk, Some(HOST), Some(RP), true);
    assert_eq!(
        out.list_unsubscribe,
        ListUnsubscribe::Added { one_click: true }
    );
    assert!(out.message.ends_with(&plain));
}

#[test]
fn a_message_with_its_own_list_unsubscribe_keeps_it_as_it_is() {
    let raw = text_message("List-Unsubscribe: <https://lists.example.com/u/1>\n");
    let out = run_feedback(&raw, Some(HOST), Some(RP), true);
    assert_eq!(out.list_unsubscribe, ListUnsubscribe::OwnKept);
    assert_eq!(
        inserted(&out.message, &raw),
        format!("X-Trackrelay-Ref: {}\r\n", token(3))
    );
    // Its own -Post without a List-Unsubscribe: ours is added, not a second -Post.
    let raw = text_message("List-Unsubscribe-Post: List-Unsubscribe=One-Click\n");
    let out = run_feedback(&raw, Some(HOST), None, true);
    assert_eq!(
        out.list_unsubscribe,
        ListUnsubscribe::Added { one_click: false }
    );
    let text = String::from_utf8(out.message).unwrap();
    assert_eq!(count(&text, "List-Unsubscribe-Post:"), 1);
}

#[test]
fn a_submitted_reference_is_removed_forged_or_not() {
    let plain = text_message("");
    let forged = text_message("X-Trackrelay-Ref: aaaaaaaaaaaaaaaa\n x-folded\n");
    let out = run_feedback(&forged, Some(HOST), Some(RP), false);
    assert_eq!(
        inserted(&out.message, &plain),
        format!("X-Trackrelay-Ref: {}\r\n", token(3))
    );
    // Removed even when this copy gets no reference of its own.
    let out = prepare(&forged, &options(false, false), &keys());
    assert_eq!(out.message, plain);
    // First field of the block: the removal and the insertion meet at 0.
    let first = crlf("X-TrackRelay-Ref: x\nFrom: a@example.com\n\nbody\n");
    let out = run_feedback(&first, Some(HOST), None, false);
    assert_eq!(
        String::from_utf8(out.message).unwrap(),
        format!(
            "X-Trackrelay-Ref: {}\r\nFrom: a@example.com\r\n\r\nbody\r\n",
            token(3)
        )
    );
}

#[test]
fn bare_lf_messages_get_bare_lf_lines() {
    let raw = b"From: a@example.com\nSubject: s\n\nbody\n".to_vec();
    let out = run_feedback(&raw, None, Some(RP), true);
    let t = token(3);
    assert_eq!(
        inserted(&out.message, &raw),
        format!("X-Trackrelay-Ref: {t}\nList-Unsubscribe: <mailto:unsubscribe+{t}@{RP}>\n")
    );
}

#[test]
fn with_tracking_the_links_are_rewritten_and_the_headers_added() {
    let raw = crlf(
        "From: a@example.com\nSubject: t\nMIME-Version: 1.0\n\
         Content-Type: text/html; charset=utf-8\n\n<a href=\"https://example.org/\">x</a>\n",
    );
    let t = token(0);
    let opts = TrackingOptions {
        feedback: Some(Feedback {
            token: &t,
            return_path_domain: Some(RP),
            list_unsubscribe: true,
        }),
        ..options(false, true)
    };
    let out = prepare(&raw, &opts, &keys());
    assert_eq!(out.links_tracked, 1);
    let text = String::from_utf8(out.message).unwrap();
    assert!(text.starts_with(&format!(
        "X-Trackrelay-Ref: {t}\r\nList-Unsubscribe: <https://"
    )));
    let (untracked, _) = untrack(&text);
    assert!(untracked.contains("<a href=\"https://example.org/\">x</a>"));
}

#[test]
fn the_scheme_is_the_tracking_scheme() {
    let raw = text_message("");
    let t = token(3);
    let opts = TrackingOptions {
        rcpt_index: 3,
        scheme: "http",
        feedback: Some(Feedback {
            token: &t,
            return_path_domain: None,
            list_unsubscribe: true,
        }),
        ..options(false, false)
    };
    let out = prepare(&raw, &opts, &keys());
    assert!(inserted(&out.message, &raw).contains(&format!(
        "List-Unsubscribe: <http://{HOST}/v1/unsubscribe/{t}>\r\n"
    )));
}
