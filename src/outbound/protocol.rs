//! The sans-IO half of the SMTP client: reply parsing, capabilities, command
//! building and dot-stuffing. Pure functions, unit-tested without sockets.

use std::fmt;

use base64::Engine;
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{
    EhloResponse, AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8,
    EXT_START_TLS,
};

/// Longest reply (all lines together) we buffer before calling the server
/// broken; smtp-proto itself stops at 4 KiB of text.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Reply text kept in outcomes; enough for any sane diagnostic.
const MAX_REASON_CHARS: usize = 512;

/// One complete (possibly multi-line) server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463), `[0, 0, 0]` when absent.
    pub esc: [u8; 3],
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// 421: the server is closing the connection; nothing more will be heard.
    pub fn is_closing(&self) -> bool {
        self.code == 421
    }
}

impl fmt::Display for Reply {
    /// `550 5.1.1 text`, one line, control characters removed, length capped:
    /// the text comes from a stranger and ends up in logs, events and bounces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if self.esc != [0, 0, 0] {
            write!(f, " {}.{}.{}", self.esc[0], self.esc[1], self.esc[2])?;
        }
        let text = sanitize(&self.text);
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// One line, printable, at most [`MAX_REASON_CHARS`] characters.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_CHARS));
    let mut last_space = true;
    for ch in text.chars() {
        let ch = if ch.is_control() { ' ' } else { ch };
        if ch == ' ' && last_space {
            continue;
        }
        last_space = ch == ' ';
        if out.chars().count() >= MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        out.push(ch);
    }
    out.trim_end().to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Turns the byte stream from the server into replies. Bytes beyond the
/// current reply stay buffered for the next one (PIPELINING answers arrive
/// together).
#[derive(Default)]
pub struct ReplyReader {
    receiver: ResponseReceiver,
    unparsed: Vec<u8>,
    /// The raw bytes of the reply being parsed, for `EhloResponse::parse`.
    raw: Vec<u8>,
}

impl ReplyReader {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.unparsed.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned reply.
    pub fn buffered(&self) -> usize {
        self.unparsed.len() + self.raw.len()
    }

    /// Drops everything buffered. After STARTTLS, plaintext that arrived
    /// before the handshake must never be read as if it came over TLS.
    pub fn clear(&mut self) {
        self.receiver.reset();
        self.unparsed.clear();
        self.raw.clear();
    }

    /// The next complete reply with its raw bytes, `Ok(None)` when more input
    /// is needed.
    pub fn next_reply(&mut self) -> Result<Option<(Reply, Vec<u8>)>, ProtocolError> {
        if self.unparsed.is_empty() {
            return Ok(None);
        }
        let mut iter = self.unparsed.iter();
        let result = self.receiver.parse(&mut iter);
        let consumed = self.unparsed.len() - iter.len();
        self.raw.extend(self.unparsed.drain(..consumed));
        match result {
            Ok(response) => {
                self.receiver.reset();
                let raw = std::mem::take(&mut self.raw);
                Ok(Some((
                    Reply {
                        code: response.code,
                        esc: response.esc,
                        text: response.message,
                    },
                    raw,
                )))
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) if self.raw.len() <= MAX_REPLY_BYTES => {
                Ok(None)
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => {
                Err(ProtocolError("server reply too long".into()))
            }
            Err(e) => Err(ProtocolError(format!(
                "unparsable reply from server ({e}): {}",
                sanitize(&String::from_utf8_lossy(&self.raw))
            ))),
        }
    }
}

/// The EHLO extensions this client acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    /// Advertised SIZE limit; `None` when absent or 0 (RFC 1870: no limit).
    pub size: Option<usize>,
    pub auth_plain: bool,
    pub auth_login: bool,
}

impl Capabilities {
    /// From the raw bytes of a 250 EHLO reply. A reply smtp-proto cannot parse
    /// yields no extensions: plain RFC 5321, which every server must accept.
    pub fn from_ehlo(raw: &[u8]) -> Self {
        let Ok(ehlo) = EhloResponse::parse(&mut raw.iter()) else {
            return Self::default();
        };
        Capabilities {
            pipelining: ehlo.has_capability(EXT_PIPELINING),
            starttls: ehlo.has_capability(EXT_START_TLS),
            smtputf8: ehlo.has_capability(EXT_SMTP_UTF8),
            eight_bit_mime: ehlo.has_capability(EXT_8BIT_MIME),
            size: (ehlo.has_capability(EXT_SIZE) && ehlo.size > 0).then_some(ehlo.size),
            auth_plain: ehlo.auth_mechanisms & AUTH_PLAIN != 0,
            auth_login: ehlo.auth_mechanisms & AUTH_LOGIN != 0,
        }
    }
}

