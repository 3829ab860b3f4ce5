//! DANE (RFC 7672) through the real binary, against a DNSSEC-signed test
//! zone made at test time with ldnsutils and served on loopback
//! (tests/support/dnssec.rs). The zone's key is the relay's trust anchor
//! (`delivery.dnssec_trust_anchor`): a trust-anchor island.
//!
//! Zone `dane.test` (signed), with the MX hosts all on the test MX:
//! - `match.dane.test`: TLSA 3 1 1 of the MX certificate's key;
//! - `mismatch.dane.test`: TLSA 3 1 1 of another key;
//! - `bogus.dane.test`: the right TLSA, but its RRSIG is tampered with;
//! - `ta.dane.test`: TLSA 2 0 1 of the CA that issued the MX certificate;
//! - `ta-name.dane.test`: the same, but the certificate does not name its
//!   MX host;
//! - `servfail.dane.test`: signed MX and address, but the TLSA query
//!   gets SERVFAIL;
//! - `insecure.dane.test`: an unsigned child zone, delegated without DS
//!   (the parent's signed NSEC proves it insecure).

mod harness;
mod support;

use harness::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::dnssec::{self, DnssecStub, SignedZone};
use support::mx::{MxConfig, TestMx};

/// The signed parent zone; `port` is the MX port the TLSA names carry.
fn parent_zone(port: u16, good: &str, other: &str, ca: &str) -> String {
    format!(
        "$ORIGIN dane.test.\n$TTL 300\n\
         @ IN SOA ns.dane.test. hostmaster.dane.test. 1 3600 600 86400 300\n\
         @ IN NS ns.dane.test.\n\
         ns IN A 127.0.0.1\n\
         match IN MX 10 mx-match.dane.test.\n\
         mx-match IN A 127.0.0.1\n\
         _{port}._tcp.mx-match IN TLSA 3 1 1 {good}\n\
         mismatch IN MX 10 mx-mismatch.dane.test.\n\
         mx-mismatch IN A 127.0.0.1\n\
         _{port}._tcp.mx-mismatch IN TLSA 3 1 1 {other}\n\
         bogus IN MX 10 mx-bogus.dane.test.\n\
         mx-bogus IN A 127.0.0.1\n\
         _{port}._tcp.mx-bogus IN TLSA 3 1 1 {good}\n\
         ta IN MX 10 mx-ta.dane.test.\n\
         mx-ta IN A 127.0.0.1\n\
         _{port}._tcp.mx-ta IN TLSA 2 0 1 {ca}\n\
         ta-name IN MX 10 mx-ta-name.dane.test.\n\
         mx-ta-name IN A 127.0.0.1\n\
         _{port}._tcp.mx-ta-name IN TLSA 2 0 1 {ca}\n\
         servfail IN MX 10 mx-servfail.dane.test.\n\
         mx-servfail IN A 127.0.0.1\n\
         insecure IN NS ns.insecure.dane.test.\n\
         ns.insecure IN A 127.0.0.1\n"
    )
}

const CHILD_ZONE: &str = "$ORIGIN insecure.dane.test.\n$TTL 300\n\
    @ IN SOA ns.insecure.dane.test. hostmaster.dane.test. 1 3600 600 86400 300\n\
    @ IN NS ns.insecure.dane.test.\n\
    @ IN MX 10 mx.insecure.dane.test.\n\
    ns IN A 127.0.0.1\n\
    mx IN A 127.0.0.1\n";

/// Changes one character of the signature of the RRSIG over `name`'s
/// `rtype` RRset, keeping it valid base64: a forged answer.
fn tamper_rrsig(signed: &str, name: &str, rtype: &str) -> String {
    let mut done = false;
    let out: Vec<String> = signed
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 5 && fields[0] == name && fields[3] == "RRSIG" && fields[4] == rtype {
                let sig = fields[fields.len() - 1];
                let first = if sig.starts_with('A') { "B" } else { "A" };
                done = true;
                return line.replacen(sig, &format!("{first}{}", &sig[1..]), 1);
            }
            line.to_string()
        })
        .collect();
    assert!(done, "no RRSIG {rtype} for {name} in\n{signed}");
    out.join("\n") + "\n"
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The test MX's certificate: a leaf for `mx-match.dane.test` and
/// `mx-ta.dane.test` issued by a test CA, sent with the CA. Returns the
/// PEM chain and key, the SHA-256 of the leaf's SubjectPublicKeyInfo (as
/// `TLSA 3 1 1` carries it) and of the CA certificate (`TLSA 2 0 1`).
fn mx_certificate() -> (String, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![
        "mx-match.dane.test".to_string(),
        "mx-ta.dane.test".to_string(),
    ])
    .unwrap()
    .signed_by(&key, &issuer)
    .unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let sha = |b: &[u8]| hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    (
        format!("{}{}", leaf.pem(), ca.pem()),
        key.serialize_pem(),
        sha(&spki),
        sha(ca.der()),
    )
}

