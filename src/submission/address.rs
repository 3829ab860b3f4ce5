//! A strict reader for the From: field (RFC 5322 3.4 `mailbox-list`).
//!
//! Lenient parsers recover from syntax errors, each in its own way: for
//! `ceo@evil.test <a@example.com>` one reads the address `a@example.com`,
//! another `ceo@evil.test`. A relay that signs for the From: domain must
//! check the address every receiver will see, so anything that is not plain
//! RFC 5322 (with the obsolete forms mail still uses: dots in display names,
//! comments anywhere) is refused here with the reason, never repaired.

/// One address of the list. `local` keeps its quotes when it had them, so
/// `"ceo@evil.test"@example.com` is the address at `example.com` it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A run of atext and dots (`john.q`, `example.com`, `=?utf-8?q?x?=`).
    Atom(String),
    /// A quoted string, quotes and escapes kept as written.
    Quoted(String),
    /// `[...]`, brackets kept.
    Literal(String),
    Special(char),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Atom(s) | Token::Quoted(s) | Token::Literal(s) => f.write_str(s),
            Token::Special(c) => write!(f, "{c}"),
        }
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Splits the field value into tokens; comments and white space go.
fn tokens(value: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {}
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next() {
                        Some('\\') => {
                            chars.next();
                        }
                        Some('(') => depth += 1,
                        Some(')') => depth -= 1,
                        Some(_) => {}
                        None => return Err("a comment is not closed".into()),
                    }
                }
            }
            '"' => {
                let mut s = String::from('"');
                loop {
                    match chars.next() {
                        Some('\\') => {
                            s.push('\\');
                            s.extend(chars.next());
                        }
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("a quoted string is not closed".into()),
                    }
                }
                s.push('"');
                out.push(Token::Quoted(s));
            }
            '[' => {
                let mut s = String::from('[');
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some('[') | Some('\\') | None => {
                            return Err("a domain literal [...] is not well formed".into())
                        }
                        Some(c) => s.push(c),
                    }
                }
                s.push(']');
                out.push(Token::Literal(s));
            }
            '<' | '>' | ',' | ':' | ';' | '@' => out.push(Token::Special(c)),
            c if is_atext(c) || c == '.' => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if !(is_atext(n) || n == '.') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Token::Atom(s));
            }
            c => {
                return Err(format!(
                    "the character {:?} may not appear there unquoted",
                    c
                ))
            }
        }
    }
    Ok(out)
}

/// A dot-atom: dots only between non-empty parts.
fn dot_atom(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|p| !p.is_empty())
}

fn addr_spec(t: &[Token]) -> Result<Mailbox, String> {
    let local = match t.first() {
        Some(Token::Atom(a)) if dot_atom(a) => a.clone(),
        Some(Token::Quoted(q)) => q.clone(),
        _ => return Err("an address needs a local part before its @".into()),
    };
    if t.get(1) != Some(&Token::Special('@')) {
        return Err(format!("{local} is not an address (no @domain)"));
    }
    let domain = match t.get(2) {
        Some(Token::Atom(a)) if dot_atom(a) => a.clone(),
        Some(Token::Literal(l)) => l.clone(),
        _ => return Err(format!("the address {local}@ has no domain")),
    };
    if t.len() > 3 {
        return Err(format!(
            "the address {local}@{domain} is followed by more text"
        ));
    }
    Ok(Mailbox { local, domain })
}

fn mailbox(t: &[Token]) -> Result<Mailbox, String> {
    let Some(open) = t.iter().position(|x| *x == Token::Special('<')) else {
        return addr_spec(t);
    };
    let phrase = &t[..open];
    if phrase.contains(&Token::Special('@')) {
        return Err(
            "its display name holds an unquoted address; quote the name (\"name@example\" <address>) or leave it out"
                .into(),
        );
    }
    if let Some(bad) = phrase
        .iter()
        .find(|x| !matches!(x, Token::Atom(_) | Token::Quoted(_)))
    {
        return Err(format!(
            "its display name holds \"{bad}\", which must be quoted"
        ));
    }
    let Some(close) = t.iter().position(|x| *x == Token::Special('>')) else {
        return Err("a < is not closed by >".into());
    };
    if close < open {
        return Err("a > comes before its <".into());
    }
    if close + 1 != t.len() {
        return Err("text follows the <address>; put the display name before it".into());
    }
    addr_spec(&t[open + 1..close])
}

