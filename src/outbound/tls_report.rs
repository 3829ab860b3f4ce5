//! TLS reporting (RFC 8460) for outbound deliveries.
//!
//! Every delivery session's TLS outcome goes to [`Counter::record`], an
//! in-memory tally (no I/O on the delivery path); the reporter flushes it
//! to the store in one transaction every few seconds. Once a UTC day is
//! over, each policy domain that publishes `_smtp._tls` (`v=TLSRPTv1;
//! rua=...`) gets that day's report (section 4), gzipped, at each `rua`:
//! `mailto:` as a queued email through our own outbound (so DKIM-signed
//! like our other mail), `https:` as a POST (section 5). Each (domain,
//! day) is decided once; failed sends are retried on a bounded schedule.
//!
//! Identity (documented in README): the reports come from
//! `tlsrpt-noreply@{first [[domains]] name}`, which is also the
//! `contact-info` and the `TLS-Report-Submitter` domain's address;
//! `organization-name` is `server.hostname`.

mod record;
mod send;

pub use record::{parse_record, parse_records, Rua};
pub use send::{report_for_show, Reporter, Sender};

use super::tls_policy::{SessionResult, TlsOutcome, TlsOutcomeSink};

use crate::store::domains::CountKey;
use crate::store::Store;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

/// Sessions tallied in memory until the next flush: recording is a hash
/// map update under a lock, never a store write.
pub struct Counter {
    enabled: bool,
    pending: Mutex<HashMap<CountKey, i64>>,
    skew_ms: i64,
}