/// A name for EHLO/HELO: one token, printable ASCII.
pub fn check_ehlo_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!("invalid EHLO name {name:?}"))
    }
}

pub fn ehlo(name: &str) -> Vec<u8> {
    format!("EHLO {name}\r\n").into_bytes()
}

pub fn helo(name: &str) -> Vec<u8> {
    format!("HELO {name}\r\n").into_bytes()
}

/// Rejects what would let an address smuggle a second command or break the
/// path syntax. Anything else is the receiving server's business.
pub fn check_address(address: &str) -> Result<(), String> {
    if address
        .chars()
        .any(|c| c.is_control() || matches!(c, '<' | '>'))
    {
        Err(format!("invalid address {:?}", sanitize(address)))
    } else {
        Ok(())
    }
}

pub struct MailParams {
    pub size: Option<usize>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
}

pub fn mail_from(address: &str, params: &MailParams) -> Result<Vec<u8>, String> {
    check_address(address)?;
    let mut cmd = format!("MAIL FROM:<{address}>");
    if let Some(size) = params.size {
        cmd.push_str(&format!(" SIZE={size}"));
    }
    if params.eight_bit_mime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if params.smtputf8 {
        cmd.push_str(" SMTPUTF8");
    }
    cmd.push_str("\r\n");
    Ok(cmd.into_bytes())
}

pub fn rcpt_to(address: &str) -> Result<Vec<u8>, String> {
    if address.is_empty() {
        return Err("empty recipient address".into());
    }
    check_address(address)?;
    Ok(format!("RCPT TO:<{address}>\r\n").into_bytes())
}

pub fn auth_plain(user: &str, pass: &str) -> Vec<u8> {
    let token = format!("\0{user}\0{pass}");
    format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
    .into_bytes()
}

/// One line of an AUTH LOGIN exchange (the user name, then the password).
pub fn auth_login_line(value: &str) -> Vec<u8> {
    let mut line = base64::engine::general_purpose::STANDARD
        .encode(value)
        .into_bytes();
    line.extend_from_slice(b"\r\n");
    line
}

/// Appends `data` to `out` with every bare CR and bare LF made CRLF, as
/// Postfix does on delivery. Receivers disagree about what a bare CR or LF
/// ends (the root of SMTP smuggling), and DKIM verifiers canonicalise them
/// differently, so nothing else may leave this relay.
pub fn normalize_line_ends_into(data: &[u8], out: &mut Vec<u8>) {
    if crlf_only(data) {
        out.extend_from_slice(data);
        return;
    }
    out.reserve(data.len());
    let mut i = 0;
    while i < data.len() {
        match memchr::memchr2(b'\r', b'\n', &data[i..]) {
            None => {
                out.extend_from_slice(&data[i..]);
                break;
            }
            Some(p) => {
                out.extend_from_slice(&data[i..i + p]);
                out.extend_from_slice(b"\r\n");
                let at = i + p;
                // A CRLF pair is one line end; a lone CR or LF is one too.
                i = if data[at] == b'\r' && data.get(at + 1) == Some(&b'\n') {
                    at + 2
                } else {
                    at + 1
                };
            }
        }
    }
}

/// True when every CR is followed by an LF and every LF follows a CR, as in
/// nearly every copy: then normalising or stuffing needs no pass line by
/// line.
pub(crate) fn crlf_only(data: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (data.first(), data.last()) else {
        return true;
    };
    // Byte by byte, "this is a CR" must equal "the next is an LF"; folded
    // without an early exit so that the compiler vectorises it.
    let pairs = data[..data.len() - 1].iter().zip(&data[1..]);
    let odd = pairs.fold(0u8, |acc, (&a, &b)| {
        acc | (u8::from(a == b'\r') ^ u8::from(b == b'\n'))
    });
    odd == 0 && first != b'\n' && last != b'\r'
}

/// `data` with CRLF line ends only (see [`normalize_line_ends_into`]).
pub fn normalize_line_ends(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    normalize_line_ends_into(data, &mut out);
    out
}