/// The addresses of a From: field value (unfolded), or why it cannot be
/// read without guessing.
pub fn mailbox_list(value: &str) -> Result<Vec<Mailbox>, String> {
    let t = tokens(value)?;
    if t.iter()
        .any(|x| matches!(x, Token::Special(':') | Token::Special(';')))
    {
        return Err("group syntax (name: ...;) is not allowed in From:".into());
    }
    t.split(|x| *x == Token::Special(','))
        // obs-mbox-list allows empty elements ("a@x, , b@y").
        .filter(|m| !m.is_empty())
        .map(mailbox)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &str) -> Vec<String> {
        mailbox_list(v)
            .unwrap_or_else(|e| panic!("{v}: {e}"))
            .iter()
            .map(Mailbox::address)
            .collect()
    }

    #[test]
    fn reads_the_usual_forms() {
        assert_eq!(addrs("a@example.com"), ["a@example.com"]);
        assert_eq!(addrs("App <a@example.com>"), ["a@example.com"]);
        assert_eq!(addrs("<a@example.com>"), ["a@example.com"]);
        assert_eq!(addrs("\"Doe, John\" <a@example.com>"), ["a@example.com"]);
        assert_eq!(
            addrs("Joe Q. Public <john.q@example.com>"),
            ["john.q@example.com"]
        );
        assert_eq!(
            addrs("=?utf-8?q?J=C3=B6rg?= <a@example.com> (work)"),
            ["a@example.com"]
        );
        assert_eq!(addrs("Jörg <jörg@exämple.com>"), ["jörg@exämple.com"]);
        assert_eq!(
            addrs("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"),
            ["pete@silly.test"]
        );
        assert_eq!(
            addrs("\"Evil <ceo@evil.test>\" <news@example.com>"),
            ["news@example.com"]
        );
        assert_eq!(
            addrs("a@example.com, , b@example.org"),
            ["a@example.com", "b@example.org"]
        );
        assert_eq!(addrs("a@[192.0.2.1]"), ["a@[192.0.2.1]"]);
    }

    #[test]
    fn a_quoted_local_part_belongs_to_the_domain_after_it() {
        let m = mailbox_list("\"ceo@evil.test\"@example.com").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].domain, "example.com");
        assert_eq!(m[0].local, "\"ceo@evil.test\"");
        let m = mailbox_list("Boss <\"ceo\\\"@x\"@example.com>").unwrap();
        assert_eq!(m[0].domain, "example.com");
    }

    #[test]
    fn refuses_what_parsers_read_differently() {
        for (v, why) in [
            ("ceo@evil.test <a@example.com>", "unquoted address"),
            ("ceo@evil.test<a@example.com>", "unquoted address"),
            ("<a@example.com> ceo@evil.test", "text follows"),
            ("Doe, John <a@example.com>", "no @domain"),
            ("a@example.com@evil.test", "followed by more text"),
            ("team: a@example.com;", "group syntax"),
            ("a@", "no domain"),
            ("@example.com", "local part"),
            ("a..b@example.com", "local part"),
            ("\"open@example.com", "not closed"),
            ("(open a@example.com", "not closed"),
            ("App <a@example.com", "not closed"),
            ("a\\b@example.com", "unquoted"),
            ("a@example.com\0", "unquoted"),
            (
                "App > x <a@example.com>",
                "holds \">\", which must be quoted",
            ),
            ("[x] <a@example.com>", "holds \"[x]\""),
        ] {
            let e = mailbox_list(v).expect_err(v);
            assert!(e.contains(why), "{v}: {e}");
        }
    }
}
