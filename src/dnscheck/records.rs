//! The per-record checks other than SPF: DKIM, DMARC, the return-path MX
//! and the tracking host.

use base64::Engine;

use super::lookup::{normalise, Dns};
use super::spf::Relay;
use super::{RecordCheck, RecordKind, Status};
use crate::config::{Config, DkimConfig, DomainConfig};
use crate::outbound::DkimKey;

fn row(
    domain: &DomainConfig,
    record: RecordKind,
    name: String,
    rtype: &'static str,
) -> RecordCheck {
    RecordCheck {
        domain: normalise(&domain.name),
        record,
        name,
        record_type: rtype,
        expected: String::new(),
        found: Vec::new(),
        status: Status::Pending,
        required: true,
        note: None,
    }
}

fn lookup_failed(mut check: RecordCheck, e: String) -> RecordCheck {
    check.status = Status::Failed;
    check.note = Some(format!(
        "DNS lookup failed ({e}); cannot tell whether the record exists"
    ));
    check
}

fn set(mut check: RecordCheck, status: Status, note: impl Into<String>) -> RecordCheck {
    let note = note.into();
    check.status = status;
    check.note = (!note.is_empty()).then_some(note);
    check
}

/// RFC 6376 3.6.1: the TXT record must carry the same public key as the
/// private key we sign with; other tags only have to agree with it.
pub(crate) async fn dkim(
    dns: &mut Dns<'_>,
    config: &Config,
    domain: &DomainConfig,
    entry: &DkimConfig,
) -> RecordCheck {
    let name = format!("{}._domainkey.{}", entry.selector, normalise(&domain.name));
    let mut check = row(domain, RecordKind::Dkim, name.clone(), "TXT");
    let found = dns.txt(&name).await;
    if let Ok(list) = &found {
        check.found = list.clone();
    }
    let path = config.dkim_key_path(&domain.name, entry);
    let key = match DkimKey::load(&domain.name, &entry.selector, &path) {
        Ok(key) => key,
        Err(e) => {
            // Still shows what is published, so a record put up ahead of
            // the key is visible.
            check.expected = "v=DKIM1; k=rsa; p=(the public key, once the key exists)".into();
            let missing = matches!(path.try_exists(), Ok(false));
            let why = match (missing, &entry.private_key) {
                (true, None) => format!(
                    "the managed key {} is not generated yet: `trackrelay serve` creates it at \
                     first start and logs the record to publish",
                    path.display()
                ),
                (true, Some(_)) => format!(
                    "key file {} does not exist; create it with `trackrelay dkim-keygen \
                     --domain {} --selector {} --out {}`",
                    path.display(),
                    domain.name,
                    entry.selector,
                    path.display()
                ),
                (false, _) => format!(
                    "{e}; run dns-check as a user that can read the key (the one trackrelay runs as)"
                ),
            };
            return set(check, Status::NotStarted, why);
        }
    };
    check.expected = key.dns_record();
    let list = match found {
        Ok(list) => list,
        Err(e) => return lookup_failed(check, e),
    };
    let (status, note) = compare_dkim(&key, &path.display().to_string(), &list);
    set(check, status, note)
}

