//! Does a domain's SPF record authorise this relay?
//!
//! The record is evaluated the way a receiver would (RFC 7208 4.6 and 5),
//! once for each address `server.hostname` resolves to, because that is
//! where the relay's mail comes from: the first matching mechanism decides,
//! `include:` and `redirect=` are followed, and the 10-lookup limit applies.
//! `a:{server.hostname}` and an `mx` whose exchange is `server.hostname`
//! match by name, so a relay whose own A/AAAA records are not published yet
//! is still recognised.
//!
//! Limits, all reported in the note rather than guessed at: macros (`%{i}`),
//! `exists:` and `ptr` are not evaluated (they need the receiver's view of a
//! real connection); a relay that sends from an address that
//! `server.hostname` does not resolve to (NAT, a second interface) is not
//! what this checks; void-lookup limits are not counted.

use std::net::IpAddr;

use ipnet::IpNet;

use super::lookup::{normalise, Dns};
use super::Status;

/// Receivers stop after this many DNS-querying terms (RFC 7208 4.6.4).
const MAX_LOOKUPS: u32 = 10;
/// MX hosts whose addresses are compared (RFC 7208 4.6.4 allows 10).
const MAX_MX: usize = 10;

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

    let probes: Vec<Option<IpAddr>> = if relay.addrs.is_empty() {
        vec![None]
    } else {
        relay.addrs.iter().copied().map(Some).collect()
    };
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    for ip in probes {
        let mut eval = Eval {
            dns: &mut *dns,
            relay,
            lookups: 0,
            skipped: Vec::new(),
        };
        let outcome = eval.record(domain, &record, ip, 0).await;
        for s in eval.skipped {
            if !skipped.contains(&s) {
                skipped.push(s);
            }
        }
        let who = match ip {
            Some(ip) => format!("{} ({ip})", relay.hostname),
            None => relay.hostname.clone(),
        };
        match outcome {
            Outcome::Pass => {}
            Outcome::NotPass(why) => problems.push(format!("does not authorise {who}: {why}")),
            Outcome::Error(why) => problems.push(format!("{why} (checking {who})")),
        }
    }
    let mut notes = problems.clone();
    if !skipped.is_empty() {
        notes.push(format!("not evaluated: {}", skipped.join(", ")));
    }
    if problems.is_empty() {
        if relay.addrs.is_empty() {
            notes.push(format!(
                "{}, so only mechanisms naming it were matched",
                relay.no_addrs()
            ));
        }
        result(Status::Verified, spf, record, notes.join("; "))
    } else {
        result(Status::Failed, spf, expected, notes.join("; "))
    }
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

enum Outcome {
    Pass,
    /// fail, softfail or neutral, with the reason.
    NotPass(String),
    /// temperror or permerror.
    Error(String),
}

struct Eval<'d, 'a> {
    dns: &'d mut Dns<'a>,
    relay: &'d Relay,
    lookups: u32,
    skipped: Vec<String>,
}

impl Eval<'_, '_> {
    /// RFC 7208 4.6: the first mechanism that matches decides; `redirect=`
    /// applies only when none did.
    async fn record(
        &mut self,
        domain: &str,
        record: &str,
        ip: Option<IpAddr>,
        depth: u32,
    ) -> Outcome {
        let mut redirect = None;
        for term in terms(record) {
            if let Some((name, value)) = modifier(term) {
                if name.eq_ignore_ascii_case("redirect") {
                    redirect = Some(value);
                }
                continue;
            }
            let (qualifier, body) = match term.as_bytes().first() {
                Some(&q @ (b'+' | b'-' | b'~' | b'?')) => (q, &term[1..]),
                _ => (b'+', term),
            };
            let matched = match self.mechanism(domain, body, ip, depth).await {
                Ok(m) => m,
                Err(e) => return Outcome::Error(e),
            };
            if matched {
                return match qualifier {
                    b'+' => Outcome::Pass,
                    b'-' => Outcome::NotPass(format!("{term} matches first (fail)")),
                    b'~' => Outcome::NotPass(format!("{term} matches first (softfail)")),
                    _ => Outcome::NotPass(format!("{term} matches first (neutral)")),
                };
            }
        }
        match redirect {
            Some(target) => {
                if let Err(e) = self.count() {
                    return Outcome::Error(e);
                }
                match self.fetch(target).await {
                    Ok(next) => Box::pin(self.record(target, &next, ip, depth + 1)).await,
                    Err(e) => Outcome::Error(format!("redirect={target}: {e}")),
                }
            }
            None => Outcome::NotPass("no mechanism matches (neutral)".into()),
        }
    }

