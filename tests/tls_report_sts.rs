//! TLS reporting of MTA-STS days through the real binary: a domain whose
//! policy (`testing`, fetched from a test-CA HTTPS policy host) is not met
//! by its MX's certificate, and a domain whose policy cannot be fetched.
//! The day ends (a restart with the test clock skew), the reports reach
//! their `mailto:` sink, and each is checked against what the test caused
//! and validated against RFC 8460's schema.

mod harness;
mod support;

use harness::*;
use serde_json::Value;
use std::time::Duration;
use support::dns::DnsStub;
use support::mx::{MxConfig, TestMx};
use support::sts::{PolicyServer, TestCa};
use support::tlsrpt::{assert_valid, gunzip, row, rows_of};

const WAIT: Duration = Duration::from_secs(60);
const PORT_ENV: &str = "TRACKRELAY_TEST_MTA_STS_PORT";
const POLICY: &str =
    "version: STSv1\r\nmode: testing\r\nmx: mx.testing.test\r\nmx: *.backup.testing.test\r\nmax_age: 86400\r\n";

fn list(relay: &Relay) -> Vec<Value> {
    rows_of(&relay.cli(&["tls-reports", "list", "--json"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_day_reports_the_policy_its_failures_and_a_fetch_error() {
    let dns = DnsStub::start().await;
    let localhost = "127.0.0.1".parse().unwrap();
    let ca = TestCa::new();
    // testing.test publishes MTA-STS in testing mode; its MX presents a
    // certificate from the trusted CA but for another name.
    let server = PolicyServer::start(&ca, "mta-sts.testing.test", POLICY).await;
    let issued = ca.issue(&["other.example.org"]);
    let mx = TestMx::start(MxConfig {
        hostname: "mx.testing.test".into(),
        certificate: Some((issued.chain_pem, issued.key_pem)),
        ..MxConfig::default()
    })
    .await;
    dns.mx("testing.test", 10, "mx.testing.test")
        .a("mx.testing.test", localhost)
        .a("mta-sts.testing.test", localhost)
        .txt("_mta-sts.testing.test", "v=STSv1; id=1");
    // fetch.test announces a policy whose host does not resolve: the
    // fetch fails, delivery goes on under the domain's own setting.
    dns.mx("fetch.test", 10, "mx.fetch.test")
        .a("mx.fetch.test", localhost)
        .txt("_mta-sts.fetch.test", "v=STSv1; id=1");
    for d in ["testing.test", "fetch.test"] {
        dns.txt(
            &format!("_smtp._tls.{d}"),
            "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
        );
    }
    let mx_reports = TestMx::start(MxConfig::default()).await;
    let keep = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(keep.path());
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "resolver = \"{}\"\nmx_port = {}\nextra_ca_file = \"{}\"\nroutes = {{ \"reports.test\" = \"{}\" }}",
            dns.resolver(),
            mx.addr().port(),
            ca_file.display(),
            mx_reports.addr()
        ),
        ..Options::default()
    });
    // Started again with the policy host's port.
    assert!(relay.stop().success());
    let port = server.port().to_string();
    relay.spawn_with(&[], &[(PORT_ENV, &port)]).unwrap();

    // 2 sessions at testing.test (each fails the policy's certificate
    // check, and delivers: testing mode), 1 at fetch.test.
    for (i, to) in ["a@testing.test", "b@testing.test", "c@fetch.test"]
        .iter()
        .enumerate()
    {
        submit(
            &relay,
            "news@example.com",
            &[to],
            &message("news@example.com", to, &format!("m{i}"), "x"),
        );
        assert!(
            mx.wait_for(i + 1, WAIT).await,
            "delivered:\n{}",
            relay.log()
        );
    }
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /.well-known/mta-sts.txt ")),
        "the policy was fetched"
    );
    wait_for("the day's counts", WAIT, || {
        let rows = list(&relay);
        row(&rows, "testing.test").is_some_and(|r| r["failed_sessions"] == 2)
            && row(&rows, "fetch.test")
                .is_some_and(|r| r["failed_sessions"] == 1 && r["successful_sessions"] == 1)
    });

    // The day ends.
    assert!(relay.stop().success());
    relay
        .spawn_with(
            &[],
            &[(PORT_ENV, &port), ("TRACKRELAY_TEST_CLOCK_SKEW", "86400")],
        )
        .unwrap();
    assert!(
        mx_reports.wait_for(2, WAIT).await,
        "report mail:\n{}",
        relay.log()
    );
    let mut reports: Vec<Value> = mx_reports
        .received()
        .iter()
        .map(|got| {
            let mail = mail_parser::MessageParser::default()
                .parse(&got.data)
                .unwrap();
            gunzip(mail.attachment(0).expect("the report").contents())
        })
        .collect();
    for r in &reports {
        assert_valid(r);
    }
    reports.sort_by_key(|r| r["policies"][0]["policy"]["policy-domain"].to_string());
    let (fetch, testing) = (&reports[0], &reports[1]);

    // testing.test: the fetched policy, echoed line by line with its
    // patterns, and its two failures.
    let policies = testing["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{testing:#}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "testing.test");
    let lines: Vec<&str> = POLICY.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        p["policy"]["policy-string"],
        serde_json::json!(lines),
        "{testing:#}"
    );
    assert_eq!(
        p["policy"]["mx-host"],
        serde_json::json!(["mx.testing.test", "*.backup.testing.test"])
    );
    assert_eq!(p["summary"]["total-successful-session-count"], 0);
    assert_eq!(p["summary"]["total-failure-session-count"], 2);
    let details = p["failure-details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{testing:#}");
    assert_eq!(details[0]["result-type"], "certificate-host-mismatch");
    assert_eq!(details[0]["failed-session-count"], 2);
    assert_eq!(details[0]["receiving-mx-hostname"], "mx.testing.test");
    assert_eq!(details[0]["receiving-ip"], "127.0.0.1");

    // fetch.test: the fetch failure under `sts`, naming the MX the attempt
    // went to and no receiving address (none was connected to yet); the
    // session that followed under no policy.
    assert_eq!(fetch["policies"].as_array().unwrap().len(), 2, "{fetch:#}");
    let by_type = |t: &str| {
        fetch["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"]["policy-type"] == t)
            .unwrap_or_else(|| panic!("no {t} policy: {fetch:#}"))
            .clone()
    };
    let sts = by_type("sts");
    assert_eq!(sts["policy"]["policy-domain"], "fetch.test");
    assert!(sts["policy"].get("policy-string").is_none(), "{fetch:#}");
    assert_eq!(sts["summary"]["total-failure-session-count"], 1);
    let d = &sts["failure-details"][0];
    assert_eq!(d["result-type"], "sts-policy-fetch-error");
    assert_eq!(d["receiving-mx-hostname"], "mx.fetch.test", "{fetch:#}");
    assert!(d.get("receiving-ip").is_none(), "{fetch:#}");
    assert!(
        d["sending-mta-ip"]
            .as_str()
            .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
        "{fetch:#}"
    );
    let none = by_type("no-policy-found");
    assert_eq!(none["summary"]["total-successful-session-count"], 1);
    assert_eq!(none["summary"]["total-failure-session-count"], 0);
}