fn compare_dkim(key: &DkimKey, path: &str, published: &[String]) -> (Status, String) {
    if published.is_empty() {
        return (Status::Pending, "not published yet".into());
    }
    let records: Vec<Vec<(String, String)>> = published
        .iter()
        .map(|r| tags(r))
        .filter(|t| t.iter().any(|(n, _)| n == "p"))
        .collect();
    let record = match records.as_slice() {
        [] => {
            return (
                Status::Failed,
                "TXT record here, but not a DKIM key (no p= tag)".into(),
            )
        }
        [one] => one,
        more => {
            return (
                Status::Failed,
                format!(
                    "{} DKIM key records at this name; verifiers may use any of them, \
                     so keep only the expected one",
                    more.len()
                ),
            )
        }
    };
    let tag = |name: &str| {
        record
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(v) = tag("v") {
        if v != "DKIM1" {
            return (Status::Failed, format!("v={v}: must be v=DKIM1"));
        }
    }
    let want = tags(&key.dns_record());
    let want_k = want
        .iter()
        .find(|(n, _)| n == "k")
        .map_or("rsa", |(_, v)| v);
    let have_k = tag("k").unwrap_or("rsa");
    if !have_k.eq_ignore_ascii_case(want_k) {
        return (
            Status::Failed,
            format!("k={have_k}, but the key in {path} is {want_k}"),
        );
    }
    let have_p = tag("p").unwrap_or_default();
    if have_p.is_empty() {
        return (Status::Failed, "p= is empty: the key is revoked".into());
    }
    let want_p = want.iter().find(|(n, _)| n == "p").map_or("", |(_, v)| v);
    let b64 = base64::engine::general_purpose::STANDARD;
    match (b64.decode(have_p), b64.decode(want_p)) {
        (Ok(have), Ok(want)) if have == want => (Status::Verified, String::new()),
        (Err(e), _) => (Status::Failed, format!("p= is not valid base64 ({e})")),
        _ => (
            Status::Failed,
            format!(
                "the published key is not the public part of {path} (an old or different key?)"
            ),
        ),
    }
}

/// `tag=value; ...` (RFC 6376 3.2), names lower-cased, whitespace removed
/// from values (base64 may be folded).
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(n, v)| {
            (
                n.trim().to_ascii_lowercase(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

/// RFC 7489 6.6.3: exactly one record starting with `v=DMARC1`.
pub(crate) async fn dmarc(dns: &mut Dns<'_>, domain: &DomainConfig) -> RecordCheck {
    let name = format!("_dmarc.{}", normalise(&domain.name));
    let mut check = row(domain, RecordKind::Dmarc, name.clone(), "TXT");
    check.required = false;
    check.expected = "v=DMARC1; p=none".into();
    let list = match dns.txt(&name).await {
        Ok(list) => list,
        Err(e) => return lookup_failed(check, e),
    };
    // Anything that tries to be DMARC counts, so "v=dmarc1" or a missing
    // semicolon is reported as malformed instead of as absent.
    let dmarc: Vec<String> = list
        .into_iter()
        .filter(|r| {
            let t = r.trim_start().to_ascii_lowercase();
            t.starts_with('v') && t.contains("dmarc")
        })
        .collect();
    check.found = dmarc.clone();
    match dmarc.as_slice() {
        [] => set(check, Status::Pending, "no DMARC record yet (recommended)"),
        [one] => match dmarc_problem(one) {
            Ok(note) => set(check, Status::Verified, note),
            Err(why) => set(check, Status::Failed, format!("malformed: {why}")),
        },
        more => set(
            check,
            Status::Failed,
            format!(
                "{} DMARC records: receivers then apply none (RFC 7489 6.6.3); keep one",
                more.len()
            ),
        ),
    }
}

/// Ok(advice) when the record is valid, Err(why) when not.
fn dmarc_problem(record: &str) -> Result<String, String> {
    let mut parts = record.split(';').map(str::trim).filter(|t| !t.is_empty());
    let version = parts.next().unwrap_or_default();
    let version_ok = version
        .split_once('=')
        .is_some_and(|(n, v)| n.trim() == "v" && v.trim() == "DMARC1");
    if !version_ok {
        return Err(format!(
            "starts with {version:?}, must start with \"v=DMARC1;\""
        ));
    }
    let mut policy = None;
    for part in parts {
        let Some((name, value)) = part.split_once('=') else {
            return Err(format!("{part:?} is not tag=value (a missing \";\"?)"));
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        let lower = value.to_ascii_lowercase();
        let valid = match name.as_str() {
            "p" | "sp" => matches!(lower.as_str(), "none" | "quarantine" | "reject"),
            "adkim" | "aspf" => matches!(lower.as_str(), "r" | "s"),
            "pct" => value.parse::<u8>().is_ok_and(|n| n <= 100),
            "rua" | "ruf" => !value.is_empty(),
            _ => true,
        };
        if !valid {
            return Err(format!("{name}={value} is not a valid value"));
        }
        if name == "p" {
            policy = Some(lower);
        }
    }
    match policy.as_deref() {
        None => Err("no p= policy (p=none, quarantine or reject)".into()),
        Some("none") => Ok(
            "p=none: receivers only report; move to quarantine or reject once reports look clean"
                .into(),
        ),
        Some(_) => Ok(String::new()),
    }
}

/// Bounces to the custom return path must reach this relay.
pub(crate) async fn return_path_mx(
    dns: &mut Dns<'_>,
    relay: &Relay,
    domain: &DomainConfig,
    rp_domain: &str,
) -> RecordCheck {
    let mut check = row(
        domain,
        RecordKind::ReturnPathMx,
        rp_domain.to_string(),
        "MX",
    );
    check.expected = format!("10 {}", relay.hostname);
    let mx = match dns.mx(rp_domain).await {
        Ok(mx) => mx,
        Err(e) => return lookup_failed(check, e),
    };
    check.found = mx.iter().map(|(p, h)| format!("{p} {h}")).collect();
    if mx.is_empty() {
        return set(check, Status::Pending, "no MX record yet");
    }
    if mx.iter().any(|(_, h)| h.is_empty()) {
        return set(
            check,
            Status::Failed,
            "null MX (RFC 7505): the domain says it takes no mail, so bounces cannot reach it",
        );
    }
    let others: Vec<&str> = mx
        .iter()
        .map(|(_, h)| h.as_str())
        .filter(|h| *h != relay.hostname)
        .collect();
    if others.len() == mx.len() {
        set(
            check,
            Status::Failed,
            format!("points to {}, not {}", others.join(", "), relay.hostname),
        )
    } else if others.is_empty() {
        set(check, Status::Verified, "")
    } else {
        set(
            check,
            Status::Verified,
            format!("also {}: some bounces may go there", others.join(", ")),
        )
    }
}

/// Tracked links point at the tracking host, so it must reach this relay:
/// an alias of `server.hostname`, or the same addresses.
pub(crate) async fn tracking(
    dns: &mut Dns<'_>,
    relay: &Relay,
    domain: &DomainConfig,
) -> Option<RecordCheck> {
    let Some(host) = domain.tracking_host().map(|h| normalise(&h)) else {
        if !(domain.open_tracking || domain.click_tracking) {
            return None;
        }
        let mut check = row(domain, RecordKind::Tracking, String::new(), "CNAME");
        check.expected = format!("CNAME {}", relay.hostname);
        check.required = false;
        return Some(set(
            check,
            Status::NotStarted,
            "open/click tracking is on but tracking_subdomain is not set, so tracking is off \
             for this domain; set it (e.g. \"links\") and publish the CNAME",
        ));
    };
    let check = row(domain, RecordKind::Tracking, host.clone(), "CNAME");
    Some(points_here(dns, relay, check, &host).await)
}

/// Whether `host` points at this relay (a CNAME to its hostname, or only
/// its addresses): the tracking record's check, also the condition for
/// ACME issuance.
pub(crate) async fn points_here(
    dns: &mut Dns<'_>,
    relay: &Relay,
    mut check: RecordCheck,
    host: &str,
) -> RecordCheck {
    check.expected = format!("CNAME {}", relay.hostname);
    let cname = match dns.cname(host).await {
        Ok(c) => c,
        Err(e) => return lookup_failed(check, e),
    };
    if cname.contains(&relay.hostname) {
        check.found = cname.iter().map(|c| format!("CNAME {c}")).collect();
        return set(check, Status::Verified, "");
    }
    let addrs = match dns.addrs(host).await {
        Ok(a) => a,
        Err(e) => return lookup_failed(check, e),
    };
    check.found = cname.iter().map(|c| format!("CNAME {c}")).collect();
    check.found.extend(addrs.iter().map(|a| match a {
        std::net::IpAddr::V4(_) => format!("A {a}"),
        std::net::IpAddr::V6(_) => format!("AAAA {a}"),
    }));
    if addrs.is_empty() && cname.is_empty() {
        return set(check, Status::Pending, "not published yet");
    }
    if relay.addrs.is_empty() {
        return set(
            check,
            Status::Failed,
            format!(
                "{}, so there is nothing to compare with; publish it, or make this host \
                 a CNAME to it",
                relay.no_addrs()
            ),
        );
    }
    let strays: Vec<String> = addrs
        .iter()
        .filter(|a| !relay.addrs.contains(a))
        .map(|a| a.to_string())
        .collect();
    if !addrs.is_empty() && strays.is_empty() {
        return set(
            check,
            Status::Verified,
            format!("same addresses as {}", relay.hostname),
        );
    }
    let target = match cname.first() {
        Some(c) => format!("is an alias of {c}"),
        None => format!("resolves to {}", strays.join(", ")),
    };
    set(
        check,
        Status::Failed,
        format!(
            "{target}, not {} ({}); fine only if a proxy or CDN there forwards to trackrelay",
            relay.hostname,
            relay
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmarc_records() {
        assert!(dmarc_problem("v=DMARC1; p=reject; rua=mailto:d@example.com").is_ok());
        assert!(dmarc_problem("v=DMARC1; p=none;")
            .unwrap()
            .contains("p=none"));
        assert!(dmarc_problem("v=DMARC1 p=none").is_err());
        assert!(dmarc_problem("v=dmarc1; p=none").is_err());
        assert!(dmarc_problem("v=DMARC1; p=maybe").is_err());
        assert!(dmarc_problem("v=DMARC1; rua=mailto:x@example.com").is_err());
        assert!(dmarc_problem("v=DMARC1; p=none; pct=101").is_err());
    }

    #[test]
    fn tag_lists() {
        let t = tags("v=DKIM1; k=rsa;\tp=AB CD\r\n EF;");
        assert_eq!(
            t,
            vec![
                ("v".into(), "DKIM1".into()),
                ("k".into(), "rsa".into()),
                ("p".into(), "ABCDEF".into())
            ]
        );
    }
}