/// The DATA payload: `data` with line ends made CRLF, a "." added before
/// every line that starts with one, CRLF appended when `data` does not end
/// with a line end, then the terminating ".\r\n". The runner normalises
/// line ends before signing, so the receiver un-stuffs exactly the bytes
/// that were signed; normalising here again means no caller can put a bare
/// CR or LF (and with it a lone "." line, to any reading) on the wire.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    data_payload(data).0
}

/// [`dot_stuff`] and, from the same pass, the size RFC 1870 asks for: the
/// message as sent (line ends made CRLF), without the stuffing dots and the
/// terminating ".". The client needs both for every copy.
pub fn data_payload(data: &[u8]) -> (Vec<u8>, usize) {
    if crlf_only(data) {
        return stuffed_crlf(data);
    }
    let mut out = Vec::with_capacity(data.len() + 64 + 5);
    let mut stuffed = 0;
    let mut at_line_start = true;
    let mut rest = data;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
            stuffed += 1;
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                out.extend_from_slice(rest);
                at_line_start = false;
                break;
            }
            Some(p) => {
                out.extend_from_slice(&rest[..p]);
                out.extend_from_slice(b"\r\n");
                let skip = if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[p + skip..];
                at_line_start = true;
            }
        }
    }
    if !at_line_start || data.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    let size = out.len() - stuffed;
    out.extend_from_slice(b".\r\n");
    (out, size)
}

