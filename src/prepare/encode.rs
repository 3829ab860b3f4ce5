//! Content-Transfer-Encoding: decode a part, and encode it back the same way.
//!
//! Quoted-printable is done here rather than with the `quoted_printable`
//! crate because a rewritten part must decode to exactly the bytes we meant:
//! that crate's decoder drops 8-bit bytes that real mail carries inside QP,
//! and its encoder only writes CRLF, while a message stored with bare LF line
//! ends must keep them. Base64 uses the `base64` crate.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use std::borrow::Cow;

/// Lines a QP or base64 encoder writes, not counting the line ending.
const LINE: usize = 76;
/// RFC 5321's limit for a line of a message, without the CRLF.
pub(crate) const SMTP_LINE_LIMIT: usize = 998;

/// Mail in the wild pads oddly or not at all; the content is what matters.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cte {
    /// 7bit, 8bit, binary or none: the body is the content.
    Identity,
    QuotedPrintable,
    Base64,
}

impl Cte {
    /// `None` for an encoding we do not know (x-uuencode, typos...): such a
    /// part is left as it is.
    pub fn from_header(value: Option<&str>) -> Option<Cte> {
        let Some(v) = value.map(str::trim) else {
            return Some(Cte::Identity);
        };
        if v.is_empty()
            || ["7bit", "8bit", "binary"]
                .iter()
                .any(|k| v.eq_ignore_ascii_case(k))
        {
            Some(Cte::Identity)
        } else if v.eq_ignore_ascii_case("quoted-printable") {
            Some(Cte::QuotedPrintable)
        } else if v.eq_ignore_ascii_case("base64") {
            Some(Cte::Base64)
        } else {
            None
        }
    }
}

/// The line ending a body uses: its own first one, else the message's.
pub(crate) fn body_line_ending(body: &[u8], fallback: &'static [u8]) -> &'static [u8] {
    match memchr::memchr(b'\n', body) {
        Some(i) if i > 0 && body[i - 1] == b'\r' => b"\r\n",
        Some(_) => b"\n",
        None => fallback,
    }
}

pub(crate) fn longest_line(data: &[u8]) -> usize {
    let mut longest = 0;
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', data) {
        let mut end = nl;
        if end > start && data[end - 1] == b'\r' {
            end -= 1;
        }
        longest = longest.max(end - start);
        start = nl + 1;
    }
    longest.max(data.len() - start)
}

/// Decodes a body. Base64 bodies keep their trailing blank lines apart
/// (returned second) since they are not content.
pub(crate) fn decode(cte: Cte, body: &[u8]) -> Result<(Cow<'_, [u8]>, usize), String> {
    match cte {
        Cte::Identity => Ok((Cow::Borrowed(body), body.len())),
        Cte::QuotedPrintable => Ok((Cow::Owned(qp_decode(body)), body.len())),
        Cte::Base64 => {
            let content_len = body.trim_ascii_end().len();
            let compact: Vec<u8> = body[..content_len]
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            LENIENT_BASE64
                .decode(&compact)
                .map(|d| (Cow::Owned(d), content_len))
                .map_err(|e| format!("base64 body does not decode ({e})"))
        }
    }
}

/// Encodes `data` for a body whose lines end with `eol`.
pub(crate) fn encode(cte: Cte, data: Vec<u8>, eol: &[u8]) -> Vec<u8> {
    match cte {
        Cte::Identity => data,
        Cte::QuotedPrintable => qp_encode(&data, eol),
        Cte::Base64 => {
            let text = STANDARD.encode(&data);
            let mut out = Vec::with_capacity(text.len() + text.len() / LINE * eol.len() + 2);
            for (i, line) in text.as_bytes().chunks(LINE).enumerate() {
                if i > 0 {
                    out.extend_from_slice(eol);
                }
                out.extend_from_slice(line);
            }
            out
        }
    }
}

/// RFC 2045 6.7 decoding. Hard line breaks keep the bytes they were written
/// with; a `=` not followed by two hex digits is kept as it is (robust
/// decoding). RFC 2045 lets a decoder drop blanks at the end of a line as
/// transport padding, but many readers keep them and senders do write them:
/// keeping them means the part reads the same everywhere after we re-encode
/// them as `=20`. Blanks after a soft-break `=` are padding.
pub(crate) fn qp_decode(input: &[u8]) -> Vec<u8> {
    qp_decode_mapped(input).0
}

