//! TLS reporting (RFC 8460) through the real binary: a day of deliveries
//! with failures and successes, the day ends (a restart with the test
//! clock skew), and the reports reach their `rua` sinks — a test MX for
//! `mailto:` and an HTTPS receiver (trusted through
//! `delivery.extra_ca_file`) for `https:` — where they are gunzipped,
//! validated against RFC 8460's schema (tests/fixtures/, with Python's
//! `jsonschema`) and their counts checked against what the test caused.

mod harness;
mod support;

use bytes::Bytes;
use harness::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mail_parser::MimeHeaders;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::dns::DnsStub;
use support::mx::{MxConfig, TestMx};
use support::tlsrpt::{assert_valid, gunzip, row, rows_of, schema_errors};

const WAIT: Duration = Duration::from_secs(60);

/// One POST as the receiver got it.
#[derive(Debug, Clone)]
struct Post {
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// An HTTPS endpoint on 127.0.0.1 with a certificate from its own test CA
/// (`ca_pem`), keeping what was posted and answering 200, or 503 on
/// `/down` (a receiver that is down).
struct HttpsSink {
    addr: SocketAddr,
    ca_pem: String,
    posts: Arc<Mutex<Vec<Post>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsSink {
    async fn start() -> HttpsSink {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tlsrpt test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let chain = vec![leaf.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let posts = posts.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let posts = posts.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let posts = posts.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let content_type = req
                                    .headers()
                                    .get(hyper::header::CONTENT_TYPE)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let body = req.into_body().collect().await?.to_bytes().to_vec();
                                let status = if path == "/down" { 503 } else { 200 };
                                posts.lock().unwrap().push(Post {
                                    path,
                                    content_type,
                                    body,
                                });
                                let mut resp = Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            })
        };
        HttpsSink {
            addr,
            ca_pem: ca.pem(),
            posts,
            task,
        }
    }

    fn posts(&self, path: &str) -> Vec<Post> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.path == path)
            .cloned()
            .collect()
    }
}

fn list(relay: &Relay) -> Vec<Value> {
    let out = relay.cli(&["tls-reports", "list", "--json"]);
    rows_of(&out)
}