struct World {
    _dir: tempfile::TempDir,
    anchor: PathBuf,
    stub: DnssecStub,
}

async fn world(port: u16, good: &str, ca: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let other = hex(&[0x5a; 32]);
    let zone = SignedZone::sign(
        dir.path(),
        "dane.test",
        &parent_zone(port, good, &other, ca),
        &[],
    );
    let signed = tamper_rrsig(
        &zone.signed,
        &format!("_{port}._tcp.mx-bogus.dane.test."),
        "TLSA",
    );
    let anchor = dir.path().join("anchor.key");
    std::fs::write(&anchor, &zone.anchor).unwrap();
    let servfail = format!("_{port}._tcp.mx-servfail.dane.test.");
    let stub = DnssecStub::start(&[&signed, CHILD_ZONE], &[&servfail]).await;
    World {
        _dir: dir,
        anchor,
        stub,
    }
}

/// `dns-check` run off the test runtime (the stubs answer on it).
async fn dns_check(config: &Path) -> (String, String) {
    let config = config.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(["dns-check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// dns-check says whether DNSSEC validates through the configured
/// resolver: yes against the signed zone with its key as anchor; no
/// against a DNS server that strips DNSSEC (the plain stub), where DANE
/// stays off under "auto"; and `serve` logs the same at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_check_and_serve_say_whether_dnssec_validates() {
    if !dnssec::available("dns_check_and_serve_say_whether_dnssec_validates") {
        return;
    }
    let (_, _, spki, ca) = mx_certificate();
    let w = world(25, &spki, &ca).await;
    let plain = support::dns::DnsStub::start().await;
    let delivery = |resolver: String| {
        format!(
            "resolver = \"{resolver}\"\ndnssec_trust_anchor = \"{}\"",
            w.anchor.display()
        )
    };
    let relay = Relay::start(Options {
        delivery: delivery(w.stub.resolver()),
        ..Options::default()
    });
    let (out, _) = dns_check(&relay.config_path).await;
    let line = out.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("DNSSEC: validates through the resolver 127.0.0.1:"),
        "{out}"
    );
    assert!(line.contains("DANE is used"), "{line}");
    wait_for("the DANE probe in the log", Duration::from_secs(20), || {
        relay.log().contains("DANE: on")
    });

    let stripping = Relay::start(Options {
        delivery: delivery(plain.resolver()),
        ..Options::default()
    });
    let (out, _) = dns_check(&stripping.config_path).await;
    let line = out.lines().last().unwrap_or_default();
    assert!(line.starts_with("DNSSEC: does not validate"), "{out}");
    assert!(line.contains("DANE stays off"), "{line}");
    wait_for(
        "the failed probe in the log",
        Duration::from_secs(20),
        || stripping.log().contains("DANE: off"),
    );
}

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    relay: Relay,
    mx: TestMx,
    _world: World,
}

/// The relay delivers by MX through the DNSSEC stub to a test MX that
/// presents the certificate `match` pins; `delivery.dane` stays at its
/// default ("auto").
async fn setup() -> Setup {
    let (cert, key, spki, ca) = mx_certificate();
    let mx = TestMx::start(MxConfig {
        certificate: Some((cert, key)),
        ..MxConfig::default()
    })
    .await;
    let world = world(mx.addr().port(), &spki, &ca).await;
    let relay = Relay::start(Options {
        submission: "trusted_networks = [\"127.0.0.0/8\"]".into(),
        delivery: format!(
            "resolver = \"{}\"\nmx_port = {}\ndnssec_trust_anchor = \"{}\"",
            world.stub.resolver(),
            mx.addr().port(),
            world.anchor.display()
        ),
        ..Options::default()
    });
    Setup {
        relay,
        mx,
        _world: world,
    }
}

fn send(relay: &Relay, to: &str) -> String {
    let msg = message("news@example.com", to, "dane", "hello");
    submit(relay, "news@example.com", &[to], &msg)
}

/// (type, detail) of the email's delivery events, oldest first.
/// The first delivery event: a delay whose response names `reason`, under
/// the DANE policy; the recipient is still waiting and the MX never saw a
/// transaction (nothing went out in plaintext or to an unverified host).
fn assert_deferred(s: &Setup, id: &str, reason: &str) {
    wait_for("a delivery_delayed event", WAIT, || {
        !s.relay.delivery_events(id).is_empty()
    });
    let evs = s.relay.delivery_events(id);
    let (first, detail) = &evs[0];
    assert_eq!(first, "email.delivery_delayed", "{evs:?}");
    let response = detail["response"].as_str().unwrap_or_default();
    assert!(response.contains("DANE"), "{detail}");
    assert!(response.contains(reason), "{detail}");
    assert_eq!(detail["tls_policy"], "dane", "{detail}");
    let st = s.relay.recipient_status(id);
    assert!(st != "delivered" && st != "bounced", "status {st}");
    assert!(s.mx.received().is_empty());
    let commands = s.mx.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.starts_with("MAIL") || c.starts_with("RCPT") || c.starts_with("DATA")),
        "a transaction was started: {commands:?}"
    );
}