/// One hard line of a quoted-printable body: where its encoding ends in the
/// body, where what it decodes to ends in the decoded text (both counted
/// from the start, line ending included), and whether its encoding can be
/// sent again as it is: no blank before a line end (readers disagree on
/// those), no physical line over SMTP's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QpLine {
    enc_end: usize,
    dec_end: usize,
    reusable: bool,
}

/// [`qp_decode`], and the hard lines for [`qp_reencode`].
pub(crate) fn qp_decode_mapped(input: &[u8]) -> (Vec<u8>, Vec<QpLine>) {
    let mut out = Vec::with_capacity(input.len());
    let mut lines = Vec::new();
    let mut reusable = true;
    let mut pos = 0;
    while pos < input.len() {
        let next = memchr::memchr(b'\n', &input[pos..]).map_or(input.len(), |i| pos + i + 1);
        let mut end = next;
        if end > pos && input[end - 1] == b'\n' {
            end -= 1;
            if end > pos && input[end - 1] == b'\r' {
                end -= 1;
            }
        }
        let eol = &input[end..next];
        let line = &input[pos..end];
        reusable &= end - pos <= SMTP_LINE_LIMIT && !line.ends_with(b" ") && !line.ends_with(b"\t");
        match line.trim_ascii_end().strip_suffix(b"=") {
            Some(soft) => qp_decode_segment(soft, &mut out),
            None => {
                qp_decode_segment(line, &mut out);
                out.extend_from_slice(eol);
                lines.push(QpLine {
                    enc_end: next,
                    dec_end: out.len(),
                    reusable,
                });
                reusable = true;
            }
        }
        pos = next;
    }
    if lines.last().map_or(0, |l| l.enc_end) < input.len() {
        // Ends in a soft break: no hard line of its own to reuse.
        lines.push(QpLine {
            enc_end: input.len(),
            dec_end: out.len(),
            reusable: false,
        });
    }
    (out, lines)
}

/// Encodes `new`, the rewritten form of `old` (which `original`, mapped by
/// `lines`, decodes to), giving each hard line that did not change its
/// original encoding back, and encoding only the changed ones as
/// [`qp_encode`] would. A tracked newsletter changes a few dozen lines of
/// hundreds; encoding all of them again was most of this stage (issue 15).
/// It also keeps the sender's own encoding of every line we did not touch.
/// Lines are compared in order; once a change adds or removes a line break,
/// the rest no longer match and is encoded, which is still exact.
pub(crate) fn qp_reencode(
    original: &[u8],
    lines: &[QpLine],
    old: &[u8],
    new: &[u8],
    eol: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(original.len() + new.len() / 8);
    let mut old_line = lines.iter();
    let (mut enc_start, mut dec_start) = (0, 0);
    let mut at = 0;
    // Built once: a finder per line cost more than the search on short lines.
    let line_end = memchr::memmem::Finder::new(eol);
    while at < new.len() {
        let (end, next) = match line_end.find(&new[at..]) {
            Some(i) => (at + i, at + i + eol.len()),
            None => (new.len(), new.len()),
        };
        let same = old_line.next().is_some_and(|l| {
            let same = l.reusable && old[dec_start..l.dec_end] == new[at..next];
            let enc = enc_start..l.enc_end;
            (enc_start, dec_start) = (l.enc_end, l.dec_end);
            if same {
                out.extend_from_slice(&original[enc]);
            }
            same
        });
        if !same {
            qp_encode_line(&new[at..end], eol, &mut out);
            out.extend_from_slice(&new[end..next]);
        }
        at = next;
    }
    out
}

