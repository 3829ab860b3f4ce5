//! The report parser over the shared corpus (../shared/corpus, beside the
//! repo in CI) and over hand-written fixtures of the common bounce formats.

use std::path::Path;
use trackrelay::feedback::bounce::{BounceType, SubType};
use trackrelay::feedback::{classify, return_path, Action, Report, ReturnPath};
use trackrelay::prepare::TokenKeys;
use uuid::Uuid;

fn keys() -> TokenKeys {
    TokenKeys::new([7; 32], vec![])
}

const EMAIL: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0042);

/// A fixture with `TOKEN` replaced by a real token (recipient 3) and
/// `FORGED` by one made with a key we do not have.
fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/feedback")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let token = return_path::encode(&keys(), EMAIL, 3);
    let forged = return_path::encode(&TokenKeys::new([1; 32], vec![]), EMAIL, 3);
    text.replace("TOKEN", &token)
        .replace("FORGED", &forged)
        .into_bytes()
}

fn ours() -> Vec<ReturnPath> {
    vec![ReturnPath {
        email_id: EMAIL,
        rcpt_index: 3,
    }]
}

#[test]
fn corpus_reports_parse_and_name_their_recipients() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/eml");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no corpus at {}: skipped", dir.display());
        return;
    };
    let mut checked = 0;
    let mut dsns = 0;
    for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let raw = std::fs::read(&p).unwrap();
        let lower = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        let dsn = lower.contains("delivery-status");
        let arf = lower.contains("feedback-report");
        if !dsn && !arf {
            continue;
        }
        checked += 1;
        let names_rcpt = lower.contains("final-recipient:") || lower.contains("original-rcpt-to:");
        match classify(&raw) {
            Report::Dsn(d) => {
                assert!(!d.recipients.is_empty() || !names_rcpt, "{}", p.display());
                // Every Final-Recipient the file names is among those parsed.
                let named: Vec<String> = lower
                    .lines()
                    .filter_map(|l| l.strip_prefix("final-recipient:"))
                    .map(|v| {
                        let v = v.split_once(';').map_or(v, |(_, a)| a).trim();
                        v.trim_start_matches('<').trim_end_matches('>').to_owned()
                    })
                    .collect();
                for a in &named {
                    assert!(
                        d.recipients.iter().any(|r| r
                            .final_recipient
                            .as_deref()
                            .is_some_and(|f| f.eq_ignore_ascii_case(a))),
                        "{}: {a} not in {:?}",
                        p.display(),
                        d.recipients
                    );
                }
                dsns += usize::from(!named.is_empty());
            }
            Report::Arf(c) => {
                if lower.contains("original-rcpt-to:") {
                    assert!(c.original_rcpt_to.is_some(), "{}", p.display());
                }
            }
            other => assert!(!names_rcpt, "{}: {other:?}", p.display()),
        }
    }
    assert!(checked > 0, "the corpus has delivery-status samples");
    assert!(dsns > 0, "at least one corpus DSN names its recipients");
}

#[test]
fn postfix_user_unknown_is_a_hard_bounce() {
    let raw = fixture("postfix_user_unknown.eml");
    let r = classify(&raw);
    let Report::Dsn(d) = &r else { panic!("{r:?}") };
    assert_eq!(d.reporting_mta.as_deref(), Some("mx1.example.net"));
    let rc = &d.recipients[0];
    assert_eq!(rc.action, Action::Failed);
    assert_eq!(rc.recipient(), Some("nobody@example.net"));
    assert_eq!(rc.remote_mta.as_deref(), Some("mx2.example.net"));
    let b = rc.bounce(d.reporting_mta.as_deref()).unwrap();
    assert_eq!(
        (b.kind, b.sub_type, b.suppress),
        (BounceType::Permanent, SubType::NoEmail, true)
    );
    assert!(b.message.contains("User unknown"), "{}", b.message);
    assert_eq!(r.tokens(&raw, &keys()), ours());
}

