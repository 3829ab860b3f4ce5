//! SMTP replies with enhanced status codes (RFC 5321, RFC 3463).

pub use crate::text::printable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// One line, or several `code-` lines when the text has newlines.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Written piece by piece: a format! per line was a tenth of the
        // session's CPU with a multi-line EHLO reply per message.
        let code = self.code.to_string();
        let mut lines = self.text.lines().peekable();
        if lines.peek().is_none() {
            out.extend_from_slice(code.as_bytes());
            out.push(b' ');
            out.extend_from_slice(self.status.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        while let Some(line) = lines.next() {
            out.extend_from_slice(code.as_bytes());
            out.push(if lines.peek().is_none() { b' ' } else { b'-' });
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                out.push(b' ');
            }
            // Text quoted from the client may hold any byte; none of them
            // may split the reply or reach the client raw (a NUL, a bare CR).
            out.extend_from_slice(printable(line).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn single_and_multi_line() {
        let mut out = Vec::new();
        Reply::new(250, "2.0.0", "Ok").write_to(&mut out);
        Reply::new(214, "2.0.0", "a\nb").write_to(&mut out);
        assert_eq!(out, b"250 2.0.0 Ok\r\n214-2.0.0 a\r\n214 2.0.0 b\r\n");
    }

    #[test]
    fn client_text_never_reaches_the_wire_raw() {
        let mut out = Vec::new();
        Reply::new(501, "5.1.3", "Bad address <a\0b\rc\x1b[31m\u{7f}@x>").write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "501 5.1.3 Bad address <a\\0b\\rc\\u{1b}[31m\\u{7f}@x>\r\n"
        );
        assert_eq!(
            printable("j\u{f6}ran@x"),
            "j\u{f6}ran@x",
            "printable non-ASCII stays"
        );
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(printable("app\r\nFAKE"), "app\\r\\nFAKE");
    }
}