fn qp_decode_segment(mut seg: &[u8], out: &mut Vec<u8>) {
    while let Some(i) = memchr::memchr(b'=', seg) {
        out.extend_from_slice(&seg[..i]);
        match (seg.get(i + 1).and_then(hex), seg.get(i + 2).and_then(hex)) {
            (Some(h), Some(l)) => {
                out.push(h << 4 | l);
                seg = &seg[i + 3..];
            }
            _ => {
                out.push(b'=');
                seg = &seg[i + 1..];
            }
        }
    }
    out.extend_from_slice(seg);
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

/// Encodes so that `qp_decode` gives `data` back exactly: `eol` in the data
/// becomes a hard line break, every other CR or LF is escaped, and lines
/// are at most 76 characters including the soft-break `=`.
pub(crate) fn qp_encode(data: &[u8], eol: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 16);
    let crlf = eol == b"\r\n";
    let mut line_start = 0;
    let mut search = 0;
    while let Some(i) = memchr::memchr(b'\n', &data[search..]).map(|i| search + i) {
        // With CRLF line ends a bare LF is content, not a line break.
        let line_end = if crlf {
            if i == line_start || data[i - 1] != b'\r' {
                search = i + 1;
                continue;
            }
            i - 1
        } else {
            i
        };
        qp_encode_line(&data[line_start..line_end], eol, &mut out);
        out.extend_from_slice(eol);
        line_start = i + 1;
        search = line_start;
    }
    qp_encode_line(&data[line_start..], eol, &mut out);
    out
}

/// Bytes written as themselves (blanks too, except at the end of a line).
const LITERAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = b'!';
    while b <= b'~' {
        t[b as usize] = b != b'=';
        b += 1;
    }
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t
};

