//! Text from outside (client commands, remote replies, DNS records, links)
//! on its way to a place where control characters would act: a terminal, a
//! log line, an SMTP reply.

use std::borrow::Cow;

/// `text` with every control character written as its Rust escape (`\0`,
/// `\r`, `\u{1b}`), so it cannot end a line, move a cursor or recolour a
/// terminal. Borrowed when there is nothing to escape, which is nearly always.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An error with its causes, joined by ": ". hyper's own message alone
/// ("client error (Connect)") does not say that a certificate was refused
/// or a connection reset; its sources do.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::printable;
    use std::borrow::Cow;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("250 ok"), Cow::Borrowed("250 ok")));
        let hostile = "550 \u{1b}[2J\u{1b}]0;pwned\u{7}gone\r\nX\0";
        let shown = printable(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown, "550 \\u{1b}[2J\\u{1b}]0;pwned\\u{7}gone\\r\\nX\\0");
    }
}