/// A TLSA 3 1 1 record matching the MX certificate's key: delivered over
/// TLS, and the event says DANE governed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsa_match_delivers_under_dane() {
    if !dnssec::available("tlsa_match_delivers_under_dane") {
        return;
    }
    let s = setup().await;
    let id = send(&s.relay, "a@match.dane.test");
    wait_for("delivered", WAIT, || {
        s.relay.recipient_status(&id) == "delivered"
    });
    let evs = s.relay.delivery_events(&id);
    let (kind, detail) = &evs[0];
    assert_eq!(kind, "email.delivered", "{evs:?}");
    assert_eq!(detail["tls_policy"], "dane", "{detail}");
    assert!(
        detail["tls"]
            .as_str()
            .unwrap_or_default()
            .starts_with("TLSv1."),
        "{detail}"
    );
    let got = s.mx.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls.is_some());
}

/// DANE-TA: the TLSA record pins the issuing CA; the chain the MX sends
/// leads to it and the certificate names the MX host: delivered under
/// DANE. With a host the certificate does not name, the message waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ta_delivers_when_the_chain_and_name_match() {
    if !dnssec::available("dane_ta_delivers_when_the_chain_and_name_match") {
        return;
    }
    let s = setup().await;
    let id = send(&s.relay, "f@ta.dane.test");
    wait_for("delivered", WAIT, || {
        s.relay.recipient_status(&id) == "delivered"
    });
    let evs = s.relay.delivery_events(&id);
    assert_eq!(evs[0].0, "email.delivered", "{evs:?}");
    assert_eq!(evs[0].1["tls_policy"], "dane", "{:?}", evs[0].1);
    assert_eq!(s.mx.received().len(), 1);

    let s = setup().await;
    let id = send(&s.relay, "g@ta-name.dane.test");
    assert_deferred(&s, &id, "certificate");
}

/// A TLSA record for another key: the handshake is refused by the DANE
/// verifier and the message waits; no plaintext retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsa_mismatch_defers_without_plaintext() {
    if !dnssec::available("tlsa_mismatch_defers_without_plaintext") {
        return;
    }
    let s = setup().await;
    let id = send(&s.relay, "b@mismatch.dane.test");
    assert_deferred(&s, &id, "matches none of the 1 usable TLSA records");
    // The MX was reached and offered STARTTLS: the refusal is the relay's.
    assert!(s.mx.commands().iter().any(|c| c.starts_with("STARTTLS")));
}

/// The TLSA RRset's signature is forged: Bogus, so the host is not even
/// connected to, and the reason says DNSSEC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_tlsa_defers() {
    if !dnssec::available("bogus_tlsa_defers") {
        return;
    }
    let s = setup().await;
    let id = send(&s.relay, "c@bogus.dane.test");
    assert_deferred(&s, &id, "TLSA records");
    assert_deferred(&s, &id, "fail DNSSEC validation");
    assert!(
        s.mx.connections().is_empty(),
        "no connection to a Bogus host"
    );
}

/// The TLSA lookup fails on a signed chain (SERVFAIL): the host may have
/// DANE, so the message waits instead of going out unauthenticated or in
/// plaintext (the kumomta#543 downgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tlsa_lookup_on_a_signed_chain_defers() {
    if !dnssec::available("failed_tlsa_lookup_on_a_signed_chain_defers") {
        return;
    }
    let s = setup().await;
    let id = send(&s.relay, "e@servfail.dane.test");
    assert_deferred(&s, &id, "TLSA lookup");
    assert!(s.mx.connections().is_empty(), "no connection without TLSA");
}

/// An unsigned zone (delegated insecurely from the signed one): DANE does
/// not apply and the domain's own policy (opportunistic) delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_zone_falls_back_to_the_domain_policy() {
    if !dnssec::available("insecure_zone_falls_back_to_the_domain_policy") {
        return;
    }
    let s = setup().await;
    let id = send(&s.relay, "d@insecure.dane.test");
    wait_for("delivered", WAIT, || {
        s.relay.recipient_status(&id) == "delivered"
    });
    let evs = s.relay.delivery_events(&id);
    let (kind, detail) = &evs[0];
    assert_eq!(kind, "email.delivered", "{evs:?}");
    assert_eq!(detail["tls_policy"], "opportunistic", "{detail}");
    assert_eq!(s.mx.received().len(), 1);
}