/// [`data_payload`] of data that has CRLF line ends only: a dot is added
/// where a line starts with one, and nothing else changes.
fn stuffed_crlf(data: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len() + 64 + 5);
    let mut stuffed = 0;
    let mut from = 0;
    if data.first() == Some(&b'.') {
        out.push(b'.');
        stuffed += 1;
    }
    for at in memchr::memmem::find_iter(data, b"\r\n.") {
        out.extend_from_slice(&data[from..at + 2]);
        out.push(b'.');
        stuffed += 1;
        from = at + 2;
    }
    out.extend_from_slice(&data[from..]);
    if data.is_empty() || !data.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    let size = out.len() - stuffed;
    out.extend_from_slice(b".\r\n");
    (out, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_only_fast_path_matches_the_line_pass() {
        let mut random = crate::test_rng::XorShift(0x1234_5678_9abc_def1);
        const PIECES: &[&[u8]] = &[b"a", b".", b"..", b"\r\n", b" ", b"x.y"];
        let mut fast = 0;
        for _ in 0..3_000 {
            let mut data: Vec<u8> = Vec::new();
            for _ in 0..random.below(30) {
                data.extend_from_slice(random.pick::<&[u8]>(PIECES));
            }
            if !crlf_only(&data) {
                continue;
            }
            fast += 1;
            let (out, size) = data_payload(&data);
            let mut slow_out = Vec::new();
            let mut at_line_start = true;
            for line in data.split_inclusive(|&b| b == b'\n') {
                if at_line_start && line.first() == Some(&b'.') {
                    slow_out.push(b'.');
                }
                slow_out.extend_from_slice(line);
                at_line_start = line.ends_with(b"\n");
            }
            if data.is_empty() || !data.ends_with(b"\r\n") {
                slow_out.extend_from_slice(b"\r\n");
            }
            let dots = slow_out.len() - data.len() - if data.ends_with(b"\r\n") { 0 } else { 2 };
            slow_out.extend_from_slice(b".\r\n");
            assert_eq!(out, slow_out, "{:?}", String::from_utf8_lossy(&data));
            assert_eq!(size, slow_out.len() - 3 - dots);
        }
        assert!(fast > 1_000, "{fast}");
        assert!(crlf_only(b""));
        assert!(crlf_only(b"a\r\nb"));
        assert!(!crlf_only(b"a\nb"));
        assert!(!crlf_only(b"a\rb\r\n"));
        assert!(!crlf_only(b"\n\r"));
        assert!(!crlf_only(b"a\r"));
    }

    type Parsed = Result<Option<(Reply, Vec<u8>)>, ProtocolError>;

    fn read_all(input: &[u8]) -> Vec<Parsed> {
        let mut reader = ReplyReader::default();
        reader.feed(input);
        let mut out = Vec::new();
        loop {
            let r = reader.next_reply();
            let stop = !matches!(r, Ok(Some(_)));
            out.push(r);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn single_and_pipelined_replies() {
        let replies =
            read_all(b"250 2.1.0 Ok\r\n550 5.1.1 <x@y>: no such user\r\n354 go ahead\r\n");
        let codes: Vec<u16> = replies
            .iter()
            .filter_map(|r| {
                r.as_ref()
                    .ok()
                    .and_then(|o| o.as_ref())
                    .map(|(r, _)| r.code)
            })
            .collect();
        assert_eq!(codes, vec![250, 550, 354]);
        let (second, raw) = replies[1].clone().unwrap().unwrap();
        assert_eq!(second.esc, [5, 1, 1]);
        assert_eq!(second.to_string(), "550 5.1.1 <x@y>: no such user");
        assert_eq!(raw, b"550 5.1.1 <x@y>: no such user\r\n");
        assert!(matches!(replies[3], Ok(None)));
    }

    #[test]
    fn reply_split_across_reads() {
        let mut reader = ReplyReader::default();
        reader.feed(b"250-first\r\n25");
        assert!(reader.next_reply().unwrap().is_none());
        reader.feed(b"0 sec");
        assert!(reader.next_reply().unwrap().is_none());
        reader.feed(b"ond\r\n");
        let (reply, raw) = reader.next_reply().unwrap().unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(raw, b"250-first\r\n250 second\r\n");
        assert_eq!(reply.to_string(), "250 first second");
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b"HTTP/1.1 400 Bad Request\r\n"[..],
            b"\x16\x03\x01\x00\x05hello",
            b"2",
            b"99",
            b"\xff\xfe\xfd\r\n",
            b"250",
            b"\r\n\r\n",
        ] {
            let _ = read_all(junk);
        }
        assert!(read_all(b"HTTP/1.1 400\r\n")[0].is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut random = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"0123456789 -.\r\n25045ABCxyz\xff\x00";
        for _ in 0..20_000 {
            let len = random.below(40);
            let input: Vec<u8> = (0..len).map(|_| *random.pick(alphabet)).collect();
            let _ = read_all(&input);
            let _ = Capabilities::from_ehlo(&input);
            let mut reader = ReplyReader::default();
            for chunk in input.chunks(3) {
                reader.feed(chunk);
                if reader.next_reply().is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn endless_reply_is_capped() {
        let mut reader = ReplyReader::default();
        let mut failed = false;
        for _ in 0..100 {
            reader.feed(b"250-");
            reader.feed(&[b'a'; 1000]);
            reader.feed(b"\r\n");
            if reader.next_reply().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    #[test]
    fn capabilities_from_ehlo() {
        let caps = Capabilities::from_ehlo(
            b"250-mx.example.net hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
              250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n250 SMTPUTF8\r\n",
        );
        assert_eq!(
            caps,
            Capabilities {
                pipelining: true,
                starttls: true,
                smtputf8: true,
                eight_bit_mime: true,
                size: Some(1000),
                auth_plain: true,
                auth_login: true,
            }
        );
        let bare = Capabilities::from_ehlo(b"250 mx.example.net\r\n");
        assert_eq!(bare, Capabilities::default());
        assert_eq!(
            Capabilities::from_ehlo(b"250-x\r\n250 SIZE 0\r\n").size,
            None
        );
        assert_eq!(Capabilities::from_ehlo(b"junk"), Capabilities::default());
    }

    #[test]
    fn commands() {
        let p = MailParams {
            size: Some(42),
            eight_bit_mime: true,
            smtputf8: true,
        };
        assert_eq!(
            mail_from("a@b", &p).unwrap(),
            b"MAIL FROM:<a@b> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n"
        );
        let none = MailParams {
            size: None,
            eight_bit_mime: false,
            smtputf8: false,
        };
        assert_eq!(mail_from("", &none).unwrap(), b"MAIL FROM:<>\r\n");
        assert!(mail_from("a@b>\r\nRCPT TO:<c@d", &none).is_err());
        assert_eq!(rcpt_to("c@d").unwrap(), b"RCPT TO:<c@d>\r\n");
        assert!(rcpt_to("").is_err());
        assert!(rcpt_to("c@d\nDATA").is_err());
        assert_eq!(
            rcpt_to("jösé@exämple.de").unwrap(),
            "RCPT TO:<jösé@exämple.de>\r\n".as_bytes()
        );
        assert_eq!(auth_plain("u", "p"), b"AUTH PLAIN AHUAcA==\r\n");
        assert_eq!(auth_login_line("u"), b"dQ==\r\n");
        assert!(check_ehlo_name("relay.example.com").is_ok());
        assert!(check_ehlo_name("a b").is_err());
        assert!(check_ehlo_name("").is_err());
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".first\r\n"), b"..first\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r\n.\r\n"), b"x\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b"dot at end\r\n."), b"dot at end\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
        assert_eq!(dot_stuff(b"mid.dle\r\n"), b"mid.dle\r\n.\r\n");
        assert_eq!(dot_stuff(b"bare\n.lf\r\n"), b"bare\r\n..lf\r\n.\r\n");
        let size = |d: &[u8]| data_payload(d).1;
        assert_eq!(size(b"ab\r\n"), 4);
        assert_eq!(size(b"ab"), 4);
        assert_eq!(size(b"a\rb\nc"), 9);
        assert_eq!(size(b""), 2);
    }

    /// What the receiver sees as lines, whatever it takes for a line end:
    /// none of them may be a lone "." before the real end of DATA.
    fn no_lone_dot_before_the_end(wire: &[u8]) {
        let body = wire.strip_suffix(b"\r\n.\r\n").expect("terminated");
        for line in body.split(|&b| b == b'\r' || b == b'\n') {
            assert_ne!(
                line,
                b".",
                "a lone dot in {:?}",
                String::from_utf8_lossy(wire)
            );
        }
        // Every CR and LF on the wire is part of a CRLF pair.
        assert_eq!(normalize_line_ends(wire), wire);
    }

    #[test]
    fn smuggling_through_bare_cr_or_lf_is_impossible() {
        let smuggle = b"line1\r.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: ceo@evil.test\r\n";
        let wire = dot_stuff(smuggle);
        assert!(wire.starts_with(b"line1\r\n..\r\nMAIL FROM:<a@example.com>\r\n"));
        no_lone_dot_before_the_end(&wire);
        for input in [
            &b"a\r.\rb"[..],
            b"a\r.\nb",
            b"a\n.\rb",
            b"a\n.\n",
            b"\r.\r",
            b"\r.\n",
            b".\r",
            b"x\r\r.\r\r\n",
            b"x\n\r.\r\n",
        ] {
            no_lone_dot_before_the_end(&dot_stuff(input));
        }
        assert_eq!(dot_stuff(b"\r.\r"), b"\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"\r.\n"), b"\r\n..\r\n.\r\n");
    }

    #[test]
    fn line_ends_become_crlf() {
        assert_eq!(normalize_line_ends(b"a\rb\nc\r\nd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(normalize_line_ends(b"\r\r\n\n"), b"\r\n\r\n\r\n");
        assert_eq!(normalize_line_ends(b"\n\r"), b"\r\n\r\n");
        assert_eq!(normalize_line_ends(b"plain"), b"plain");
        assert_eq!(normalize_line_ends(b""), b"");
        // The size counts what dot_stuff sends, less stuffing and ".".
        for input in [&b"a\rb\nc"[..], b"x\r\n", b"x", b"\r", b""] {
            let wire = dot_stuff(input);
            assert_eq!(data_payload(input).1 + 3, wire.len(), "{input:?}");
        }
    }

    #[test]
    fn size_is_the_normalized_length_on_random_input() {
        // The size must be what is sent (CRLF line ends, CRLF at the end),
        // whatever mix of bare CR, bare LF and CRLF the data has.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let len = (seed >> 58) as usize;
            let input: Vec<u8> = (0..len)
                .map(|i| b"\r\n.a"[((seed >> (i % 60)) & 3) as usize])
                .collect();
            let mut sent = normalize_line_ends(&input);
            if !sent.ends_with(b"\r\n") {
                sent.extend_from_slice(b"\r\n");
            }
            assert_eq!(data_payload(&input).1, sent.len(), "{input:?}");
        }
    }

    #[test]
    fn random_bytes_never_smuggle() {
        let mut random = crate::test_rng::XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let len = random.below(40);
            let input: Vec<u8> = (0..len).map(|_| *random.pick(b".\r\na")).collect();
            no_lone_dot_before_the_end(&dot_stuff(&input));
        }
    }

    #[test]
    fn display_is_one_sanitized_line() {
        let r = Reply {
            code: 451,
            esc: [0, 0, 0],
            text: "try\r\nlater\x07  please".into(),
        };
        assert_eq!(r.to_string(), "451 try later please");
        let long = Reply {
            code: 550,
            esc: [5, 7, 1],
            text: "x".repeat(5000),
        };
        assert!(long.to_string().chars().count() < 600);
    }
}
