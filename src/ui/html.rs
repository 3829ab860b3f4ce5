//! HTML out of plain Rust strings. Every value that did not come from
//! this file goes through [`esc`] (text and attribute values alike: it
//! escapes both quote kinds), so an attacker's subject, User-Agent or
//! remote reply lands as text.
//!
//! Why no template engine: the pages are a few tables and forms; askama
//! or maud would add a proc-macro crate tree for that. The price is that
//! escaping is by convention, so the convention is one function, and the
//! test in tests/ui.rs sends hostile headers through every page.

use std::fmt::{self, Display, Write};

/// Escaped for text and for quoted attribute values; control characters
/// shown as escapes (they mean nothing in HTML but can confuse a reader).
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let printable = crate::text::printable(self.0);
        f.write_str(&htmlize::escape_all_quotes(printable.as_ref()))
    }
}

pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

/// For `Option<String>` fields: empty when absent.
pub fn esc_opt(s: &Option<String>) -> Esc<'_> {
    Esc(s.as_deref().unwrap_or(""))
}

/// `2026-11-24 12:34:56` (UTC), as the pages show times.
pub fn time(ms: i64) -> String {
    let s = crate::time::rfc3339(ms);
    // 2026-11-24T12:34:56.789Z -> 2026-11-24 12:34:56
    s.get(..19).map(|t| t.replace('T', " ")).unwrap_or(s)
}

/// A percentage with one decimal, or a dash when there is no denominator.
pub fn pct(n: i64, d: i64) -> String {
    if d == 0 {
        "–".into()
    } else {
        format!("{:.1} %", n as f64 * 100.0 / d as f64)
    }
}

/// A query-string value (for links the pages build).
pub fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The pages' navigation entries: (path, label).
const NAV: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/emails", "Emails"),
    ("/queue", "Queue"),
    ("/suppressions", "Suppressions"),
    ("/webhooks", "Webhooks"),
    ("/domains", "Domains"),
];

/// The chrome around a page's body: head, navigation, logout.
pub fn page(title: &str, current: &str, csrf: &str, css: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · trackrelay</title><link rel=\"stylesheet\" href=\"{}\"></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><nav aria-label=\"Main\"><span class=\"brand\">trackrelay</span><ul>",
        esc(title),
        esc(css)
    );
    for (path, label) in NAV {
        let here = if path == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(out, "<li><a href=\"{path}\"{here}>{label}</a></li>");
    }
    let _ = write!(
        out,
        "</ul><form method=\"post\" action=\"/logout\" class=\"logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>\
         </nav></header><main id=\"main\"><h1>{}</h1>{body}</main></body></html>",
        esc(csrf),
        esc(title)
    );
    out.push('\n');
    out
}

/// A page without navigation (login, errors before login).
pub fn bare(title: &str, css: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · trackrelay</title><link rel=\"stylesheet\" href=\"{}\"></head>\
         <body class=\"bare\"><main id=\"main\"><h1>{}</h1>{body}</main></body></html>\n",
        esc(title),
        esc(css),
        esc(title)
    )
}

/// A hidden CSRF field for a form.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            esc("<script>\"x\"&'y'</script>\u{1b}").to_string(),
            "&lt;script&gt;&quot;x&quot;&amp;&apos;y&apos;&lt;/script&gt;\\u{1b}"
        );
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(pct(1, 4), "25.0 %");
        assert_eq!(pct(1, 0), "–");
        assert_eq!(q("a@b c&d"), "a%40b+c%26d");
    }
}