impl Counter {
    pub fn new(enabled: bool) -> Counter {
        Counter {
            enabled,
            pending: Mutex::new(HashMap::new()),
            skew_ms: clock_skew_ms(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn count(&self, o: &TlsOutcome) {
        if !self.enabled || o.policy.policy_domain.is_empty() {
            return;
        }
        // Only failures name the sending address; finding it is a few
        // syscalls, and failures are the rare case.
        let sending_ip = match o.result {
            SessionResult::Failure(..) => match o.receiving_ip {
                Some(peer) => source_ip(peer),
                None => default_source_ip(),
            },
            _ => None,
        };
        let day = day_of(o.at.saturating_add(self.skew_ms));
        let Some(key) = count_key(&day, o, sending_ip) else {
            return;
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending.entry(key).or_insert(0) += 1;
    }

    /// Writes what was tallied since the last flush, in one transaction.
    /// On a store error the counts are put back for the next flush.
    pub async fn flush(&self, store: &Store) {
        let batch: Vec<(CountKey, i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return;
        }
        let kept = batch.clone();
        let written = store.add_tls_counts(batch).await;
        if let Err(e) = written {
            tracing::warn!("storing TLS report counts (kept for the next try): {e}");
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (k, n) in kept {
                *pending.entry(k).or_insert(0) += n;
            }
        }
    }
}

impl TlsOutcomeSink for Counter {
    fn record(&self, outcome: &TlsOutcome) {
        self.count(outcome);
    }
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// The store key of one session; `None` when there is nothing to count
/// (no TLS asked for and none tried). Successes keep only the policy: the
/// report's summary counts them, and per-host detail is for failures.
pub fn count_key(day: &str, o: &TlsOutcome, sending_ip: Option<IpAddr>) -> Option<CountKey> {
    let failure = match &o.result {
        SessionResult::Success => None,
        SessionResult::Failure(kind, _) => Some(kind.as_str()),
        SessionResult::NotApplicable => return None,
    };
    let detail = |v: String| if failure.is_some() { v } else { String::new() };
    Some(CountKey {
        day: day.to_string(),
        policy_domain: o.policy.policy_domain.to_ascii_lowercase(),
        policy_type: o.policy.policy_type.to_string(),
        policy_strings: json_list(&o.policy.policy_strings),
        mx_host: json_list(&o.policy.mx_patterns),
        result_type: failure.unwrap_or_default().to_string(),
        sending_ip: detail(
            sending_ip
                .map(|i| i.to_canonical().to_string())
                .unwrap_or_default(),
        ),
        receiving_mx: detail(o.mx_host.trim_end_matches('.').to_ascii_lowercase()),
        receiving_ip: detail(
            o.receiving_ip
                .map(|i| i.to_canonical().to_string())
                .unwrap_or_default(),
        ),
    })
}

/// The local address the kernel picks towards `to` (the session's
/// `sending-mta-ip`): connecting a UDP socket sends nothing.
fn source_ip(to: IpAddr) -> Option<IpAddr> {
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect((to, 25)).ok()?;
    s.local_addr().ok().map(|a| a.ip().to_canonical())
}

/// `sending-mta-ip` (required by RFC 8460 section 4.4) of a failure before
/// any connection (a policy that could not be fetched): the address
/// towards the internet at large (documentation addresses follow the
/// default route; nothing is sent), IPv4 then IPv6; on a host with no
/// default route, where mail can only go to loopback, the loopback one.
fn default_source_ip() -> Option<IpAddr> {
    [
        IpAddr::from([192, 0, 2, 1]),
        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        IpAddr::from([127, 0, 0, 1]),
    ]
    .into_iter()
    .find_map(source_ip)
}

/// `TRACKRELAY_TEST_CLOCK_SKEW` (seconds; tests only), as the domain
/// checker reads it: lets a test end a day without waiting for it.
fn clock_skew_ms() -> i64 {
    std::env::var(crate::domains::monitor::CLOCK_SKEW_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map_or(0, |s| s.saturating_mul(1000))
}

fn now_ms(skew_ms: i64) -> i64 {
    crate::time::now_ms().saturating_add(skew_ms)
}

/// The UTC day of a time, `YYYY-MM-DD`.
pub fn day_of(ms: i64) -> String {
    crate::time::rfc3339(ms)[..10].to_string()
}

/// A `YYYY-MM-DD` day as given on the command line or in a query.
pub fn check_day(s: &str) -> Result<String, String> {
    let ok = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && crate::time::parse_time(s).is_some_and(|ms| day_of(ms) == s);
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a day (YYYY-MM-DD)"))
    }
}

/// What a report says about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMeta {
    pub organization_name: String,
    pub contact_info: String,
    pub report_id: String,
    pub day: String,
}

/// The report id of one (policy domain, day): stable, so a report sent
/// again after a crash carries the same id (RFC 8460 section 4.4 asks
/// only that it be unique; the shape follows the RFC's example).
pub fn report_id(day: &str, policy_domain: &str, hostname: &str) -> String {
    format!("{day}T00:00:00Z_{policy_domain}_{hostname}")
}

/// The RFC 8460 section 4 report of one policy domain's day, from its
/// stored counts. Pure: rows in, JSON out.
pub fn build_report(meta: &ReportMeta, rows: &[(CountKey, i64)]) -> Value {
    type PolicyKey<'a> = (&'a str, &'a str, &'a str);
    type DetailKey<'a> = (&'a str, &'a str, &'a str, &'a str);
    #[derive(Default)]
    struct Policy<'a> {
        domain: &'a str,
        ok: i64,
        failed: i64,
        details: BTreeMap<DetailKey<'a>, i64>,
    }
    let mut policies: BTreeMap<PolicyKey<'_>, Policy<'_>> = BTreeMap::new();
    for (k, n) in rows {
        let p = policies
            .entry((&k.policy_type, &k.policy_strings, &k.mx_host))
            .or_default();
        p.domain = &k.policy_domain;
        if k.result_type.is_empty() {
            p.ok += n;
        } else {
            p.failed += n;
            *p.details
                .entry((
                    &k.result_type,
                    &k.sending_ip,
                    &k.receiving_mx,
                    &k.receiving_ip,
                ))
                .or_insert(0) += n;
        }
    }
    let policies: Vec<Value> = policies
        .into_iter()
        .map(|((kind, strings, mx), p)| {
            let mut policy = Map::new();
            policy.insert("policy-type".into(), kind.into());
            let strings: Vec<String> = serde_json::from_str(strings).unwrap_or_default();
            if !strings.is_empty() {
                policy.insert("policy-string".into(), strings.into());
            }
            policy.insert("policy-domain".into(), p.domain.into());
            let mx: Vec<String> = serde_json::from_str(mx).unwrap_or_default();
            if !mx.is_empty() {
                policy.insert("mx-host".into(), mx.into());
            }
            let details: Vec<Value> = p
                .details
                .into_iter()
                .map(|((result, sending, mx, receiving), n)| {
                    let mut d = Map::new();
                    d.insert("result-type".into(), result.into());
                    for (name, v) in [
                        ("sending-mta-ip", sending),
                        ("receiving-mx-hostname", mx),
                        ("receiving-ip", receiving),
                    ] {
                        if !v.is_empty() {
                            d.insert(name.into(), v.into());
                        }
                    }
                    d.insert("failed-session-count".into(), n.into());
                    Value::Object(d)
                })
                .collect();
            let mut out = json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": p.ok,
                    "total-failure-session-count": p.failed,
                },
            });
            if !details.is_empty() {
                out["failure-details"] = details.into();
            }
            out
        })
        .collect();
    json!({
        "organization-name": meta.organization_name,
        "date-range": {
            "start-datetime": format!("{}T00:00:00Z", meta.day),
            "end-datetime": format!("{}T23:59:59Z", meta.day),
        },
        "contact-info": meta.contact_info,
        "report-id": meta.report_id,
        "policies": policies,
    })
}

