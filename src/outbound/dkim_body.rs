//! The relaxed body hash (RFC 6376, 3.4.4) of an ordinary copy, in a few
//! vectorised passes.
//!
//! mail-auth canonicalises the body by stepping from blank to blank, which
//! on a 50 KB newsletter cost more than hashing it (issue 15: ~38 µs of
//! `relaxed_run_end` per copy against 28 µs of SHA-256). But the copies the
//! runner signs are nearly always in relaxed form already: CRLF line ends
//! (the copy is normalised before signing), no tab, no run of blanks, no
//! blank before a line end. For such a body relaxed canonicalisation only
//! drops the empty lines at the end, so the body is hashed as it is. Any
//! other body gets `None` here, and mail-auth canonicalises it.

use aws_lc_rs::digest::{Context, Digest, SHA256};

/// The relaxed body hash of `message` (headers, empty line, body), or
/// `None` when its header block or body is not plain enough for the fast
/// path.
pub(crate) fn relaxed_body_hash(message: &[u8]) -> Option<Digest> {
    let body = plain_body(message)?;
    if !already_relaxed(body) {
        return None;
    }
    let mut end = body.len();
    while body[..end].ends_with(b"\r\n") {
        end -= 2;
    }
    let mut ctx = Context::new(&SHA256);
    // An empty body (or one of empty lines only) hashes as nothing at all.
    if end > 0 {
        ctx.update(&body[..end]);
        ctx.update(b"\r\n");
    }
    Some(ctx.finish())
}

/// The body after the first empty line, when every header line before it
/// ends in CRLF and is a `name:` field or its folded continuation: then
/// every DKIM reader (mail-auth's included) splits the message there.
fn plain_body(message: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    loop {
        let lf = at + memchr::memchr(b'\n', &message[at..])?;
        let line = message[at..lf].strip_suffix(b"\r")?;
        if line.is_empty() {
            return Some(&message[lf + 1..]);
        }
        let folded = matches!(line[0], b' ' | b'\t');
        if (folded && at == 0) || (!folded && memchr::memchr(b':', line).is_none()) {
            return None;
        }
        at = lf + 1;
    }
}

/// True when relaxed canonicalisation would change nothing in `body` but
/// its trailing empty lines: only CRLF line ends, no tab, no run of blanks
/// and no blank at the end of a line.
fn already_relaxed(body: &[u8]) -> bool {
    if memchr::memchr(b'\t', body).is_some()
        || memchr::memmem::find(body, b"  ").is_some()
        || memchr::memmem::find(body, b" \r").is_some()
        || body.last() == Some(&b' ')
    {
        return false;
    }
    super::protocol::crlf_only(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::headers::Writable;
    use mail_auth::dkim::Canonicalization;

    fn mail_auth_hash(body: &[u8]) -> Vec<u8> {
        let mut ctx = Context::new(&SHA256);
        Canonicalization::Relaxed
            .canonical_body(body, u64::MAX)
            .write(&mut ctx);
        ctx.finish().as_ref().to_vec()
    }

    fn fast(message: &[u8]) -> Option<Vec<u8>> {
        relaxed_body_hash(message).map(|d| d.as_ref().to_vec())
    }

    #[test]
    fn plain_bodies_hash_as_mail_auth_canonicalises_them() {
        for body in [
            &b""[..],
            b"\r\n",
            b"\r\n\r\n\r\n",
            b"hi",
            b"hi\r\n",
            b"hi there\r\n\r\n\r\n",
            b" leading blank\r\n.\r\n",
            b"a\r\n\r\nb\r\n",
        ] {
            let msg = [
                &b"From: a@example.com\r\nSubject: x\r\n y\r\n\r\n"[..],
                body,
            ]
            .concat();
            assert_eq!(fast(&msg), Some(mail_auth_hash(body)), "{body:?}");
        }
    }

    #[test]
    fn anything_relaxed_form_would_change_takes_the_slow_path() {
        for body in [
            &b"a\tb\r\n"[..],
            b"a  b\r\n",
            b"a \r\n",
            b"a ",
            b"a\nb\r\n",
            b"a\rb\r\n",
            b"a\r",
            b"\nb",
        ] {
            let msg = [&b"From: a@example.com\r\n\r\n"[..], body].concat();
            assert_eq!(fast(&msg), None, "{body:?}");
        }
    }

    #[test]
    fn unusual_header_blocks_take_the_slow_path() {
        for msg in [
            &b"From: a@example.com\nSubject: x\r\n\r\nbody\r\n"[..],
            b" folded first\r\nFrom: a\r\n\r\nbody\r\n",
            b"no colon here\r\nFrom: a\r\n\r\nbody\r\n",
            b"From: a@example.com\r\n",
            b"From: a@example.com",
        ] {
            assert_eq!(fast(msg), None, "{:?}", String::from_utf8_lossy(msg));
        }
        // No header at all: the body starts after the first line.
        assert_eq!(fast(b"\r\nbody\r\n"), Some(mail_auth_hash(b"body\r\n")));
    }

    /// Random bodies over the bytes canonicalisation cares about: whenever
    /// the fast path answers, it agrees with mail-auth.
    #[test]
    fn random_bodies_agree_with_mail_auth() {
        const PIECES: &[&[u8]] = &[
            b"word",
            b" ",
            b"  ",
            b"\t",
            b"\r\n",
            b"\r\n\r\n",
            b"\r",
            b"\n",
            b".",
            b"\x0b",
            b"=20",
            b"\xc3\xa9",
        ];
        let mut random = crate::test_rng::XorShift(0x2545_f491_4f6c_dd1d);
        let mut answered = 0;
        for _ in 0..5_000 {
            let n = random.below(40);
            let mut body = Vec::new();
            for _ in 0..n {
                // Mostly words and line ends, so that many bodies are plain.
                let piece = match random.below(100) {
                    0..=49 => PIECES[0],
                    50..=69 => PIECES[1],
                    70..=89 => PIECES[4],
                    _ => *random.pick(PIECES),
                };
                body.extend_from_slice(piece);
            }
            let msg = [&b"From: a@example.com\r\n\r\n"[..], &body].concat();
            if let Some(h) = fast(&msg) {
                assert_eq!(
                    h,
                    mail_auth_hash(&body),
                    "{:?}",
                    String::from_utf8_lossy(&body)
                );
                answered += 1;
            }
        }
        assert!(
            answered > 500,
            "the fast path answered only {answered} of 5,000"
        );
    }
}
