//! Does a domain's SPF record authorise this relay?
//!
//! The record is evaluated by mail-auth's SPF verifier (RFC 7208 check_host,
//! macros, `exists`, `ptr`, `include`, `redirect`, the 10-lookup limit), once
//! for each address `server.hostname` resolves to, because that is where the
//! relay's mail comes from, with `postmaster@{domain}` as the envelope sender
//! and `server.hostname` as the HELO name. Only `pass` counts as covered.
//! What stays here is dns-check's own part: which record to publish (the
//! found one with `a:{server.hostname}` added) and the checks a receiver's
//! verdict does not show (several SPF records, `+all`).
//!
//! Limits, reported in the note rather than guessed at: a relay whose own
//! A/AAAA records are not published (or not resolvable) cannot be evaluated,
//! so then only a top-level `a:{server.hostname}` counts; a relay that sends
//! from an address `server.hostname` does not resolve to (NAT, a second
//! interface) is not what this checks; macros that depend on the envelope
//! sender's local part see `postmaster`.

use std::net::IpAddr;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::SpfResult as Verdict;

use super::lookup::{normalise, Dns};
use super::Status;

/// The relay as SPF sees it.
pub(crate) struct Relay {
    /// `server.hostname`, normalised.
    pub hostname: String,
    pub addrs: Vec<IpAddr>,
    /// Why `addrs` is empty when it is not simply unpublished.
    pub addr_error: Option<String>,
}

impl Relay {
    /// Says why the relay's addresses are unknown (when `addrs` is empty).
    pub fn no_addrs(&self) -> String {
        match &self.addr_error {
            Some(e) => format!(
                "the A/AAAA records of {} could not be looked up ({e})",
                self.hostname
            ),
            None => format!("{} (server.hostname) has no A/AAAA record", self.hostname),
        }
    }
}

pub(crate) struct SpfResult {
    pub status: Status,
    pub found: Vec<String>,
    pub expected: String,
    pub note: Option<String>,
}

pub(crate) fn is_spf(txt: &str) -> bool {
    let t = txt.trim_start().as_bytes();
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

pub(crate) async fn check(dns: &mut Dns<'_>, relay: &Relay, domain: &str) -> SpfResult {
    let minimal = format!("v=spf1 a:{} ~all", relay.hostname);
    let result = |status, found, expected, note: String| SpfResult {
        status,
        found,
        expected,
        note: Some(note).filter(|n| !n.is_empty()),
    };
    let txt = match dns.txt(domain).await {
        Ok(txt) => txt,
        Err(e) => {
            return result(
                Status::Failed,
                vec![],
                minimal,
                format!("DNS lookup failed ({e}); cannot tell whether the record exists"),
            )
        }
    };
    let spf: Vec<String> = txt.into_iter().filter(|t| is_spf(t)).collect();
    match spf.len() {
        0 => {
            return result(
                Status::Pending,
                spf,
                minimal,
                "no SPF record yet: publish the expected one".into(),
            )
        }
        1 => {}
        n => {
            return result(
                Status::Failed,
                spf,
                minimal,
                format!(
                    "{n} SPF records: receivers treat that as a permanent error \
                     (RFC 7208 3.2); merge them into one that includes a:{}",
                    relay.hostname
                ),
            )
        }
    }
    let record = spf[0].clone();
    let expected = suggestion(&record, &relay.hostname);
    if terms(&record).any(|t| t.eq_ignore_ascii_case("all") || t.eq_ignore_ascii_case("+all")) {
        return result(
            Status::Failed,
            spf,
            expected,
            "+all lets every server on the internet send as this domain; end with ~all or -all"
                .into(),
        );
    }

    if relay.addrs.is_empty() {
        return if names_relay(&record, &relay.hostname) {
            let note = format!(
                "{}, so the record was not evaluated; it names a:{} before any other \
                 verdict, which covers the relay once that is published",
                relay.no_addrs(),
                relay.hostname
            );
            result(Status::Verified, spf, record, note)
        } else {
            let note = format!(
                "{}, so the record cannot be evaluated for the relay's address; \
                 only a:{} would show it covers the relay",
                relay.no_addrs(),
                relay.hostname
            );
            result(Status::Failed, spf, expected, note)
        };
    }

    let sender = format!("postmaster@{domain}");
    let mut problems = Vec::new();
    for &ip in &relay.addrs {
        let params = SpfParameters::verify_mail_from(ip, &relay.hostname, &relay.hostname, &sender);
        let output = dns.resolver().verify_spf(params).await;
        let who = format!("{} ({ip})", relay.hostname);
        if let Some(why) = not_covered(output.result()) {
            problems.push(format!("does not authorise {who}: {why}"));
        }
    }
    if problems.is_empty() {
        result(Status::Verified, spf, record, String::new())
    } else {
        result(Status::Failed, spf, expected, problems.join("; "))
    }
}

/// What a receiver's verdict means for the operator; `None` for `pass`.
fn not_covered(verdict: Verdict) -> Option<&'static str> {
    Some(match verdict {
        Verdict::Pass => return None,
        Verdict::Fail => "receivers get \"fail\" and may reject its mail",
        Verdict::SoftFail => "receivers get \"softfail\" and treat its mail as suspect",
        Verdict::Neutral => "receivers get \"neutral\": the record says nothing about it",
        Verdict::None => "receivers find no SPF record (\"none\")",
        Verdict::TempError => {
            "receivers get \"temperror\": a DNS lookup needed to evaluate the record \
             failed; try again, and check the included domains answer"
        }
        Verdict::PermError => {
            "receivers get \"permerror\": the record is broken for them (a syntax \
             error, an include: or redirect= target without an SPF record, or more \
             than 10 DNS lookups, RFC 7208 4.6.4)"
        }
    })
}

