//! The MIME structure of a message: where each part's headers, body and end
//! are, and what it holds.
//!
//! Ordinary mail is read here in a few vectorised passes (a header scan per
//! part and a boundary search per multipart). Anything unusual (a header
//! line without a colon, parameter continuations, comments, a boundary that
//! is not alone on its line, a missing close delimiter, message/* parts)
//! goes to mail-parser instead, which copes with the whole zoo but reads
//! every body byte by byte: 55 µs of the ~1 ms a 50 KB newsletter cost in
//! bench/relay.sh (issue 15). A differential test holds the two readers to
//! the same answer wherever this one answers.

use super::headers::{self, HeaderBlock};
use mail_parser::{MessageParser, MessagePart, MimeHeaders, PartType};

/// Deeper multipart nesting than this is left to mail-parser.
const MAX_DEPTH: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Multipart,
    Html,
    /// Any other text/* (and text/html that mail-parser found malformed).
    Text,
    /// message/rfc822 or message/global.
    Message,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub kind: Kind,
    /// Offsets into the raw message: the part's first header byte, its
    /// first body byte, and the end of its body (before the line ending
    /// that precedes the next boundary).
    pub header: usize,
    pub body: usize,
    pub end: usize,
    /// `type/subtype`, lowercased; empty when the part has no Content-Type.
    pub ctype: String,
    pub charset: Option<String>,
    pub attachment: bool,
}

/// The parts in order (a multipart before its children), read by the fast
/// reader when it can and by mail-parser otherwise; `None` when neither can
/// make a message of it.
pub(crate) fn parts(raw: &[u8]) -> Option<Vec<Part>> {
    fast(raw).or_else(|| with_mail_parser(raw))
}

/// The fast reader alone: `None` for anything it leaves to mail-parser.
pub(crate) fn fast(raw: &[u8]) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    read_part(raw, 0, raw.len(), 0, &mut parts)?;
    Some(parts)
}

/// Where the fast reader answers, mail-parser must give the same parts (a
/// multipart's own end aside: mail-parser places it after the epilogue, and
/// nothing uses it). The differential tests and the `prepare` fuzz target
/// hold the two readers to this.
pub fn agrees_with_mail_parser(raw: &[u8]) -> Result<(), String> {
    let Some(ours) = fast(raw) else {
        return Ok(());
    };
    let strip = |mut parts: Vec<Part>| {
        for p in &mut parts {
            if p.kind == Kind::Multipart {
                p.end = 0;
            }
        }
        parts
    };
    let (ours, theirs) = (strip(ours), with_mail_parser(raw).map(strip));
    if Some(&ours) == theirs.as_ref() {
        Ok(())
    } else {
        Err(format!("fast reader {ours:?}, mail-parser {theirs:?}"))
    }
}

/// mail-parser's reading, told to skip Content-Transfer-Encoding so that it
/// does not decode bodies we decode ourselves (byte-exactly) or never need.
pub(crate) fn with_mail_parser(raw: &[u8]) -> Option<Vec<Part>> {
    let msg = MessageParser::new()
        .with_mime_headers()
        .ignore_header(mail_parser::HeaderName::ContentTransferEncoding)
        .parse(raw)?;
    Some(msg.parts.iter().map(from_mail_parser).collect())
}

fn from_mail_parser(part: &MessagePart) -> Part {
    let kind = match &part.body {
        PartType::Html(_) => Kind::Html,
        PartType::Text(_) => Kind::Text,
        PartType::Message(_) => Kind::Message,
        PartType::Multipart(_) => Kind::Multipart,
        _ => Kind::Other,
    };
    let ct = part.content_type();
    Part {
        kind,
        header: part.offset_header as usize,
        body: part.offset_body as usize,
        end: part.offset_end as usize,
        ctype: ct.map_or_else(String::new, |c| {
            format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
        }),
        charset: ct.and_then(|c| c.attribute("charset")).map(str::to_owned),
        attachment: part
            .content_disposition()
            .is_some_and(|d| d.is_attachment()),
    }
}

