//! MTA-STS (RFC 8461) through the real binary: the recipient domain's MX
//! and policy host resolve to loopback through a DNS stub, the policy is
//! served over HTTPS by a test CA's certificate (trusted through
//! `delivery.extra_ca_file`), and the MX presents certificates from the
//! same CA over STARTTLS.

mod harness;
mod support;

use harness::*;
use serde_json::Value;
use std::time::Duration;
use support::dns::DnsStub;
use support::mx::{MxConfig, TestMx};
use support::sts::{PolicyServer, TestCa};

const PORT_ENV: &str = "TRACKRELAY_TEST_MTA_STS_PORT";
const WAIT: Duration = Duration::from_secs(40);

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

struct Setup {
    dns: DnsStub,
    ca: TestCa,
    server: PolicyServer,
    mx: TestMx,
    relay: Relay,
}

/// example.net: MX mx.example.net (127.0.0.1), a `_mta-sts` TXT with id 1,
/// the policy `policy` at mta-sts.example.net, and an MX built by
/// `mx_config` from the CA. Retries every second, bounces after 3 s.
async fn setup(policy: &str, mx_config: impl FnOnce(&TestCa) -> MxConfig) -> Setup {
    let dns = DnsStub::start().await;
    let localhost = "127.0.0.1".parse().unwrap();
    dns.mx("example.net", 10, "mx.example.net")
        .a("mx.example.net", localhost)
        .a("mta-sts.example.net", localhost)
        .txt("_mta-sts.example.net", "v=STSv1; id=1");
    let ca = TestCa::new();
    let server = PolicyServer::start(&ca, "mta-sts.example.net", policy).await;
    let mx = TestMx::start(mx_config(&ca)).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(ca_dir.path());
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "resolver = \"{}\"\nmx_port = {}\nextra_ca_file = \"{}\"\n\
             retry = [\"1s\"]\nexpire_after = \"3s\"",
            dns.resolver(),
            mx.addr().port(),
            ca_file.display()
        ),
        api_token: true,
        ..Options::default()
    });
    // The CA file must outlive the relay's reads of it (start-up only).
    std::mem::forget(ca_dir);
    // Started again with the policy host's port, known only now.
    relay.stop();
    relay
        .spawn_with(&[], &[(PORT_ENV, &server.port().to_string())])
        .unwrap();
    Setup {
        dns,
        ca,
        server,
        mx,
        relay,
    }
}

/// An MX for mx.example.net with a certificate from the test CA for `names`.
fn mx_with_cert(ca: &TestCa, names: &[&str]) -> MxConfig {
    let issued = ca.issue(names);
    MxConfig {
        hostname: "mx.example.net".into(),
        certificate: Some((issued.chain_pem, issued.key_pem)),
        ..MxConfig::default()
    }
}

fn send(relay: &Relay, to: &str) -> String {
    let msg = message("news@example.com", to, "sts", "hello");
    submit(relay, "news@example.com", &[to], &msg)
}

fn wait_status(relay: &Relay, id: &str, want: &str) {
    wait_for(&format!("status {want}"), WAIT, || {
        relay.recipient_status(id) == want
    });
}

