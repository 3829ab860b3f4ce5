//! ACME end to end: the real binary gets certificates for its tracking
//! hosts from a real Pebble (tests/support/pebble.rs) over HTTP-01 on its
//! tracking listener, serves them by SNI on its tracking TLS listener
//! (checked by a rustls client trusting only Pebble's root), renews a
//! short-lived one in place, and leaves alone the hosts whose DNS (a stub
//! the relay resolves through) does not point here or whose CAA forbids
//! the CA, with dns-check saying why.

mod harness;
mod support;

use harness::*;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use support::dns::DnsStub;
use support::pebble::{self, Pebble};

const RELAY: &str = "relay.test";
/// The CAA identity the relay is told its CA has.
const CA: &str = "pebble.letsencrypt.org";
const WAIT: Duration = Duration::from_secs(90);

struct Setup {
    relay: Relay,
    pebble: Pebble,
    _dns: DnsStub,
}

/// example.com tracks on t. (a CNAME to the relay) and keeps its previous
/// old. (the relay's address); example.org's links. points elsewhere and
/// its previous prev. points here but CAA at example.org names another CA.
///
/// `challenge`: the relay's `acme.challenge`; Pebble gets a closed port for
/// the other kind, so only the one asked for can succeed.
async fn setup(validity_secs: Option<u64>, challenge: &str) -> Setup {
    let dns = DnsStub::start().await;
    dns.a(RELAY, Ipv4Addr::LOCALHOST)
        .cname("t.example.com", RELAY)
        .a("old.example.com", Ipv4Addr::LOCALHOST)
        .a("links.example.org", Ipv4Addr::new(192, 0, 2, 7))
        .a("prev.example.org", Ipv4Addr::LOCALHOST)
        .caa_issue("example.org", "sectigo.com");
    // The relay needs the CA's URL and the CA needs the relay's port: the
    // CA's ports are random tries, so a clash means starting both again.
    for _ in 0..5 {
        let mut pebble = Pebble::prepare(validity_secs);
        let relay = Relay::start(Options {
            tracking: "listen_tls = [\"127.0.0.1:0\"]".into(),
            domain: "tracking_subdomain = \"t\"\nprevious_tracking_subdomains = [\"old\"]".into(),
            domain_org: "tracking_subdomain = \"links\"\nprevious_tracking_subdomains = [\"prev\"]"
                .into(),
            delivery: format!("resolver = \"{}\"", dns.resolver()),
            extra: format!(
                "[acme]\nenabled = true\ndirectory = \"{}\"\nca_file = \"{}\"\n\
                 contact = \"mailto:ops@example.com\"\ncaa_identity = \"{CA}\"\nretry_interval = \"1s\"\n\
                 challenge = \"{challenge}\"\nsubmission_hostname = true",
                pebble.directory,
                pebble.ca_file.display()
            ),
            api_token: true,
            ..Options::default()
        });
        let (http_port, tls_port) = match challenge {
            "http-01" => (relay.tracking.port(), closed_port()),
            _ => (closed_port(), tls_port(&relay).port()),
        };
        match pebble.start(http_port, tls_port) {
            Ok(()) => {
                return Setup {
                    relay,
                    pebble,
                    _dns: dns,
                }
            }
            Err(e) => eprintln!("pebble did not start, trying other ports: {e}"),
        }
    }
    panic!("pebble did not start on any of 5 port sets");
}

fn tls_port(relay: &Relay) -> SocketAddr {
    relay.bound.tracking_tls[0]
}

/// A client trusting only `root`, offering `alpn`.
fn client_config(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS handshake with SNI `host`, trusting only `root`: the leaf served,
/// or why the handshake (or the chain/name check) failed.
fn served_leaf(
    addr: SocketAddr,
    host: &str,
    root: &CertificateDer<'static>,
) -> Result<CertificateDer<'static>, String> {
    let name = ServerName::try_from(host.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(root, &[]), name).unwrap();
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".into())
}