    /// Whether one mechanism (without its qualifier) matches the relay.
    async fn mechanism(
        &mut self,
        domain: &str,
        body: &str,
        ip: Option<IpAddr>,
        depth: u32,
    ) -> Result<bool, String> {
        let split = body.find([':', '/']).unwrap_or(body.len());
        let (name, rest) = body.split_at(split);
        match name.to_ascii_lowercase().as_str() {
            "all" if rest.is_empty() => Ok(true),
            "ip4" | "ip6" => {
                let net = rest
                    .strip_prefix(':')
                    .and_then(parse_net)
                    .filter(|n| matches!(n, IpNet::V4(_)) == (name.eq_ignore_ascii_case("ip4")))
                    .ok_or_else(|| format!("{body} is not a valid {name} mechanism (permerror)"))?;
                Ok(ip.is_some_and(|ip| net.contains(&ip)))
            }
            "include" => {
                let target = rest
                    .strip_prefix(':')
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| format!("{body}: include needs a domain (permerror)"))?;
                self.count()?;
                if self.skip_macro(body, target) {
                    return Ok(false);
                }
                let inner = self
                    .fetch(target)
                    .await
                    .map_err(|e| format!("include:{target}: {e}"))?;
                match Box::pin(self.record(target, &inner, ip, depth + 1)).await {
                    Outcome::Pass => Ok(true),
                    Outcome::NotPass(_) => Ok(false),
                    Outcome::Error(e) => Err(e),
                }
            }
            "a" | "mx" => {
                let (target, c4, c6) = domain_and_cidr(rest)
                    .ok_or_else(|| format!("{body} is not a valid mechanism (permerror)"))?;
                let target = target.unwrap_or(domain);
                self.count()?;
                if self.skip_macro(body, target) {
                    return Ok(false);
                }
                if name.eq_ignore_ascii_case("a") {
                    self.host_matches(target, ip, c4, c6).await
                } else {
                    let mx = self
                        .dns
                        .mx(target)
                        .await
                        .map_err(|e| format!("{body}: DNS lookup failed ({e})"))?;
                    for (_, exchange) in mx.into_iter().take(MAX_MX) {
                        if self.host_matches(&exchange, ip, c4, c6).await? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
            }
            "ptr" | "exists" => {
                self.count()?;
                self.skipped.push(body.to_string());
                Ok(false)
            }
            _ => Err(format!("unknown mechanism {body:?} (permerror)")),
        }
    }

    /// `a` semantics for one host: the relay's own name matches outright;
    /// otherwise its addresses must cover the sending address.
    async fn host_matches(
        &mut self,
        host: &str,
        ip: Option<IpAddr>,
        c4: u8,
        c6: u8,
    ) -> Result<bool, String> {
        if normalise(host) == self.relay.hostname {
            return Ok(true);
        }
        let Some(ip) = ip else {
            return Ok(false);
        };
        let addrs = self
            .dns
            .addrs(host)
            .await
            .map_err(|e| format!("{host}: DNS lookup failed ({e})"))?;
        Ok(addrs.into_iter().any(|a| {
            let prefix = if a.is_ipv4() { c4 } else { c6 };
            IpNet::new(a, prefix).is_ok_and(|net| net.contains(&ip))
        }))
    }

    /// The single SPF record of an included or redirected domain.
    async fn fetch(&mut self, domain: &str) -> Result<String, String> {
        let txt = self
            .dns
            .txt(domain)
            .await
            .map_err(|e| format!("DNS lookup failed ({e}), a temperror"))?;
        let mut spf = txt.into_iter().filter(|t| is_spf(t));
        match (spf.next(), spf.next()) {
            (Some(one), None) => Ok(one),
            (None, _) => Err("no SPF record there (permerror)".into()),
            (Some(_), Some(_)) => Err("more than one SPF record there (permerror)".into()),
        }
    }

    fn count(&mut self) -> Result<(), String> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            Err(format!(
                "needs more than {MAX_LOOKUPS} DNS lookups, which receivers treat as a \
                 permanent error (RFC 7208 4.6.4)"
            ))
        } else {
            Ok(())
        }
    }

    fn skip_macro(&mut self, body: &str, target: &str) -> bool {
        let has_macro = target.contains('%');
        if has_macro {
            self.skipped.push(body.to_string());
        }
        has_macro
    }
}

/// `name=value`, where the name starts with a letter (RFC 7208 12).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some((name, value))
}

/// `[:domain][/cidr4][//cidr6]`, the tail of `a` and `mx`.
fn domain_and_cidr(rest: &str) -> Option<(Option<&str>, u8, u8)> {
    let (domain, cidrs) = match rest.strip_prefix(':') {
        Some(r) => {
            let at = r.find('/').unwrap_or(r.len());
            let d = &r[..at];
            if d.is_empty() {
                return None;
            }
            (Some(d), &r[at..])
        }
        None => (None, rest),
    };
    let (c4, c6) = match cidrs.find("//") {
        Some(at) => (&cidrs[..at], Some(&cidrs[at + 2..])),
        None => (cidrs, None),
    };
    let c4 = match c4.strip_prefix('/') {
        Some(n) => n.parse().ok().filter(|n| *n <= 32)?,
        None if c4.is_empty() => 32,
        None => return None,
    };
    let c6 = match c6 {
        Some(n) => n.parse().ok().filter(|n| *n <= 128)?,
        None => 128,
    };
    Some((domain, c4, c6))
}

/// `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a host route).
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
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
    fn cidr_tails() {
        assert_eq!(domain_and_cidr(""), Some((None, 32, 128)));
        assert_eq!(domain_and_cidr(":x.org"), Some((Some("x.org"), 32, 128)));
        assert_eq!(domain_and_cidr(":x.org/24"), Some((Some("x.org"), 24, 128)));
        assert_eq!(domain_and_cidr("//64"), Some((None, 32, 64)));
        assert_eq!(domain_and_cidr("/24//64"), Some((None, 24, 64)));
        assert_eq!(domain_and_cidr("/33"), None);
        assert_eq!(domain_and_cidr(":"), None);
        assert_eq!(domain_and_cidr("x"), None);
    }

    #[test]
    fn nets() {
        assert!(parse_net("127.0.0.1").is_some());
        assert!(parse_net("127.0.0.0/8").is_some());
        assert!(parse_net("::1/128").is_some());
        assert!(parse_net("nope").is_none());
    }
}
