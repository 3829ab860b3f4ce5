//! prepare on arbitrary bytes: it must never panic, what it reports must
//! match what it wrote, and its fast MIME reader must read what mail-parser
//! reads wherever it answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackrelay::prepare::{control_headers, prepare, TokenKeys, TrackingOptions};

const CLICK: &[u8] = b"://links.example.com/v1/track/click/";

fuzz_target!(|data: &[u8]| {
    // The options come from the length so that seeds stay plain messages.
    let mode = data.len() % 8;
    let keys = TokenKeys::new([7; 32], vec![[8; 32]]);
    let old = vec!["old.example.com".to_owned()];
    let opts = TrackingOptions {
        email_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        rcpt_index: mode as u32,
        scheme: if mode == 4 { "http" } else { "https" },
        tracking_host: (mode != 3).then_some("links.example.com"),
        other_tracking_hosts: &old,
        open_tracking: mode != 1,
        click_tracking: mode != 2,
        feedback: None,
    };
    // Where prepare's fast MIME reader answers, mail-parser reads the same.
    if let Err(e) = trackrelay::prepare::agrees_with_mail_parser(data) {
        panic!("{e}");
    }
    let out = prepare(data, &opts, &keys);
    let _ = control_headers(data);
    let _ = keys.verify(&String::from_utf8_lossy(data));

    let notrack = data
        .windows(12)
        .any(|w| w.eq_ignore_ascii_case(b"data-notrack"));
    if out.links_tracked == 0 && out.pixels_inserted == 0 && !notrack {
        // Nothing tracked and no opt-out removed: only control header lines
        // may have gone. (Removing data-notrack re-encodes its part, which
        // may then be longer than the sender's encoding.)
        assert!(out.message.len() <= data.len());
    }
    if mode == 3 {
        assert_eq!((out.links_tracked, out.pixels_inserted), (0, 0));
    }
    // Every click URL we wrote (in 7bit/8bit parts they are visible as-is)
    // carries a token that verifies, unless the input brought its own.
    let own_urls = memmem(data, CLICK);
    let mut rest = &out.message[..];
    while let Some(i) = memmem(rest, CLICK) {
        let tail = &rest[i + CLICK.len()..];
        let end = tail
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
            .unwrap_or(tail.len());
        let token = std::str::from_utf8(&tail[..end]).unwrap();
        // Soft line breaks of quoted-printable may cut a token; only whole
        // ones (followed by a quote, blank or '>') are checked.
        let whole = tail
            .get(end)
            .is_some_and(|b| matches!(b, b'"' | b'\'' | b' ' | b'>'));
        if whole && own_urls.is_none() {
            assert!(keys.verify(token).is_some(), "unverifiable token {token}");
        }
        rest = &tail[end..];
    }
});

fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