/// Reads the part that starts at `start` and runs to `limit` (the start of
/// the next boundary line, or the end of the message) and, for a multipart,
/// its children.
fn read_part(
    raw: &[u8],
    start: usize,
    limit: usize,
    depth: u32,
    out: &mut Vec<Part>,
) -> Option<()> {
    let block = HeaderBlock::scan(&raw[..limit], start);
    plain_header_block(raw, start, &block)?;
    let ct = match single(raw, &block, "Content-Type")? {
        Some(v) => Some(ContentType::parse(&v)?),
        None => None,
    };
    let attachment = match single(raw, &block, "Content-Disposition")? {
        Some(v) => disposition_is_attachment(&v)?,
        None => false,
    };
    let (ctype, subtype) = ct.as_ref().map_or(("text", "plain"), |c| {
        (c.ctype.as_str(), c.subtype.as_str())
    });
    let kind = match (ctype, subtype) {
        ("multipart", "digest") | ("message", _) => return None,
        ("multipart", _) => Kind::Multipart,
        ("text", "html") => Kind::Html,
        ("text", _) => Kind::Text,
        _ => Kind::Other,
    };
    let (ctype, charset, boundary) = match ct {
        Some(c) => (format!("{}/{}", c.ctype, c.subtype), c.charset, c.boundary),
        None => (String::new(), None, None),
    };
    let end = if limit == raw.len() {
        limit
    } else {
        body_end(raw, block.body, limit)
    };
    out.push(Part {
        kind,
        header: start,
        body: block.body,
        end,
        ctype,
        charset,
        attachment,
    });
    if kind != Kind::Multipart {
        return Some(());
    }
    if depth >= MAX_DEPTH {
        return None;
    }
    for (child, child_limit) in children(raw, block.body, limit, boundary?.as_bytes())? {
        read_part(raw, child, child_limit, depth + 1, out)?;
    }
    Some(())
}

/// Where each child of the multipart body `raw[body..limit]` starts, and
/// where the boundary line after it starts. Every `--boundary` in the body
/// must begin a line of its own (blanks may follow), and the last must
/// close; mail-parser also takes one in mid-line, so such mail goes to it.
fn children(raw: &[u8], body: usize, limit: usize, boundary: &[u8]) -> Option<Vec<(usize, usize)>> {
    if boundary.is_empty() || boundary.len() > 200 {
        return None;
    }
    let delim = [&b"--"[..], boundary].concat();
    let mut children: Vec<(usize, usize)> = Vec::new();
    let mut closed = false;
    let finder = memchr::memmem::FinderBuilder::new().build_forward_with_ranker(MailBytes, &delim);
    for at in finder.find_iter(&raw[body..limit]).map(|i| body + i) {
        if closed || at == 0 || raw[at - 1] != b'\n' {
            return None;
        }
        if let Some(last) = children.last_mut() {
            last.1 = at;
        }
        let mut next = at + delim.len();
        if raw[next..limit].starts_with(b"--") {
            closed = true;
            next += 2;
        }
        next += raw[next..limit]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        let rest = &raw[next..limit];
        let line_end = if rest.starts_with(b"\r\n") {
            next + 2
        } else if rest.starts_with(b"\n") {
            next + 1
        } else if rest.is_empty() && closed {
            next
        } else {
            return None;
        };
        if !closed {
            children.push((line_end, limit));
        }
    }
    (closed && !children.is_empty()).then_some(children)
}

/// memchr scans for the needle's two rarest bytes by its own table, which
/// counts `=`, `_` and `-` as rare; in a quoted-printable body `=3D` and a
/// closing `=` come every few dozen bytes, and boundaries often start
/// `--=_`, so its scan stopped all the time. This rough table of mail
/// bodies (quoted-printable HTML above all) leads it to the boundary's
/// letters and digits instead.
struct MailBytes;

impl memchr::arch::all::packedpair::HeuristicFrequencyRank for MailBytes {
    fn rank(&self, byte: u8) -> u8 {
        match byte {
            b'=' | b'-' | b'_' | b'.' | b' ' | b'\r' | b'\n' | b'3' | b'D' => 255,
            b'0' | b'2' | b'A' | b'C' | b'F' => 230,
            b'a'..=b'z' => 200,
            b'0'..=b'9' => 180,
            b'A'..=b'Z' => 160,
            _ => 100,
        }
    }
}

/// Where a child's body ends, given the start of the boundary line after
/// it: before that line's preceding line ending, but never before the body.
fn body_end(raw: &[u8], body: usize, boundary_line: usize) -> usize {
    let Some(lf) = boundary_line.checked_sub(1).filter(|&lf| lf > body) else {
        return body.min(boundary_line);
    };
    if raw[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    }
}