/// Whether `a:{hostname}` (with a pass qualifier) comes before any other
/// term that gives a verdict on its own; used only when the relay has no
/// address to evaluate the record with.
fn names_relay(record: &str, hostname: &str) -> bool {
    for term in terms(record) {
        let (pass, body) = match term.strip_prefix(['+', '-', '~', '?']) {
            Some(body) => (term.starts_with('+'), body),
            None => (true, term),
        };
        let lower = body.to_ascii_lowercase();
        if lower == "all" {
            return false;
        }
        let Some(target) = lower.strip_prefix("a:") else {
            continue;
        };
        let name = target.split('/').next().unwrap_or_default();
        if normalise(name) == hostname {
            return pass;
        }
    }
    false
}

/// The found record with `a:{hostname}` added before its final `all` or
/// `redirect=`, so the operator keeps what already works for other senders.
fn suggestion(record: &str, hostname: &str) -> String {
    let mut out: Vec<String> = vec!["v=spf1".into()];
    let mut added = false;
    for t in terms(record) {
        let lower = t.to_ascii_lowercase();
        let is_end = lower.trim_start_matches(['+', '-', '~', '?']) == "all"
            || lower.starts_with("redirect=");
        if is_end && !added {
            out.push(format!("a:{hostname}"));
            added = true;
        }
        out.push(t.to_string());
    }
    if !added {
        out.push(format!("a:{hostname}"));
        out.push("~all".into());
    }
    out.join(" ")
}

/// The terms after "v=spf1".
fn terms(record: &str) -> impl Iterator<Item = &str> {
    record.split_ascii_whitespace().skip(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_detection() {
        assert!(is_spf("v=spf1 -all"));
        assert!(is_spf("V=SPF1"));
        assert!(!is_spf("v=spf10 -all"));
        assert!(!is_spf("google-site-verification=x"));
        assert!(!is_spf(""));
        assert!(!is_spf("v=sp\u{e9}1"));
    }

    #[test]
    fn suggestion_keeps_existing_terms() {
        assert_eq!(
            suggestion("v=spf1 include:_spf.example.net -all", "relay.example.com"),
            "v=spf1 include:_spf.example.net a:relay.example.com -all"
        );
        assert_eq!(
            suggestion("v=spf1 mx", "r.example.com"),
            "v=spf1 mx a:r.example.com ~all"
        );
        assert_eq!(
            suggestion("v=spf1 redirect=_spf.example.com", "r.example.com"),
            "v=spf1 a:r.example.com redirect=_spf.example.com"
        );
    }

    #[test]
    fn naming_the_relay_counts_only_before_a_verdict() {
        let h = "relay.example.com";
        assert!(names_relay("v=spf1 a:relay.example.com ~all", h));
        assert!(names_relay("v=spf1 mx +a:RELAY.example.com. -all", h));
        assert!(names_relay("v=spf1 a:relay.example.com/24 -all", h));
        assert!(!names_relay("v=spf1 -all a:relay.example.com", h));
        assert!(!names_relay("v=spf1 -a:relay.example.com ~all", h));
        assert!(!names_relay("v=spf1 a:other.example.com ~all", h));
        assert!(!names_relay("v=spf1 ip4:127.0.0.1 ~all", h));
        assert!(!names_relay("v=spf1 a:relay.example.com.evil.test ~all", h));
        assert!(!names_relay("v=spf1", h));
    }

    #[test]
    fn only_pass_is_covered() {
        assert_eq!(not_covered(Verdict::Pass), None);
        for v in [
            Verdict::Fail,
            Verdict::SoftFail,
            Verdict::Neutral,
            Verdict::None,
            Verdict::TempError,
            Verdict::PermError,
        ] {
            assert!(not_covered(v).is_some(), "{v:?}");
        }
    }
}