#[test]
fn office365_recipient_not_found() {
    let raw = fixture("office365_not_found.eml");
    let r = classify(&raw);
    let Report::Dsn(d) = &r else { panic!("{r:?}") };
    let b = d.recipients[0].bounce(d.reporting_mta.as_deref()).unwrap();
    assert_eq!(b.status.as_deref(), Some("5.1.10"));
    assert_eq!((b.sub_type, b.suppress), (SubType::NoEmail, true));
    assert_eq!(
        b.reporting_mta.as_deref(),
        Some("MWHPR01MB1234.namprd01.prod.outlook.com")
    );
    assert_eq!(r.tokens(&raw, &keys()), ours());
}

#[test]
fn gmail_policy_block_is_not_suppressed() {
    let raw = fixture("gmail_policy.eml");
    let r = classify(&raw);
    let Report::Dsn(d) = &r else { panic!("{r:?}") };
    let b = d.recipients[0].bounce(None).unwrap();
    assert_eq!(
        (b.kind, b.sub_type, b.suppress),
        (BounceType::Permanent, SubType::ContentRejected, false)
    );
    assert_eq!(d.recipients[0].recipient(), Some("spammed@gmail.com"));
    assert_eq!(r.tokens(&raw, &keys()), ours());
}

#[test]
fn exim_plain_text_mailbox_full() {
    let raw = fixture("exim_mailbox_full.eml");
    let r = classify(&raw);
    let Report::PlainBounce(p) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(
        (p.bounce.kind, p.bounce.sub_type, p.bounce.suppress),
        (BounceType::Permanent, SubType::MailboxFull, false)
    );
    assert!(
        p.recipients.iter().any(|a| a == "full@example.org"),
        "{:?}",
        p.recipients
    );
    assert_eq!(r.tokens(&raw, &keys()), ours());
}

#[test]
fn yahoo_plain_text_without_enhanced_code() {
    let raw = fixture("yahoo_plain.eml");
    let r = classify(&raw);
    let Report::PlainBounce(p) = &r else {
        panic!("{r:?}")
    };
    // "554: delivery error: dd" has only a basic code: permanent, but
    // nothing says the address is bad, so it is not suppressed.
    assert_eq!(
        (p.bounce.kind, p.bounce.sub_type, p.bounce.suppress),
        (BounceType::Permanent, SubType::General, false)
    );
    assert!(
        p.bounce.message.contains("delivery error"),
        "{}",
        p.bounce.message
    );
    assert!(
        p.recipients.iter().any(|a| a == "gone@yahoo.com"),
        "{:?}",
        p.recipients
    );
    assert_eq!(r.tokens(&raw, &keys()), ours());
}

#[test]
fn auto_replies_are_not_bounces() {
    assert_eq!(classify(&fixture("auto_reply.eml")), Report::AutoReply);
    assert_eq!(classify(&fixture("vacation.eml")), Report::AutoReply);
}

#[test]
fn forged_token_links_to_nothing() {
    let raw = fixture("forged_token.eml");
    let r = classify(&raw);
    assert!(matches!(r, Report::Dsn(_)), "{r:?}");
    assert!(r.tokens(&raw, &keys()).is_empty());
}

#[test]
fn arf_complaint_and_redacted_one_are_linked() {
    let raw = fixture("arf_complaint.eml");
    let r = classify(&raw);
    let Report::Arf(c) = &r else { panic!("{r:?}") };
    assert_eq!(c.feedback_type, "abuse");
    assert_eq!(c.user_agent.as_deref(), Some("SomeFBL/1.0"));
    assert_eq!(c.original_rcpt_to.as_deref(), Some("angry@example.net"));
    assert_eq!(c.reporting_mta.as_deref(), Some("fbl.example.net"));
    assert_eq!(r.tokens(&raw, &keys()), ours());

    let raw = fixture("arf_redacted.eml");
    let r = classify(&raw);
    let Report::Arf(c) = &r else { panic!("{r:?}") };
    assert_eq!(c.original_rcpt_to.as_deref(), Some("xxxxxxxx@example.net"));
    // The returned Return-Path still carries the token.
    assert_eq!(r.tokens(&raw, &keys()), ours());
}

#[test]
fn garbage_is_unknown() {
    assert_eq!(classify(b""), Report::Unknown);
    assert_eq!(classify(b"\xff\xfe\x00garbage"), Report::Unknown);
    assert_eq!(
        classify(b"From: a@b.example\r\nSubject: hi\r\n\r\nhello"),
        Report::Unknown
    );
}