/// Every line before the empty line is a `name:` field or folded onto one,
/// and ends in one line ending; the empty line comes before `end`. Then
/// every reader ends the block, and each field, in the same place.
fn plain_header_block(raw: &[u8], start: usize, block: &HeaderBlock) -> Option<()> {
    // No empty line before the limit: the block ran to it.
    if block.end == block.body {
        return None;
    }
    let head = &raw[start..block.end];
    // A CR anywhere but before an LF is a line ending for some readers.
    for i in memchr::memchr_iter(b'\r', head) {
        if head.get(i + 1) != Some(&b'\n') {
            return None;
        }
    }
    let first = head.first().copied();
    if matches!(first, Some(b' ' | b'\t')) {
        return None;
    }
    block
        .fields
        .iter()
        .all(|f| {
            let name = &raw[f.name.clone()];
            !name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic() && b != b':')
        })
        .then_some(())
}

/// The unfolded value of the one field called `name`; `Some(None)` when it
/// is absent, `None` when there are several.
fn single(raw: &[u8], block: &HeaderBlock, name: &str) -> Option<Option<String>> {
    let mut fields = block.named(raw, name);
    match (fields.next(), fields.next()) {
        (None, _) => Some(None),
        (Some(f), None) => Some(Some(headers::unfolded(raw, &f.value))),
        (Some(_), Some(_)) => None,
    }
}

struct ContentType {
    ctype: String,
    subtype: String,
    charset: Option<String>,
    boundary: Option<String>,
}

impl ContentType {
    /// `type/subtype *(; name=value)`, values as tokens or quoted strings
    /// without escapes; `None` for anything else (comments, RFC 2231
    /// continuations, encoded words, repeated parameters).
    fn parse(value: &str) -> Option<ContentType> {
        if value.contains(['(', '\\']) || value.contains("=?") {
            return None;
        }
        let (media, mut rest) = value.split_once(';').unwrap_or((value, ""));
        let (ctype, subtype) = media.trim().split_once('/')?;
        let (ctype, subtype) = (ctype.trim(), subtype.trim());
        if !is_token(ctype) || !is_token(subtype) {
            return None;
        }
        let mut ct = ContentType {
            ctype: ctype.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
            charset: None,
            boundary: None,
        };
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                return Some(ct);
            }
            let (name, after) = rest.split_once('=')?;
            let name = name.trim();
            if !is_token(name) || name.contains('*') {
                return None;
            }
            let after = after.trim_start();
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                let close = quoted.find('"')?;
                (&quoted[..close], &quoted[close + 1..])
            } else {
                let stop = after.find(';').unwrap_or(after.len());
                let v = after[..stop].trim_end();
                if !is_token(v) {
                    return None;
                }
                (v, &after[stop..])
            };
            let next = next.trim_start();
            rest = match next.strip_prefix(';') {
                Some(r) => r,
                None if next.is_empty() => next,
                None => return None,
            };
            let slot = match name.to_ascii_lowercase().as_str() {
                "charset" => &mut ct.charset,
                "boundary" => &mut ct.boundary,
                _ => continue,
            };
            if slot.replace(value.to_owned()).is_some() {
                return None;
            }
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