/// Two MX servers on one port (`delivery.mx_port`): `first` on 127.0.0.1,
/// `second` on 127.0.0.2 (TLS reports count MX deliveries, not routes).
async fn mx_pair(first: MxConfig, second: MxConfig) -> (TestMx, TestMx) {
    for _ in 0..20 {
        let a = TestMx::start(first.clone()).await;
        let port = a.addr().port();
        if let Ok(b) =
            TestMx::start_on(second.clone(), SocketAddr::from(([127, 0, 0, 2], port))).await
        {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// `domain` delivered by MX to `host` at `ip`.
fn publish_mx(dns: &DnsStub, domain: &str, host: &str, ip: [u8; 4]) {
    dns.mx(domain, 10, host).a(host, ip.into());
}

fn dkim_key(dir: &std::path::Path) -> (String, String, String) {
    let path = dir.join("s1.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
        .args([
            "dkim-keygen",
            "--domain",
            "example.com",
            "--selector",
            "s1",
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let name = lines.next().unwrap().to_string();
    let value = lines.next().unwrap().to_string();
    (path.display().to_string(), name, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_with_failures_is_reported_to_mailto_and_https_and_validates() {
    // Sanity of the validator itself: a report without a result type fails.
    let broken = serde_json::json!({
        "organization-name": "x", "contact-info": "a@b", "report-id": "r",
        "date-range": {"start-datetime": "2026-11-23T00:00:00Z", "end-datetime": "2026-11-23T23:59:59Z"},
        "policies": [{"policy": {"policy-type": "no-policy-found", "policy-domain": "d"},
                      "summary": {"total-successful-session-count": 0, "total-failure-session-count": 1},
                      "failure-details": [{"sending-mta-ip": "127.0.0.1", "receiving-mx-hostname": "m", "failed-session-count": 1}]}]
    });
    if let Some(errors) = schema_errors(&broken) {
        assert!(errors.contains("result-type"), "{errors}");
    }

    let dns = DnsStub::start().await;
    let https = HttpsSink::start().await;
    // fail.test's MX offers no STARTTLS; ok.test's does; the reports for
    // fail.test go by mail to reports.test.
    let (mx_ok, mx_fail) = mx_pair(
        MxConfig::default(),
        MxConfig {
            starttls: false,
            ..Default::default()
        },
    )
    .await;
    publish_mx(&dns, "fail.test", "mx.fail.test", [127, 0, 0, 2]);
    for d in ["ok.test", "nopolicy.test", "retry.test"] {
        publish_mx(&dns, d, "mx.ok.test", [127, 0, 0, 1]);
    }
    let mx_reports = TestMx::start(MxConfig::default()).await;
    dns.txt(
        "_smtp._tls.fail.test",
        "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
    );
    dns.txt(
        "_smtp._tls.ok.test",
        &format!("v=TLSRPTv1;rua=https://{}/v1/tlsrpt", https.addr),
    );
    // retry.test's receiver is down: the report waits for its retry.
    dns.txt(
        "_smtp._tls.retry.test",
        &format!("v=TLSRPTv1; rua=https://{}/down", https.addr),
    );
    // nopolicy.test publishes nothing: counted, never reported.

    let keys = tempfile::tempdir().unwrap();
    let (key, dkim_name, dkim_value) = dkim_key(keys.path());
    let ca = keys.path().join("ca.pem");
    std::fs::write(&ca, &https.ca_pem).unwrap();
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        domain: format!(
            "tls = \"enforced\"\ndkim = [{{ selector = \"s1\", private_key = \"{key}\" }}]"
        ),
        delivery: format!(
            "resolver = \"{}\"\nmx_port = {}\nretry = [\"1h\"]\nextra_ca_file = \"{}\"\nroutes = {{ \"reports.test\" = \"{}\" }}",
            dns.resolver(),
            mx_ok.addr().port(),
            ca.display(),
            mx_reports.addr()
        ),
        api_token: true,
        ..Options::default()
    });

    // One message at a time, each its own connection and TLS session:
    // 2 failures at fail.test, 3 successes at ok.test, 1 at nopolicy.test
    // and 1 at retry.test.
    for i in 0..2 {
        let id = submit(
            &relay,
            "news@example.com",
            &["a@fail.test"],
            &message("news@example.com", "a@fail.test", &format!("f{i}"), "x"),
        );
        wait_for("the deferral", WAIT, || {
            relay
                .db()
                .query_row(
                    "SELECT status FROM recipients WHERE email_id = ?1",
                    [&id],
                    |r| r.get::<_, String>(0),
                )
                .unwrap()
                == "deferred"
        });
    }
    for (i, to) in [
        "b@ok.test",
        "b@ok.test",
        "b@ok.test",
        "c@nopolicy.test",
        "d@retry.test",
    ]
    .iter()
    .enumerate()
    {
        submit(
            &relay,
            "news@example.com",
            &[to],
            &message("news@example.com", to, &format!("s{i}"), "x"),
        );
        assert!(
            mx_ok.wait_for(i + 1, WAIT).await,
            "delivered:\n{}",
            relay.log()
        );
    }
    assert!(
        mx_fail.received().is_empty(),
        "nothing went out in plaintext"
    );

    // Counted (the counter is flushed every few seconds), not yet reported.
    wait_for("the day's counts", WAIT, || {
        let rows = list(&relay);
        row(&rows, "fail.test").is_some_and(|r| r["failed_sessions"] == 2)
            && row(&rows, "ok.test").is_some_and(|r| r["successful_sessions"] == 3)
            && row(&rows, "nopolicy.test").is_some_and(|r| r["successful_sessions"] == 1)
            && row(&rows, "retry.test").is_some_and(|r| r["successful_sessions"] == 1)
    });
    let rows = list(&relay);
    let day = row(&rows, "fail.test").unwrap()["day"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(row(&rows, "fail.test").unwrap()["status"], "counting");
    assert_eq!(row(&rows, "fail.test").unwrap()["successful_sessions"], 0);
    assert_eq!(row(&rows, "ok.test").unwrap()["failed_sessions"], 0);

    // The day ends: the relay comes back a day later.
    assert!(relay.stop().success());
    relay
        .spawn_with(&[], &[("TRACKRELAY_TEST_CLOCK_SKEW", "86400")])
        .unwrap();

    // mailto: a real queued email, DKIM-signed, with the RFC 8460 5.3 form.
    assert!(
        mx_reports.wait_for(1, WAIT).await,
        "report mail:\n{}",
        relay.log()
    );
    let got = mx_reports.received().remove(0);
    assert_eq!(got.rcpt_to, ["tlsrpt@reports.test"]);
    let dkim = support::dkim::mail_auth_verify(&got.data, &[(dkim_name, dkim_value)]).await;
    assert_eq!(dkim, [mail_auth::DkimResult::Pass]);
    let mail = mail_parser::MessageParser::default()
        .parse(&got.data)
        .unwrap();
    let report_id = format!("{day}T00:00:00Z_fail.test_relay.test");
    assert_eq!(
        mail.subject().unwrap(),
        format!("Report Domain: fail.test Submitter: example.com Report-ID: <{report_id}>")
    );
    let header = |name: &str| {
        mail.header_raw(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(header("TLS-Report-Domain"), "fail.test");
    assert_eq!(header("TLS-Report-Submitter"), "example.com");
    let ct = mail.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype(), ct.attribute("report-type")),
        ("multipart", Some("report"), Some("tlsrpt"))
    );
    let att = mail.attachment(0).expect("the report attachment");
    let att_ct = att.content_type().unwrap();
    assert_eq!(
        (att_ct.ctype(), att_ct.subtype()),
        ("application", Some("tlsrpt+gzip"))
    );
    assert!(att
        .attachment_name()
        .unwrap()
        .starts_with("example.com!fail.test!"));
    let mailed = gunzip(att.contents());
    assert_valid(&mailed);
    assert_eq!(mailed["report-id"], report_id.as_str());
    assert_eq!(mailed["organization-name"], "relay.test");
    assert_eq!(mailed["contact-info"], "tlsrpt-noreply@example.com");
    assert_eq!(
        mailed["date-range"]["start-datetime"],
        format!("{day}T00:00:00Z")
    );
    let policies = mailed["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{mailed:#}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "no-policy-found");
    assert_eq!(p["policy"]["policy-domain"], "fail.test");
    assert_eq!(p["summary"]["total-successful-session-count"], 0);
    assert_eq!(p["summary"]["total-failure-session-count"], 2);
    let details = p["failure-details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{mailed:#}");
    assert_eq!(details[0]["result-type"], "starttls-not-supported");
    assert_eq!(details[0]["failed-session-count"], 2);
    assert_eq!(details[0]["receiving-mx-hostname"], "mx.fail.test");
    assert_eq!(details[0]["receiving-ip"], "127.0.0.2");
    assert!(
        details[0]["sending-mta-ip"]
            .as_str()
            .unwrap()
            .starts_with("127."),
        "{mailed:#}"
    );

    // https: a POST of the gzipped report.
    wait_for("the HTTPS report", WAIT, || {
        !https.posts("/v1/tlsrpt").is_empty()
    });
    let post = https.posts("/v1/tlsrpt").remove(0);
    assert_eq!(post.path, "/v1/tlsrpt");
    assert_eq!(
        post.content_type.as_deref(),
        Some("application/tlsrpt+gzip")
    );
    let posted = gunzip(&post.body);
    assert_valid(&posted);
    let p = &posted["policies"][0];
    assert_eq!(p["policy"]["policy-domain"], "ok.test");
    assert_eq!(p["summary"]["total-successful-session-count"], 3);
    assert_eq!(p["summary"]["total-failure-session-count"], 0);
    assert!(p.get("failure-details").is_none(), "{posted:#}");

    // Viewable: the CLI's list and show, and the API, say the same.
    wait_for("both reports recorded as sent", WAIT, || {
        let rows = list(&relay);
        ["fail.test", "ok.test"]
            .iter()
            .all(|d| row(&rows, d).is_some_and(|r| r["status"] == "sent"))
            && row(&rows, "retry.test").is_some_and(|r| r["attempts"] == 1)
    });
    let rows = list(&relay);
    let fail = row(&rows, "fail.test").unwrap();
    assert_eq!(fail["rua"][0], "mailto:tlsrpt@reports.test");
    assert_eq!(fail["delivered_to"][0], "mailto:tlsrpt@reports.test");
    assert_eq!(fail["report_id"], report_id.as_str());
    assert_eq!(row(&rows, "nopolicy.test").unwrap()["status"], "no_policy");
    // The receiver that answered 503 got the report once; it is retried later.
    let retry = row(&rows, "retry.test").unwrap();
    assert_eq!(retry["status"], "pending", "{retry}");
    assert_eq!(retry["attempts"], 1);
    assert!(
        retry["last_error"].as_str().unwrap().contains("HTTP 503"),
        "{retry}"
    );
    assert!(retry["next_attempt_at"].is_string(), "{retry}");
    assert_eq!(retry["delivered_to"], serde_json::json!([]));
    assert_eq!(https.posts("/down").len(), 1);
    let shown = relay.cli(&["tls-reports", "show", "fail.test", &day]);
    assert!(shown.status.success());
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown, mailed, "show prints what was sent");

    let auth = format!("Bearer {API_TOKEN}");
    let (status, _, body) = http(
        relay.api,
        "GET",
        &format!("/v1/tls-reports?day={day}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let api: Value = serde_json::from_slice(&body).unwrap();
    let api_rows = api["data"].as_array().unwrap();
    let cli_day: Vec<&Value> = rows.iter().filter(|r| r["day"] == day.as_str()).collect();
    assert_eq!(api_rows.iter().collect::<Vec<_>>(), cli_day);
    let (status, _, _) = http(relay.api, "GET", "/v1/tls-reports", &[]);
    assert_eq!(status, 401);
    let (status, _, _) = http(
        relay.api,
        "GET",
        "/v1/tls-reports?day=yesterday",
        &[("Authorization", &auth)],
    );
    assert_eq!(status, 400);

    // Sent once: only one report reached each sink, and only the domains
    // that published _smtp._tls got one.
    assert_eq!(mx_reports.received().len(), 1);
    assert_eq!(https.posts("/v1/tlsrpt").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_reports_off_counts_nothing() {
    let dns = DnsStub::start().await;
    let mx = TestMx::start(MxConfig::default()).await;
    dns.txt("_smtp._tls.ok.test", "v=TLSRPTv1; rua=mailto:r@ok.test");
    publish_mx(&dns, "ok.test", "mx.ok.test", [127, 0, 0, 1]);
    let mut relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "tls_reports = false\nresolver = \"{}\"\nmx_port = {}",
            dns.resolver(),
            mx.addr().port()
        ),
        ..Options::default()
    });
    submit(
        &relay,
        "news@example.com",
        &["b@ok.test"],
        &message("news@example.com", "b@ok.test", "s", "x"),
    );
    assert!(mx.wait_for(1, WAIT).await, "{}", relay.log());
    // A graceful stop writes whatever was counted: here, nothing.
    assert!(relay.stop().success());
    assert!(list(&relay).is_empty());
    assert_eq!(mx.received().len(), 1, "no report mail either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_reports_send_forces_a_day_once_beside_a_running_server() {
    let dns = DnsStub::start().await;
    let mx = TestMx::start(MxConfig::default()).await;
    let mx_reports = TestMx::start(MxConfig::default()).await;
    dns.txt(
        "_smtp._tls.ok.test",
        "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
    );
    publish_mx(&dns, "ok.test", "mx.ok.test", [127, 0, 0, 1]);
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "resolver = \"{}\"\nmx_port = {}\nroutes = {{ \"reports.test\" = \"{}\" }}",
            dns.resolver(),
            mx.addr().port(),
            mx_reports.addr()
        ),
        ..Options::default()
    });
    submit(
        &relay,
        "news@example.com",
        &["b@ok.test"],
        &message("news@example.com", "b@ok.test", "s", "x"),
    );
    assert!(mx.wait_for(1, WAIT).await, "{}", relay.log());
    wait_for("the count", WAIT, || {
        row(&list(&relay), "ok.test").is_some_and(|r| r["successful_sessions"] == 1)
    });
    let day = row(&list(&relay), "ok.test").unwrap()["day"]
        .as_str()
        .unwrap()
        .to_string();

    // Today is not over, but the operator sends it now.
    let out = relay.cli(&["tls-reports", "send", "--day", &day]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok.test") && text.contains("sent"), "{text}");
    // The running server's queue runner delivers the queued report mail.
    assert!(mx_reports.wait_for(1, WAIT).await, "{}", relay.log());
    let got = mx_reports.received().remove(0);
    let mail = mail_parser::MessageParser::default()
        .parse(&got.data)
        .unwrap();
    let report = gunzip(mail.attachment(0).unwrap().contents());
    assert_valid(&report);
    assert_eq!(report["policies"][0]["policy"]["policy-domain"], "ok.test");
    assert_eq!(
        report["policies"][0]["summary"]["total-successful-session-count"],
        1
    );

    // Sent once: a second send queues nothing more.
    let again = relay.cli(&["tls-reports", "send", "--day", &day]);
    assert!(again.status.success());
    let queued: i64 = relay
        .db()
        .query_row(
            "SELECT COUNT(*) FROM emails WHERE tags LIKE '%tlsrpt%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued, 1);
    let bad = relay.cli(&["tls-reports", "send", "--day", "tomorrow"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a day"));
}