fn dns_check(relay: &Relay) -> Vec<Value> {
    let out = relay.cli(&["dns-check", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn row<'a>(rows: &'a [Value], record: &str, name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["record"] == record && r["name"] == name)
        .unwrap_or_else(|| panic!("no {record} row for {name} in {rows:#?}"))
}

fn wait_served(s: &Setup, host: &str, root: &CertificateDer<'static>) -> CertificateDer<'static> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match served_leaf(tls_port(&s.relay), host, root) {
            Ok(leaf) => return leaf,
            Err(e) if std::time::Instant::now() > deadline => panic!(
                "no certificate for {host} ({e})\n--- relay\n{}\n--- pebble\n{}",
                s.relay.log(),
                s.pebble.log()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_for_hosts_that_point_here_serves_them_by_sni_and_says_why_not_for_others() {
    if !pebble::available("acme issuance") {
        return;
    }
    let mut s = setup(None, "http-01").await;
    let root = s.pebble.root_der();
    let t = wait_served(&s, "t.example.com", &root);
    let old = wait_served(&s, "old.example.com", &root);
    assert_ne!(t, old, "one certificate per host");
    // acme.submission_hostname: the relay's own name, on the submission
    // TLS listener.
    let mut hostname = None;
    wait_for("the hostname's certificate on submission", WAIT, || {
        hostname = served_leaf(s.relay.smtps, RELAY, &root).ok();
        hostname.is_some()
    });
    assert!(![t.clone(), old.clone()].contains(hostname.as_ref().unwrap()));

    // Files 0600 in data_dir/acme, account key included.
    use std::os::unix::fs::PermissionsExt;
    let dir = s.relay.data_dir().join("acme");
    for f in [
        "account.key",
        "t.example.com.crt.pem",
        "t.example.com.key.pem",
        "old.example.com.key.pem",
    ] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Nothing for the host pointing elsewhere, nor the one CAA forbids:
    // their handshake finds no certificate at all (none is configured).
    for host in ["links.example.org", "prev.example.org"] {
        assert!(
            !dir.join(format!("{host}.crt.pem")).exists(),
            "{host} issued"
        );
        assert!(
            served_leaf(tls_port(&s.relay), host, &root).is_err(),
            "{host} served"
        );
    }

    // Not even asked of the CA (its validation would fail and count
    // against the account's rate limits).
    let log = s.relay.log();
    assert!(
        log.contains("not issuing: links.example.org does not point at this relay"),
        "{log}"
    );
    let ordered = |host: &str| {
        log.lines()
            .any(|l| l.contains("acme: ordering a certificate") && l.contains(host))
    };
    assert!(ordered("t.example.com"), "{log}");
    assert!(!ordered("links.example.org"), "{log}");
    assert!(!ordered("prev.example.org"), "{log}");

    let rows = dns_check(&s.relay);
    // The relay's own name belongs to no [[domains]] entry: the table's
    // last lines say its certificate's expiry (--json puts them on stderr).
    let out = s.relay.cli(&["dns-check"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("ACME certificate for {RELAY}: expires ")),
        "{table}"
    );
    let out = s.relay.cli(&["dns-check", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("ACME certificate for {RELAY}: expires ")),
        "{stderr}"
    );
    let cert = row(&rows, "certificate", "t.example.com");
    assert_eq!(cert["status"], "verified", "{cert}");
    assert!(
        cert["found"][0].as_str().unwrap().starts_with("expires "),
        "{cert}"
    );
    let links = row(&rows, "certificate", "links.example.org");
    assert_eq!(links["status"], "pending", "{links}");
    let note = links["note"].as_str().unwrap();
    assert!(
        note.contains("does not point at this relay") && note.contains("192.0.2.7"),
        "{note}"
    );
    let caa = row(&rows, "caa", "example.org");
    assert_eq!(caa["status"], "failed", "{caa}");
    assert_eq!(caa["expected"], format!("0 issue \"{CA}\""));
    assert!(
        caa["found"][0].as_str().unwrap().contains("sectigo.com"),
        "{caa}"
    );
    let prev = row(&rows, "certificate", "prev.example.org");
    assert!(
        prev["note"]
            .as_str()
            .unwrap()
            .contains(&format!("0 issue \"{CA}\"")),
        "{prev}"
    );
    assert_eq!(row(&rows, "caa", "t.example.com")["status"], "verified");

    // The domain view (API) carries the same rows, from serve's own checks.
    let auth = format!("Bearer {API_TOKEN}");
    let mut view = Value::Null;
    wait_for("example.org's checked records", WAIT, || {
        let (status, _, body) = http(
            s.relay.api,
            "GET",
            "/v1/domains/example.org",
            &[("Authorization", &auth)],
        );
        assert_eq!(status, 200);
        view = serde_json::from_slice(&body).unwrap();
        view["records"].as_array().is_some_and(|r| !r.is_empty())
    });
    let records = view["records"].as_array().unwrap();
    assert_eq!(
        row(records, "caa", "example.org")["expected"],
        format!("0 issue \"{CA}\"")
    );

    let (status, _, body) = http(
        s.relay.api,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {API_TOKEN}"))],
    );
    assert_eq!(status, 200);
    let metrics = String::from_utf8(body).unwrap();
    for host in ["t.example.com", "old.example.com"] {
        assert!(
            metrics.contains(&format!(
                "trackrelay_certificate_expiry_timestamp_seconds{{name=\"{host}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(!metrics.contains("name=\"links.example.org\""));

    // A restart serves the saved certificate from the first handshake.
    s.relay.stop();
    s.relay.spawn();
    let again =
        served_leaf(tls_port(&s.relay), "t.example.com", &root).expect("served after restart");
    assert_eq!(again, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_a_short_lived_certificate_without_a_restart() {
    if !pebble::available("acme renewal") {
        return;
    }
    // Renewal at two thirds: 20 s into a 30 s certificate.
    let s = setup(Some(30), "http-01").await;
    let root = s.pebble.root_der();
    let first = wait_served(&s, "t.example.com", &root);
    let first_validity = trackrelay::acme::store::cert_validity(first.as_ref()).unwrap();
    let pid = s.relay.pid();
    let mut renewed = None;
    wait_for("the renewed certificate to be served", WAIT, || {
        renewed = served_leaf(tls_port(&s.relay), "t.example.com", &root)
            .ok()
            .filter(|c| *c != first);
        renewed.is_some()
    });
    let renewed = renewed.unwrap();
    assert_eq!(s.relay.pid(), pid, "same process");
    let renewed_validity = trackrelay::acme::store::cert_validity(renewed.as_ref()).unwrap();
    assert!(renewed_validity.1 > first_validity.1, "a later notAfter");
    let saved = std::fs::read(s.relay.data_dir().join("acme/t.example.com.crt.pem")).unwrap();
    let saved = rustls_pemfile::certs(&mut saved.as_slice())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(saved, renewed, "the renewed certificate is the one saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_on_the_tracking_tls_listener() {
    if !pebble::available("acme tls-alpn-01") {
        return;
    }
    let s = setup(None, "tls-alpn-01").await;
    let root = s.pebble.root_der();
    let t = wait_served(&s, "t.example.com", &root);
    let old = wait_served(&s, "old.example.com", &root);
    assert_ne!(t, old);
    // An acme-tls/1 handshake outside a validation gets no certificate.
    let config = client_config(&root, &[b"acme-tls/1"]);
    let name = ServerName::try_from("t.example.com").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = TcpStream::connect(tls_port(&s.relay)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut failed = false;
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            failed = true;
            break;
        }
    }
    assert!(
        failed,
        "an acme-tls/1 handshake with no validation in flight must fail"
    );
}