fn qp_encode_line(line: &[u8], eol: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let n = line.len();
    let mut col = 0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && LITERAL[usize::from(line[j])] {
            j += 1;
        }
        if j == n && matches!(line[n - 1], b' ' | b'\t') {
            j -= 1; // a blank ending a line would be taken for padding
        }
        // Copy the literal run, breaking softly so that every output line
        // keeps room for its `=`; only a line's final byte may use column 76.
        while i < j {
            let room = LINE - 1 - col;
            let take = if j == n && j - i == room + 1 {
                j - i
            } else {
                (j - i).min(room)
            };
            if take == 0 {
                out.push(b'=');
                out.extend_from_slice(eol);
                col = 0;
                continue;
            }
            out.extend_from_slice(&line[i..i + take]);
            col += take;
            i += take;
        }
        if i < n {
            let b = line[i];
            let limit = if i + 1 == n { LINE } else { LINE - 1 };
            if col + 3 > limit {
                out.push(b'=');
                out.extend_from_slice(eol);
                col = 0;
            }
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            col += 3;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_ok(encoded: &[u8]) -> bool {
        encoded
            .split(|&b| b == b'\n')
            .all(|l| l.strip_suffix(b"\r").unwrap_or(l).len() <= LINE)
    }

    #[test]
    fn qp_round_trips_awkward_bytes_in_both_line_ending_styles() {
        let samples: Vec<Vec<u8>> = vec![
            b"plain text\r\nsecond line \r\n\tlast\t".to_vec(),
            b"bare\nlf and bare\rcr, =equals= and \x00\xff bytes".to_vec(),
            vec![b'a'; 300],
            [b"x".repeat(74), b" ".to_vec(), b"=".repeat(40)].concat(),
            b"ends with crlf\r\n".to_vec(),
            b"".to_vec(),
            b"\r\n\r\n".to_vec(),
        ];
        for data in &samples {
            for eol in [&b"\r\n"[..], b"\n"] {
                let enc = qp_encode(data, eol);
                assert!(lines_ok(&enc), "{}", String::from_utf8_lossy(&enc));
                assert_eq!(&qp_decode(&enc), data, "eol {eol:?}");
            }
        }
    }

    /// Random bytes from what trips quoted-printable up, from a fixed seed.
    struct Awkward(crate::test_rng::XorShift);

    impl Awkward {
        const ALPHABET: &'static [u8] = b"  \t\r\n=a.b\xff\x00~";

        fn new(seed: u64) -> Self {
            Awkward(crate::test_rng::XorShift(seed))
        }

        fn next(&mut self) -> u64 {
            self.0.next()
        }

        fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = self.0.below(max_len);
            (0..len).map(|_| *self.0.pick(Self::ALPHABET)).collect()
        }
    }

    #[test]
    fn qp_round_trips_random_data() {
        let mut random = Awkward::new(0x1234_5678_9abc_def1);
        for _ in 0..3000 {
            let data = random.bytes(400);
            for eol in [&b"\r\n"[..], b"\n"] {
                let enc = qp_encode(&data, eol);
                assert!(lines_ok(&enc), "{}", String::from_utf8_lossy(&enc));
                assert_eq!(qp_decode(&enc), data);
            }
        }
    }

    #[test]
    fn qp_decode_handles_soft_breaks_padding_and_junk() {
        assert_eq!(qp_decode(b"a= \r\nb=3D=3d  \r\nc"), b"ab==  \r\nc");
        assert_eq!(qp_decode(b"x=\ny\n"), b"xy\n");
        assert_eq!(qp_decode(b"=G1 =\xe9"), b"=G1 =\xe9");
        assert_eq!(qp_decode(b"end="), b"end");
    }

    #[test]
    fn base64_wraps_at_76_and_keeps_trailing_blank_lines_apart() {
        let data = vec![0xAB; 200];
        let enc = encode(Cte::Base64, data.clone(), b"\r\n");
        assert!(enc.split(|&b| b == b'\n').all(|l| l.len() <= 77));
        let body = [enc.clone(), b"\r\n\r\n".to_vec()].concat();
        let (dec, content_len) = decode(Cte::Base64, &body).unwrap();
        assert_eq!(dec, data);
        assert_eq!(content_len, enc.len());
        assert!(decode(Cte::Base64, b"not*base64").is_err());
    }

    #[test]
    fn reencoding_keeps_untouched_lines_and_decodes_to_the_new_text() {
        let original: &[u8] = b"<p>one line of text</p>\r\n\
<a href=3D\"https://example.org/x\">a link that is long enough to need a so=\r\n\
ft break</a>\r\n\
<p>tail with trailing blank </p> \r\n\
last";
        let (old, lines) = qp_decode_mapped(original);
        assert_eq!(old, qp_decode(original));
        assert_eq!(lines.len(), 4);
        let new = String::from_utf8(old.clone())
            .unwrap()
            .replace("https://example.org/x", "https://t.example.com/c/TOKEN");
        let out = qp_reencode(original, &lines, &old, new.as_bytes(), b"\r\n");
        assert_eq!(qp_decode(&out), new.as_bytes());
        // The first line is the sender's bytes; the changed one is ours.
        assert!(out
            .starts_with(b"<p>one line of text</p>\r\n<a href=3D\"https://t.example.com/c/TOKEN"));
        // A line with a blank before its end is encoded again, not reused.
        assert!(
            !out.windows(6).any(|w| w == b"</p> \r"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(lines_ok(&out));
    }

    #[test]
    fn reencoding_is_exact_for_random_bodies_and_edits() {
        let mut random = Awkward::new(0x0bad_cafe_1234_5678);
        for _ in 0..3000 {
            let data = random.bytes(300);
            for eol in [&b"\r\n"[..], b"\n"] {
                // Bodies as a sender's encoder made them, or hand-written.
                let original = if random.next().is_multiple_of(2) {
                    qp_encode(&data, eol)
                } else {
                    data.clone()
                };
                let (old, lines) = qp_decode_mapped(&original);
                assert_eq!(old, qp_decode(&original));
                // An edit: replace a random range with random bytes.
                let mut new = old.clone();
                if !new.is_empty() {
                    let at = random.0.below(new.len());
                    let cut = random.0.below(8).min(new.len() - at);
                    new.splice(at..at + cut, random.bytes(12));
                }
                let out = qp_reencode(&original, &lines, &old, &new, eol);
                assert_eq!(qp_decode(&out), new, "original {original:?}");
                // No edit: every line decodes as it was.
                let same = qp_reencode(&original, &lines, &old, &old, eol);
                assert_eq!(qp_decode(&same), old);
            }
        }
    }

    #[test]
    fn longest_line_ignores_line_endings() {
        assert_eq!(longest_line(b"ab\r\nabcd\nx"), 4);
        assert_eq!(longest_line(b""), 0);
    }
}