/// The report as sent: its JSON, gzipped (RFC 8460 section 5).
pub fn gzip(json: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(json);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::outbound::tls_policy::{Applied, PolicyRef, ResultType};

    fn session(domain: &str, failure: Option<ResultType>, mx: &str) -> TlsOutcome {
        TlsOutcome {
            at: 1_795_392_000_000,
            applied: Applied::Opportunistic,
            policy: PolicyRef {
                policy_type: "no-policy-found",
                policy_domain: domain.into(),
                policy_strings: vec![],
                mx_patterns: vec![],
            },
            mx_host: mx.into(),
            receiving_ip: Some("127.0.0.1".parse().unwrap()),
            result: match failure {
                Some(f) => SessionResult::Failure(f, "why".into()),
                None => SessionResult::Success,
            },
            report_only: false,
        }
    }

    fn meta() -> ReportMeta {
        ReportMeta {
            organization_name: "relay.test".into(),
            contact_info: "tlsrpt-noreply@example.com".into(),
            report_id: report_id("2026-11-23", "a.test", "relay.test"),
            day: "2026-11-23".into(),
        }
    }

    #[test]
    fn the_report_sums_successes_and_groups_failures_per_host_and_type() {
        let day = "2026-11-23";
        let mut sts = session("a.test", None, "mx1.a.test");
        sts.policy.policy_type = "sts";
        sts.policy.policy_strings = vec!["version: STSv1".into(), "mode: enforce".into()];
        sts.policy.mx_patterns = vec!["*.a.test".into()];
        let mut sts_fail = sts.clone();
        sts_fail.result = SessionResult::Failure(ResultType::CertificateExpired, "x".into());
        let rows = vec![
            (
                count_key(day, &session("a.test", None, "mx1.a.test"), None).unwrap(),
                3,
            ),
            // Successes at another host fold into the same summary.
            (
                count_key(day, &session("a.test", None, "mx2.a.test"), None).unwrap(),
                2,
            ),
            (
                count_key(
                    day,
                    &session(
                        "a.test",
                        Some(ResultType::StarttlsNotSupported),
                        "mx1.a.test",
                    ),
                    Some("192.0.2.1".parse().unwrap()),
                )
                .unwrap(),
                4,
            ),
            (count_key(day, &sts, None).unwrap(), 7),
            (count_key(day, &sts_fail, None).unwrap(), 1),
        ];
        let r = build_report(&meta(), &rows);
        assert_eq!(r["organization-name"], "relay.test");
        assert_eq!(r["date-range"]["start-datetime"], "2026-11-23T00:00:00Z");
        assert_eq!(r["date-range"]["end-datetime"], "2026-11-23T23:59:59Z");
        assert_eq!(r["report-id"], "2026-11-23T00:00:00Z_a.test_relay.test");
        let policies = r["policies"].as_array().unwrap();
        assert_eq!(policies.len(), 2, "{r:#}");
        let none = policies
            .iter()
            .find(|p| p["policy"]["policy-type"] == "no-policy-found")
            .unwrap();
        assert_eq!(none["policy"]["policy-domain"], "a.test");
        assert!(none["policy"].get("policy-string").is_none());
        assert_eq!(none["summary"]["total-successful-session-count"], 5);
        assert_eq!(none["summary"]["total-failure-session-count"], 4);
        let d = &none["failure-details"][0];
        assert_eq!(d["result-type"], "starttls-not-supported");
        assert_eq!(d["receiving-mx-hostname"], "mx1.a.test");
        assert_eq!(d["receiving-ip"], "127.0.0.1");
        assert_eq!(d["failed-session-count"], 4);
        assert_eq!(d["sending-mta-ip"], "192.0.2.1");
        let sts = policies
            .iter()
            .find(|p| p["policy"]["policy-type"] == "sts")
            .unwrap();
        assert_eq!(sts["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(sts["policy"]["mx-host"][0], "*.a.test");
        assert_eq!(sts["summary"]["total-successful-session-count"], 7);
        assert_eq!(
            sts["failure-details"][0]["result-type"],
            "certificate-expired"
        );
    }

    #[test]
    fn a_day_without_failures_has_no_failure_details() {
        let rows = vec![(
            count_key("2026-11-23", &session("a.test", None, "mx"), None).unwrap(),
            1,
        )];
        let r = build_report(&meta(), &rows);
        assert!(r["policies"][0].get("failure-details").is_none(), "{r}");
    }

    #[test]
    fn the_counter_tallies_in_memory_and_off_does_nothing() {
        let c = Counter::new(true);
        let s = session(
            "A.test",
            Some(ResultType::StarttlsNotSupported),
            "MX.a.test.",
        );
        c.record(&s);
        c.record(&s);
        c.record(&session("a.test", None, "mx.a.test"));
        let mut plain = session("a.test", None, "mx.a.test");
        plain.result = SessionResult::NotApplicable;
        c.record(&plain);
        let pending = c.pending.lock().unwrap();
        assert_eq!(pending.len(), 2);
        let failed = pending
            .iter()
            .find(|(k, _)| !k.result_type.is_empty())
            .unwrap();
        assert_eq!(*failed.1, 2);
        assert_eq!(failed.0.policy_domain, "a.test");
        assert_eq!(failed.0.receiving_mx, "mx.a.test");
        // The address this host sends to 127.0.0.1 from.
        assert_eq!(failed.0.sending_ip, "127.0.0.1");
        drop(pending);
        let off = Counter::new(false);
        off.record(&s);
        assert!(off.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn a_policy_fetch_failure_names_the_mx_and_sender_and_omits_the_unknown_ip() {
        // As the runner reports it: before any connection, so no receiving
        // address, with the MX the attempt goes to.
        let mut fetch = session(
            "a.test",
            Some(ResultType::StsPolicyFetchError),
            "MX1.a.test.",
        );
        fetch.policy.policy_type = "sts";
        fetch.receiving_ip = None;
        let c = Counter::new(true);
        c.record(&fetch);
        let rows: Vec<(CountKey, i64)> = c.pending.lock().unwrap().drain().collect();
        assert_eq!(rows.len(), 1);
        let r = build_report(&meta(), &rows);
        let p = &r["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        // Nothing was fetched: no policy lines or patterns to echo.
        assert!(p["policy"].get("policy-string").is_none(), "{r:#}");
        assert!(p["policy"].get("mx-host").is_none(), "{r:#}");
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        let d = p["failure-details"][0].as_object().unwrap();
        assert_eq!(d["result-type"], "sts-policy-fetch-error");
        assert_eq!(d["receiving-mx-hostname"], "mx1.a.test");
        let sending: IpAddr = d["sending-mta-ip"].as_str().unwrap().parse().unwrap();
        assert!(!sending.is_unspecified(), "{r:#}");
        assert!(!d.contains_key("receiving-ip"), "{r:#}");
        for v in d.values() {
            assert_ne!(v, "", "no empty field: {r:#}");
        }
    }

    #[test]
    fn a_sending_address_is_found_without_a_peer() {
        assert!(default_source_ip().is_some());
    }

    #[test]
    fn days_are_checked() {
        assert_eq!(check_day("2026-11-23").unwrap(), "2026-11-23");
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "24h",
            "2026-1-01",
            "",
            "2026-11-23x",
        ] {
            assert!(check_day(bad).is_err(), "{bad}");
        }
        assert_eq!(day_of(0), "1970-01-01");
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let gz = gzip(b"{\"a\":1}");
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "{\"a\":1}");
    }
}
