//! The header checks at submission on arbitrary messages: never a panic,
//! every refusal a well-formed 5xx, and what is accepted must read the same
//! to a lenient parser (mail-parser) as to the strict check.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use trackrelay::submission::policy::{header_block_len, Identity, Policy};
use trackrelay::submission::reply::Reply;

fuzz_target!(|data: &[u8]| {
    static POLICY: OnceLock<std::sync::Arc<Policy>> = OnceLock::new();
    let policy = POLICY.get_or_init(common::policy);
    // Options come from the length so that seeds stay plain messages.
    let smtputf8 = data.len() % 2 == 1;
    let identity = if data.len() % 4 < 2 {
        Identity::User("app".into())
    } else {
        Identity::Trusted
    };
    let head = &data[..header_block_len(data)];
    match policy.check_header_from(&identity, data, smtputf8) {
        Err(r) => {
            assert!((500..600).contains(&r.code), "{r:?}");
            let mut out = Vec::new();
            Reply::new(r.code, r.status, r.text).write_to(&mut out);
            common::assert_replies_well_formed(&out);
        }
        Ok(info) => {
            assert!(!head.contains(&0), "NUL accepted");
            for (i, &b) in head.iter().enumerate() {
                assert!(
                    b != b'\r' || head.get(i + 1) == Some(&b'\n'),
                    "bare CR accepted"
                );
            }
            assert!(
                smtputf8 || head.is_ascii(),
                "8-bit accepted without SMTPUTF8"
            );
            let allowed: &[&str] = match identity {
                Identity::User(_) => &["example.com"],
                Identity::Trusted => &["example.com", "example.org"],
            };
            assert!(allowed.contains(&info.domain.as_str()), "{info:?}");
            // Where nothing needs quoting or decoding, a lenient parser must
            // find the same sending domains: else a receiver might too.
            let simple = !info
                .from
                .contains(|c: char| matches!(c, '"' | '(' | '\\' | '[') || !c.is_ascii())
                && !info.from.contains("=?");
            if simple {
                let parsed = mail_parser::MessageParser::new().parse_headers(head);
                let from = parsed.as_ref().and_then(|m| m.from());
                for addr in from.iter().flat_map(|a| a.iter()) {
                    let address = addr.address().unwrap_or_default();
                    // Blanks around the @ (obsolete syntax) are not a disagreement.
                    let domain = address
                        .rsplit_once('@')
                        .map(|(_, d)| d.trim().to_ascii_lowercase());
                    assert!(
                        domain.as_deref().is_some_and(|d| allowed.contains(&d)),
                        "accepted From: {:?} reads as {address:?} to mail-parser",
                        info.from
                    );
                }
            }
        }
    }
});
