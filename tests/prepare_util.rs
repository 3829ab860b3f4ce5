//! Shared helpers for the prepare tests (compiled as its own, empty, test
//! target too).
#![allow(dead_code)]

use trackrelay::prepare::{prepare, Prepared, Token, TokenKeys, TrackingOptions};
use uuid::Uuid;

pub const HOST: &str = "links.example.com";
pub const CLICK: &str = "https://links.example.com/v1/track/click/";
pub const OPEN: &str = "https://links.example.com/v1/track/open/";

pub fn keys() -> TokenKeys {
    TokenKeys::new([42u8; 32], vec![[1u8; 32]])
}

pub fn email_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
}

pub fn other_hosts() -> &'static [String] {
    static HOSTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    HOSTS.get_or_init(|| vec!["old-links.example.com".to_owned()])
}

pub fn options(opens: bool, clicks: bool) -> TrackingOptions<'static> {
    TrackingOptions {
        email_id: email_id(),
        rcpt_index: 0,
        scheme: "https",
        tracking_host: Some(HOST),
        other_tracking_hosts: other_hosts(),
        open_tracking: opens,
        click_tracking: clicks,
        feedback: None,
    }
}

pub fn run(raw: &[u8]) -> Prepared {
    prepare(raw, &options(true, true), &keys())
}

pub fn run_with(raw: &[u8], opens: bool, clicks: bool) -> Prepared {
    prepare(raw, &options(opens, clicks), &keys())
}

/// Replaces every click URL by the URL in its token and removes every
/// pixel; returns the text and the tokens in order.
pub fn untrack(text: &str) -> (String, Vec<Token>) {
    let keys = keys();
    let mut out = String::new();
    let mut tokens = Vec::new();
    let mut rest = text;
    loop {
        let click = rest.find(CLICK);
        let pixel = rest.find(&format!("<img src=\"{OPEN}"));
        match (click, pixel) {
            (Some(c), p) if p.is_none_or(|p| c < p) => {
                out.push_str(&rest[..c]);
                let after = &rest[c + CLICK.len()..];
                let end = after
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
                    .unwrap_or(after.len());
                let token = keys.verify(&after[..end]).expect("click token verifies");
                match &token {
                    Token::Click { url, .. } => out.push_str(url),
                    other => panic!("click URL holds {other:?}"),
                }
                tokens.push(token);
                rest = &after[end..];
            }
            (_, Some(p)) => {
                out.push_str(&rest[..p]);
                let end = rest[p..].find('>').expect("pixel tag ends") + p + 1;
                let tag = &rest[p..end];
                assert!(!tag.contains("display:none") && !tag.contains("display: none"));
                let token = &tag[10 + OPEN.len()..tag.find("\" width").unwrap()];
                assert!(
                    matches!(keys.verify(token), Some(Token::Open { .. })),
                    "open token verifies"
                );
                rest = &rest[end..];
            }
            _ => {
                out.push_str(rest);
                return (out, tokens);
            }
        }
    }
}

pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The decoded text of every text/html part, in order (via mail-parser).
pub fn html_parts(raw: &[u8]) -> Vec<String> {
    let msg = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("output parses");
    msg.parts
        .iter()
        .filter_map(|p| match &p.body {
            mail_parser::PartType::Html(h) => Some(h.to_string()),
            _ => None,
        })
        .collect()
}

/// A message with CRLF line ends made from LF-written source text.
pub fn crlf(text: &str) -> Vec<u8> {
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}
