//! Which hrefs are tracked, and what goes into their tokens.

use url::{Host, Url};

/// Hosts whose links are never wrapped again.
pub(crate) struct OwnHosts {
    hosts: Vec<(String, Option<u16>)>,
}

impl OwnHosts {
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Self {
        let hosts = hosts
            .into_iter()
            .filter_map(|h| {
                let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                // "host:port" (an IPv6 literal keeps its brackets).
                match h.rsplit_once(':') {
                    Some((name, port)) if !name.ends_with(':') && !port.contains(']') => {
                        port.parse().ok().map(|p| (name.to_owned(), Some(p)))
                    }
                    _ => Some((h, None)),
                }
            })
            .filter(|(h, _)| !h.is_empty())
            .collect();
        OwnHosts { hosts }
    }

    fn contains(&self, url: &Url) -> bool {
        match url.host_str() {
            Some(host) => self.contains_host(host, url.port_or_known_default()),
            None => false,
        }
    }

    fn contains_host(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts
            .iter()
            .any(|(h, p)| h.eq_ignore_ascii_case(host) && p.is_none_or(|p| port == Some(p)))
    }
}

/// The common case without a full URL parse (which costs more than the
/// rest of a link's work): `scheme://host[:port][/?#...]` with a plain
/// ASCII host name or IPv4 address and no user info. `Some(tracked)` is the
/// verdict; `None` means "not simple, ask the URL parser".
fn simple_verdict(url: &str, own: &OwnHosts) -> Option<bool> {
    let (default_port, rest) = if let Some(rest) = strip_scheme(url, "https://") {
        (443, rest)
    } else if let Some(rest) = strip_scheme(url, "http://") {
        (80, rest)
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (authority, default_port),
    };
    let plain = !host.is_empty()
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !plain {
        return None;
    }
    Some(!own.contains_host(host, Some(port)))
}

/// `url` less a case-insensitive ASCII `prefix`. A checked split rather than
/// indexing: the byte after the prefix may fall inside a multi-byte
/// character (for `http://ü.example/`, byte 8 does), and indexing there
/// panics.
fn strip_scheme<'a>(url: &'a str, prefix: &str) -> Option<&'a str> {
    let (head, rest) = url.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// Takes an href with its entities already decoded and returns the URL to
/// put in the token, or `None` when the link is left alone.
///
/// Only absolute `http://` / `https://` URLs with a real host are tracked:
/// mailto:, tel:, sms:, javascript:, anchors, relative URLs (whatever a
/// `<base href>` says) and template placeholders such as `{{url}}`,
/// `*|UNSUB|*`, `%%link%%` or `https://{{host}}/` are not. The URL is kept
/// as written, less the surrounding blanks and the tabs and newlines a
/// browser would drop too.
pub(crate) fn trackable(href: &str, own: &OwnHosts) -> Option<String> {
    let trimmed = href.trim_matches(|c: char| c <= ' ');
    let cleaned: String = if trimmed.contains(['\t', '\n', '\r']) {
        trimmed
            .chars()
            .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
            .collect()
    } else {
        trimmed.to_owned()
    };
    if strip_scheme(&cleaned, "http://").is_none() && strip_scheme(&cleaned, "https://").is_none() {
        return None;
    }
    if let Some(tracked) = simple_verdict(&cleaned, own) {
        return tracked.then_some(cleaned);
    }
    let url = Url::parse(&cleaned).ok()?;
    let real_host = match url.host()? {
        Host::Domain(d) => {
            !d.is_empty()
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        }
        Host::Ipv4(_) | Host::Ipv6(_) => true,
    };
    if !real_host || own.contains(&url) {
        return None;
    }
    Some(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnHosts {
        OwnHosts::new(["links.example.com", "old.example.com:8443"])
    }

    #[test]
    fn tracks_only_absolute_http_urls_with_real_hosts() {
        let o = own();
        for yes in [
            "https://example.com/a?b=1&c=2",
            "HTTP://Example.com",
            "  https://example.com/x\n",
            "https://example.com/?id={{id}}",
            "https://example.com/%%link%%",
            "http://192.0.2.1/",
            "https://b\u{fc}cher.example/",
            "https://old.example.com/not-the-tracked-port",
            "https://user:pw@example.com/",
            "https://example.com:8080/p",
            "https://[2001:db8::1]/",
        ] {
            assert!(trackable(yes, &o).is_some(), "{yes}");
        }
        for no in [
            "mailto:a@example.com",
            "tel:+123",
            "sms:123",
            "#top",
            "/relative",
            "page.html",
            "javascript:alert(1)",
            "{{url}}",
            "*|UNSUB|*",
            "%%link%%",
            "https://{{host}}/x",
            "http://*|ARCHIVE|*",
            "https://",
            "http:example.com",
            "https://links.example.com/v1/track/click/abc",
            "https://LINKS.example.com./x",
            "https://links.example.com:443/x",
            "https://example.com:99999/",
            "https://exa mple.com/",
            "https://old.example.com:8443/x",
            "",
        ] {
            assert!(trackable(no, &o).is_none(), "{no}");
        }
    }

    #[test]
    fn a_non_ascii_character_across_the_scheme_length_does_not_panic() {
        // Byte 8 of each falls inside a multi-byte character.
        let o = own();
        for url in [
            "http://\u{fc}.example/",
            "http://\u{e9}t\u{e9}.example/path",
            "http://\u{1F600}.example/",
            "HTTP://\u{4e2d}\u{6587}.example",
            "http:/\u{fc}",
            "http\u{fc}",
            "https:/\u{fc}",
        ] {
            let _ = simple_verdict(url, &o);
            let _ = trackable(url, &o);
        }
        assert_eq!(
            trackable("http://\u{fc}.example/", &o).as_deref(),
            Some("http://\u{fc}.example/")
        );
        assert_eq!(
            trackable("HTTP://\u{4e2d}\u{6587}.example", &o).as_deref(),
            Some("HTTP://\u{4e2d}\u{6587}.example")
        );
        assert_eq!(trackable("http:/\u{fc}", &o), None);
        assert_eq!(strip_scheme("https://\u{fc}", "https://"), Some("\u{fc}"));
        assert_eq!(strip_scheme("http://\u{fc}", "https://"), None);
    }

    #[test]
    fn keeps_the_url_as_written_less_blanks() {
        assert_eq!(
            trackable(" https://example.com/a\n/b\t ", &own()).as_deref(),
            Some("https://example.com/a/b")
        );
    }
}
