//! dns-check's ACME rows (with `[acme] enabled`): per tracking host, the
//! CAA verdict and the certificate (its expiry, or why it is not issued);
//! [`hostname_line`], the relay-wide line for `server.hostname`'s
//! certificate; and [`issuable`], the condition `serve` checks before each
//! issuance.

use super::lookup::{normalise, Dns};
use super::records::points_here;
use super::spf::Relay;
use super::{RecordCheck, RecordKind, Status};
use crate::acme::caa::{self, CaaRecord};
use crate::config::{Config, DomainConfig};
use mail_auth::MessageAuthenticator;

/// dns-check's last line for `server.hostname`'s ACME certificate (with
/// `acme.submission_hostname`): the hostname belongs to no [[domains]]
/// entry, so it has no row of its own. None when ACME issues none.
pub(crate) fn hostname_line(config: &Config) -> Option<String> {
    if !config.acme.enabled || !config.acme.submission_hostname {
        return None;
    }
    let host = &config.server.hostname;
    let dir = &config.server.data_dir;
    let now = crate::time::now_ms();
    let mut line = match crate::acme::store::read_validity(dir, host) {
        Ok(Some((_, not_after))) if not_after > now => format!(
            "ACME certificate for {host}: expires {} (in {} days; serve renews it at two thirds of its lifetime)",
            crate::time::rfc3339(not_after),
            (not_after - now) / 86_400_000
        ),
        Ok(Some((_, not_after))) => format!(
            "ACME certificate for {host}: EXPIRED {}; serve has not managed to renew it",
            crate::time::rfc3339(not_after)
        ),
        Ok(None) => format!("ACME certificate for {host}: not issued yet"),
        Err(e) => format!("ACME certificate for {host}: unreadable: {e}"),
    };
    if let Some(e) = crate::acme::store::read_last_error(dir, host) {
        line.push_str(&format!("; last attempt: {e}"));
    }
    Some(line)
}

/// Ok when `host` points at this relay and CAA lets the CA issue for it;
/// Err says what is missing, as dns-check would.
pub async fn issuable(
    config: &Config,
    resolver: &MessageAuthenticator,
    host: &str,
) -> Result<(), String> {
    let mut dns = Dns::new(resolver);
    let relay = super::relay_of(&mut dns, config).await;
    let host = normalise(host);
    let check = points_here(&mut dns, &relay, blank(&host, &host), &host).await;
    if check.status != Status::Verified {
        return Err(not_here(&host, &check));
    }
    let (_, records) = relevant_caa(&mut dns, &host).await?;
    caa::authorises(&records, &config.acme.caa_identity)
}

fn not_here(host: &str, check: &RecordCheck) -> String {
    let why = check
        .note
        .as_deref()
        .unwrap_or("its record is not published");
    format!(
        "{host} does not point at this relay yet ({}: {why}); publish {}",
        check.status, check.expected
    )
}

/// RFC 8659 3: the CAA records of the closest name, from `host` up
/// towards the root, that has any. Returns that name and its records
/// (none anywhere: an empty list).
async fn relevant_caa(dns: &mut Dns<'_>, host: &str) -> Result<(String, Vec<CaaRecord>), String> {
    let mut name = host;
    loop {
        let found = dns.caa(name).await?;
        if !found.is_empty() {
            return Ok((name.to_string(), found));
        }
        match name.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => name = parent,
            _ => return Ok((host.to_string(), Vec::new())),
        }
    }
}

fn blank(domain: &str, host: &str) -> RecordCheck {
    RecordCheck {
        domain: domain.to_string(),
        record: RecordKind::Certificate,
        name: host.to_string(),
        record_type: "CNAME",
        expected: String::new(),
        found: Vec::new(),
        status: Status::Pending,
        required: false,
        note: None,
    }
}

/// The CAA and certificate rows of every tracking host of `domain`
/// (current and previous: links already sent use them).
pub(crate) async fn rows(
    dns: &mut Dns<'_>,
    relay: &Relay,
    config: &Config,
    domain: &DomainConfig,
) -> Vec<RecordCheck> {
    if !config.acme.enabled {
        return Vec::new();
    }
    let hosts = domain
        .tracking_host()
        .into_iter()
        .chain(domain.previous_tracking_hosts())
        .map(|h| normalise(&h));
    let name = normalise(&domain.name);
    let mut out = Vec::new();
    for host in hosts {
        let identity = &config.acme.caa_identity;
        let mut caa_row = blank(&name, &host);
        caa_row.record = RecordKind::Caa;
        caa_row.record_type = "CAA";
        let caa_verdict = match relevant_caa(dns, &host).await {
            Err(e) => {
                caa_row.status = Status::Failed;
                caa_row.note = Some(format!(
                    "DNS lookup failed ({e}); cannot tell whether CAA allows issuance"
                ));
                Err(e)
            }
            Ok((at, records)) => {
                caa_row.found = records.iter().map(|r| format!("{at}: CAA {r}")).collect();
                let verdict = caa::authorises(&records, identity);
                match &verdict {
                    Ok(()) if records.is_empty() => {
                        caa_row.status = Status::Verified;
                        caa_row.note = Some(format!(
                            "no CAA records: any CA may issue (to restrict, publish {} at {name})",
                            caa::needed(identity)
                        ));
                    }
                    Ok(()) => caa_row.status = Status::Verified,
                    Err(e) => {
                        caa_row.status = Status::Failed;
                        caa_row.expected = caa::needed(identity);
                        caa_row.name = at;
                        caa_row.note = Some(e.clone());
                    }
                }
                verdict
            }
        };
        out.push(caa_row);
        out.push(certificate_row(dns, relay, config, &name, &host, caa_verdict).await);
    }
    out
}

async fn certificate_row(
    dns: &mut Dns<'_>,
    relay: &Relay,
    config: &Config,
    domain: &str,
    host: &str,
    caa_verdict: Result<(), String>,
) -> RecordCheck {
    let mut row = blank(domain, host);
    row.record_type = "TLS";
    row.expected = "a certificate issued by ACME".into();
    let now = crate::time::now_ms();
    match crate::acme::store::read_validity(&config.server.data_dir, host) {
        Ok(Some((_, not_after))) => {
            row.found = vec![format!("expires {}", crate::time::rfc3339(not_after))];
            if not_after > now {
                row.status = Status::Verified;
                row.note = Some(format!(
                    "expires in {} days; serve renews it at two thirds of its lifetime",
                    (not_after - now) / 86_400_000
                ));
                return row;
            }
            row.status = Status::Failed;
            row.note = Some("expired: serve has not managed to renew it".into());
        }
        Ok(None) => {}
        Err(e) => {
            row.status = Status::Failed;
            row.note = Some(format!("unreadable: {e}"));
            return row;
        }
    }
    let here = points_here(dns, relay, blank(domain, host), host).await;
    let why = if here.status != Status::Verified {
        Some(not_here(host, &here))
    } else {
        caa_verdict.err()
    };
    if row.status == Status::Failed {
        if let (Some(note), Some(why)) = (&mut row.note, why) {
            note.push_str(&format!("; {why}"));
        }
        return row;
    }
    row.note = Some(match why {
        Some(why) => format!("not issued: {why}"),
        None => "not issued yet: DNS and CAA allow it, serve issues it".into(),
    });
    if let Some(e) = crate::acme::store::read_last_error(&config.server.data_dir, host) {
        row.note = row.note.map(|n| format!("{n}; last attempt: {e}"));
    }
    row
}