/// (type, detail) of the email's delivery events, oldest first.
fn queue_policy(relay: &Relay, id: &str) -> Option<String> {
    relay
        .db()
        .query_row(
            "SELECT tls_policy FROM recipients WHERE email_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

fn metrics(relay: &Relay) -> String {
    let auth = format!("Bearer {API_TOKEN}");
    let (code, _, body) = http(relay.api, "GET", "/metrics", &[("Authorization", &auth)]);
    assert_eq!(code, 200);
    String::from_utf8(body).unwrap()
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{metrics}"))
}

/// Deferred with a reason naming MTA-STS, then bounced at expiry, and the
/// MX never saw a transaction (so nothing went out in plaintext).
fn assert_deferred_then_bounced(s: &Setup, id: &str, reason: &str) {
    wait_status(&s.relay, id, "bounced");
    let evs = s.relay.delivery_events(id);
    let (first, detail) = &evs[0];
    assert_eq!(first, "email.delivery_delayed", "{evs:?}");
    let response = detail["response"].as_str().unwrap();
    assert!(response.contains("MTA-STS"), "{response}");
    assert!(response.contains(reason), "{response}");
    assert_eq!(detail["tls_policy"], "mta-sts", "{detail}");
    let (last, detail) = evs.last().unwrap();
    assert_eq!(last, "email.bounced", "{evs:?}");
    assert!(
        detail["response"].as_str().unwrap().contains(reason),
        "{detail}"
    );
    assert_eq!(queue_policy(&s.relay, id).as_deref(), Some("mta-sts"));
    assert!(s.mx.received().is_empty());
    let commands = s.mx.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.starts_with("MAIL") || c.starts_with("RCPT") || c.starts_with("DATA")),
        "a transaction was started: {commands:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_matching_mx_and_valid_certificate_delivers_over_verified_tls() {
    let s = setup(&policy("enforce", "mx.example.net"), |ca| {
        mx_with_cert(ca, &["mx.example.net"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    wait_status(&s.relay, &id, "delivered");
    let got = s.mx.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls.is_some(), "delivered without TLS");
    let evs = s.relay.delivery_events(&id);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "email.delivered");
    assert_eq!(evs[0].1["tls_policy"], "mta-sts", "{:?}", evs[0].1);
    assert!(evs[0].1.get("tls_policy_failure").is_none());
    assert_eq!(queue_policy(&s.relay, &id).as_deref(), Some("mta-sts"));
    let auth = format!("Bearer {API_TOKEN}");
    let (code, _, body) = http(
        s.relay.api,
        "GET",
        &format!("/v1/emails/{id}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(code, 200);
    let email: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(email["recipients"][0]["tls_policy"], "mta-sts", "{email}");
    // The policy was fetched over HTTPS from the policy host, once.
    let requests = s.server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"));
    assert!(requests[0]
        .to_ascii_lowercase()
        .contains("host: mta-sts.example.net"));
    let m = metrics(&s.relay);
    assert!(
        m.contains("trackrelay_tls_policy_sessions_total{policy=\"mta-sts\",result=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("trackrelay_tls_policy_sts_lookups_total{result=\"fetched\"} 1"),
        "{m}"
    );
    let cached: i64 = s
        .relay
        .db()
        .query_row(
            "SELECT COUNT(*) FROM mta_sts_policies WHERE domain = 'example.net' AND policy_id = '1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cached, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_wrong_certificate_defers_then_bounces() {
    // A certificate from the trusted CA, but for another name.
    let s = setup(&policy("enforce", "mx.example.net"), |ca| {
        mx_with_cert(ca, &["other.example.org"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    assert_deferred_then_bounced(&s, &id, "certificate");
    // It got as far as the handshake, no further.
    assert!(s.mx.connections().iter().any(|c| c.tls_failed));
    let m = metrics(&s.relay);
    let failures = counter(
        &m,
        "trackrelay_tls_policy_sessions_total{policy=\"mta-sts\",result=\"failure\"}",
    );
    assert!(failures >= 2, "one per attempt: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_untrusted_certificate_defers() {
    // Self-signed for the right name: not trusted.
    let s = setup(&policy("enforce", "mx.example.net"), |_| MxConfig {
        hostname: "mx.example.net".into(),
        ..MxConfig::default()
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    assert_deferred_then_bounced(&s, &id, "certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_non_matching_mx_defers_then_bounces() {
    let s = setup(&policy("enforce", "*.mail.example.net"), |ca| {
        mx_with_cert(ca, &["mx.example.net"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    assert_deferred_then_bounced(&s, &id, "matches none of the policy's mx patterns");
    assert!(
        s.mx.connections().is_empty(),
        "a refused MX is not even connected to"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_stripped_starttls_defers_then_bounces() {
    let s = setup(&policy("enforce", "mx.example.net"), |ca| MxConfig {
        starttls: false,
        ..mx_with_cert(ca, &["mx.example.net"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    assert_deferred_then_bounced(&s, &id, "STARTTLS not offered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_mode_delivers_and_records_the_failure() {
    let s = setup(&policy("testing", "mx.example.net"), |ca| {
        mx_with_cert(ca, &["other.example.org"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    wait_status(&s.relay, &id, "delivered");
    let got = s.mx.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls.is_some(), "testing mode still uses TLS");
    let evs = s.relay.delivery_events(&id);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let detail = &evs[0].1;
    // The domain's own policy governed; MTA-STS only reported.
    assert_eq!(detail["tls_policy"], "opportunistic", "{detail}");
    assert_eq!(
        detail["tls_policy_failure"]["result_type"], "certificate-host-mismatch",
        "{detail}"
    );
    let m = metrics(&s.relay);
    assert!(
        m.contains(
            "trackrelay_tls_policy_sessions_total{policy=\"opportunistic\",result=\"report_only_failure\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_policy_survives_the_policy_host_going_down() {
    let mut s = setup(&policy("enforce", "mx.example.net"), |ca| {
        mx_with_cert(ca, &["mx.example.net"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    wait_status(&s.relay, &id, "delivered");
    assert_eq!(s.server.requests().len(), 1);
    // The policy host goes down, and a new TXT id asks for a fetch.
    s.server.stop();
    let port = s.server.port();
    wait_for("policy host down", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    s.dns
        .remove("_mta-sts.example.net")
        .txt("_mta-sts.example.net", "v=STSv1; id=2");
    let id = send(&s.relay, "b@example.net");
    wait_status(&s.relay, &id, "delivered");
    let evs = s.relay.delivery_events(&id);
    assert_eq!(evs[0].1["tls_policy"], "mta-sts", "{:?}", evs[0].1);
    assert!(
        s.relay.log().contains("keeping the cached policy"),
        "the fetch was not attempted"
    );
    let m = metrics(&s.relay);
    assert!(
        m.contains("trackrelay_tls_policy_sts_lookups_total{result=\"kept_cached\"} 1"),
        "{m}"
    );
    let _ = &s.ca;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_the_domain_setting_applies() {
    let s = setup(&policy("enforce", "mx.example.net"), |ca| {
        mx_with_cert(ca, &["mx.example.net"])
    })
    .await;
    s.dns.remove("_mta-sts.example.net");
    let id = send(&s.relay, "a@example.net");
    wait_status(&s.relay, &id, "delivered");
    let evs = s.relay.delivery_events(&id);
    assert_eq!(evs[0].1["tls_policy"], "opportunistic", "{:?}", evs[0].1);
    assert!(s.server.requests().is_empty(), "no TXT record, no fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_txt_id_fetches_the_policy_again() {
    let s = setup(&policy("enforce", "mx.example.net"), |ca| {
        mx_with_cert(ca, &["mx.example.net"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    wait_status(&s.relay, &id, "delivered");
    // The domain moves its MX elsewhere: the old host is no longer allowed.
    s.server.set_policy(&policy("enforce", "mx2.example.net"));
    let id = send(&s.relay, "b@example.net");
    wait_status(&s.relay, &id, "delivered");
    assert_eq!(s.server.requests().len(), 1, "same id: the cached policy");
    s.dns
        .remove("_mta-sts.example.net")
        .txt("_mta-sts.example.net", "v=STSv1; id=2");
    let id = send(&s.relay, "c@example.net");
    wait_for("deferred under the new policy", WAIT, || {
        !s.relay.delivery_events(&id).is_empty()
    });
    let evs = s.relay.delivery_events(&id);
    assert_eq!(evs[0].0, "email.delivery_delayed", "{evs:?}");
    assert!(
        evs[0].1["response"]
            .as_str()
            .unwrap()
            .contains("matches none of the policy's mx patterns (mx2.example.net)"),
        "{evs:?}"
    );
    assert_eq!(s.server.requests().len(), 2);
    assert_eq!(s.mx.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_policy_is_not_used() {
    let short = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.net\r\nmax_age: 1\r\n";
    let mut s = setup(short, |ca| mx_with_cert(ca, &["mx.example.net"])).await;
    let id = send(&s.relay, "a@example.net");
    wait_status(&s.relay, &id, "delivered");
    s.server.stop();
    let expires: i64 = s
        .relay
        .db()
        .query_row(
            "SELECT expires_at FROM mta_sts_policies WHERE domain = 'example.net'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    wait_for("the cached policy's max_age to run out", WAIT, || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        now > expires
    });
    let id = send(&s.relay, "b@example.net");
    wait_status(&s.relay, &id, "delivered");
    let evs = s.relay.delivery_events(&id);
    // No valid policy: the domain's own setting, and the fetch failure is
    // counted.
    assert_eq!(evs[0].1["tls_policy"], "opportunistic", "{:?}", evs[0].1);
    let m = metrics(&s.relay);
    assert_eq!(
        counter(
            &m,
            "trackrelay_tls_policy_sts_lookups_total{result=\"failed\"}"
        ),
        1,
        "{m}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// (fetched_at, used_at, policy_id) of a domain's cached policy.
fn cache_row(relay: &Relay, domain: &str) -> Option<(i64, i64, String)> {
    relay
        .db()
        .query_row(
            "SELECT fetched_at, used_at, policy_id FROM mta_sts_policies WHERE domain = ?1",
            [domain],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
}

/// RFC 8461 section 3.3: a policy in use whose refresh is due is fetched
/// again by the background refresh at start, with no mail sent; one due
/// but unused for longer than its max_age is left alone, and one expired
/// for longer than its max_age is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_policies_are_refreshed_in_the_background_and_stale_ones_dropped() {
    let day = 86_400_000i64;
    let mut s = setup(&policy("enforce", "mx.example.net"), |ca| {
        mx_with_cert(ca, &["mx.example.net"])
    })
    .await;
    let id = send(&s.relay, "a@example.net");
    wait_status(&s.relay, &id, "delivered");
    assert_eq!(s.server.requests().len(), 1);
    s.relay.stop();
    let now = now_ms();
    // 70000 s of the 86400 s max_age are gone (the refresh is due at
    // 64800 s); the delivery above used it.
    let fetched = now - 70_000_000;
    let used = cache_row(&s.relay, "example.net").unwrap().1;
    assert!(used >= now - 60_000, "the delivery marked it used: {used}");
    {
        let text = policy("enforce", "mx.other.test").replace('\'', "''");
        s.relay.execute(&format!(
            "UPDATE mta_sts_policies SET fetched_at = {fetched}, expires_at = {fetched} + {day}
             WHERE domain = 'example.net'"
        ));
        // Due, but no delivery used it within its max_age.
        s.relay.execute(&format!(
            "INSERT INTO mta_sts_policies (domain, policy_id, policy, fetched_at, expires_at, used_at)
             VALUES ('unused.test', '1', '{text}', {fetched}, {fetched} + {day}, {fetched} - {day})"
        ));
        // Expired two days ago with a one-day max_age.
        let then = now - 2 * day;
        s.relay.execute(&format!(
            "INSERT INTO mta_sts_policies (domain, policy_id, policy, fetched_at, expires_at, used_at)
             VALUES ('stale.test', '1', '{text}', {then} - {day}, {then}, {then} - {day})"
        ));
    }
    s.relay
        .spawn_with(&[], &[(PORT_ENV, &s.server.port().to_string())])
        .unwrap();
    wait_for("the background refresh", WAIT, || {
        counter(
            &metrics(&s.relay),
            "trackrelay_tls_policy_sts_lookups_total{result=\"refreshed\"}",
        ) == 1
    });
    assert_eq!(
        s.server.requests().len(),
        2,
        "the policy host saw the fetch"
    );
    let (new_fetched, new_used, id) = cache_row(&s.relay, "example.net").unwrap();
    assert!(
        new_fetched >= now,
        "fetched_at moved: {new_fetched} < {now}"
    );
    assert_eq!(id, "1");
    assert_eq!(new_used, used, "a refresh is not a use");
    assert!(cache_row(&s.relay, "stale.test").is_none(), "stale kept");
    let unused = cache_row(&s.relay, "unused.test").expect("unused kept until stale");
    assert_eq!(unused.0, fetched, "unused.test was fetched");
    let m = metrics(&s.relay);
    for (result, want) in [
        ("dropped", 1),
        ("refreshed", 1),
        ("fetched", 0),
        ("cached", 0),
        ("kept_cached", 0),
        ("failed", 0),
        ("none", 0),
    ] {
        let series = format!("trackrelay_tls_policy_sts_lookups_total{{result=\"{result}\"}}");
        assert_eq!(counter(&m, &series), want, "{series}\n{m}");
    }
    assert_eq!(s.mx.received().len(), 1, "no mail was sent for the refresh");
}
