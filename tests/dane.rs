//! DANE (RFC 7672) through the real binary, against a DNSSEC-signed test
//! zone made at test time with ldnsutils and served on loopback
//! (tests/support/dnssec.rs). The zone's key is the relay's trust anchor
//! (`delivery.dnssec_trust_anchor`): a trust-anchor island.
//!
//! Zone `dane.test` (signed), with the MX hosts all on the test MX:
//! - `match.dane.test`: TLSA 3 1 1 of the MX certificate's key;
//! - `mismatch.dane.test`: TLSA 3 1 1 of another key;
//! - `bogus.dane.test`: the right TLSA, but its RRSIG is tampered with;
//! - `insecure.dane.test`: an unsigned child zone, delegated without DS
//!   (the parent's signed NSEC proves it insecure).

mod harness;
mod support;

use harness::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::dnssec::{self, DnssecStub, SignedZone};

/// The signed parent zone; `port` is the MX port the TLSA names carry.
fn parent_zone(port: u16, good: &str, other: &str) -> String {
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

/// A certificate for the test MX (PEM chain and key) and the SHA-256 of
/// its SubjectPublicKeyInfo, as `TLSA 3 1 1` carries it.
fn mx_certificate() -> (String, String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mx.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    (cert.pem(), key.serialize_pem(), hex(digest.as_ref()))
}

struct World {
    _dir: tempfile::TempDir,
    anchor: PathBuf,
    stub: DnssecStub,
}

async fn world(port: u16, good: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let other = hex(&[0x5a; 32]);
    let zone = SignedZone::sign(
        dir.path(),
        "dane.test",
        &parent_zone(port, good, &other),
        &[],
    );
    let signed = tamper_rrsig(
        &zone.signed,
        &format!("_{port}._tcp.mx-bogus.dane.test."),
        "TLSA",
    );
    let anchor = dir.path().join("anchor.key");
    std::fs::write(&anchor, &zone.anchor).unwrap();
    let stub = DnssecStub::start(&[&signed, CHILD_ZONE]).await;
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
    let (_, _, spki) = mx_certificate();
    let w = world(25, &spki).await;
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