fn disposition_is_attachment(value: &str) -> Option<bool> {
    if value.contains(['(', '\\']) {
        return None;
    }
    let kind = value.split(';').next().unwrap_or("").trim();
    is_token(kind).then(|| kind.eq_ignore_ascii_case("attachment"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Some(()) when the fast reader answered (and agreed with mail-parser).
    fn compare(raw: &[u8]) -> Option<()> {
        if let Err(e) = agrees_with_mail_parser(raw) {
            panic!(
                "readers disagree on {:?}: {e}",
                String::from_utf8_lossy(raw)
            );
        }
        fast(raw).map(|_| ())
    }

    fn newsletter(eol: &str, boundary: &str, padding: &str) -> String {
        let b = boundary.trim_matches('"');
        [
            "From: a@example.com",
            "Subject: hi",
            &format!("Content-Type: multipart/alternative;\r\n boundary={boundary}"),
            "",
            "preamble",
            &format!("--{b}{padding}"),
            "Content-Type: text/plain; charset=utf-8",
            "",
            "hello -- there",
            "",
            &format!("--{b}"),
            "Content-Type: TEXT/HTML; charset=\"UTF-8\"",
            "Content-Transfer-Encoding: quoted-printable",
            "",
            "<p>hi <a href=3D\"https://example.com/\">x</a></p>",
            &format!("--{b}--{padding}"),
            "epilogue",
        ]
        .join(eol)
    }

    #[test]
    fn ordinary_mail_is_read_alike() {
        let mut answered = 0;
        for eol in ["\r\n", "\n"] {
            for boundary in ["b1", "\"b 1=x\"", "\"=_Part_0\""] {
                for padding in ["", " ", "\t "] {
                    let msg = newsletter(eol, boundary, padding);
                    answered += compare(msg.as_bytes()).map_or(0, |_| 1);
                }
            }
        }
        for msg in [
            &b"From: a@example.com\r\n\r\njust text\r\n"[..],
            b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n<p>x</p>",
            b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n\
Content-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nplain\r\n--i\r\n\
Content-Type: text/html; charset=iso-8859-1\r\n\r\n<b>x</b>\r\n--i--\r\n\r\n--o\r\n\
Content-Type: text/html; name=a.html\r\nContent-Disposition: ATTACHMENT; filename=a.html\r\n\r\n\
<p>a</p>\r\n--o\r\nContent-Type: image/png\r\n\r\n\r\n--o--\r\n",
        ] {
            answered += compare(msg).map_or(0, |_| 1);
        }
        assert_eq!(answered, 21, "the fast reader takes all of these");
    }

    #[test]
    fn unusual_mail_is_left_to_mail_parser() {
        for msg in [
            // boundary in mid-line, a boundary that only starts with ours
            &b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx --b\r\n--b--\r\n"[..],
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--bc\r\n--b--\r\n",
            // no close delimiter, no boundary parameter, no child
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n",
            b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--\r\n",
            // parameter continuations, comments, a header line without a colon
            b"Content-Type: text/html; charset*=utf-8''x\r\n\r\nx",
            b"Content-Type: text/html (comment)\r\n\r\nx",
            b"From a@example.com\r\nContent-Type: text/html\r\n\r\nx",
            b"Content-Type: text/html\r\nContent-Type: text/plain\r\n\r\nx",
            b"Content-Type: message/rfc822\r\n\r\nFrom: a\r\n\r\nx",
            b"Subject: no body",
        ] {
            assert_eq!(fast(msg), None, "{:?}", String::from_utf8_lossy(msg));
        }
    }

    /// The corpus, as is and with bytes cut out and put in at random:
    /// wherever the fast reader answers, mail-parser answers the same.
    #[test]
    fn corpus_and_its_mutations_are_read_alike() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/eml");
        let mut messages: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        for eol in ["\r\n", "\n"] {
            messages.push(newsletter(eol, "\"=_b\"", " ").into_bytes());
        }
        let mut random = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        const BYTES: &[u8] = b"-\r\n \t:;=\"x";
        let (mut answered, mut mutated_answered) = (0, 0);
        for msg in &messages {
            answered += compare(msg).map_or(0, |_| 1);
            for _ in 0..100 {
                let mut m = msg.clone();
                for _ in 0..1 + random.below(3) {
                    let at = random.below(m.len() + 1);
                    let line = |m: &[u8], at: usize| {
                        memchr::memchr(b'\n', &m[at..]).map_or(m.len(), |i| at + i + 1)
                    };
                    if random.below(3) == 0 {
                        // A copy of some line (often a boundary) at a line start.
                        let from = line(&m, at);
                        let copy = m[from..line(&m, from)].to_vec();
                        let to = line(&m, random.below(m.len() + 1));
                        m.splice(to..to, copy);
                    } else if random.below(2) == 0 && at < m.len() {
                        m.remove(at);
                    } else {
                        m.insert(at, *random.pick(BYTES));
                    }
                }
                mutated_answered += compare(&m).map_or(0, |_| 1);
            }
        }
        eprintln!(
            "answered {answered} of {}, mutations {mutated_answered}",
            messages.len()
        );
        assert!(
            answered >= 2,
            "the fast reader answered {answered} messages"
        );
        assert!(
            mutated_answered >= 40,
            "only {mutated_answered} mutations read"
        );
    }
}
