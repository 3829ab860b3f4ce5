//! DKIM: keys written by generate_key, signatures checked by mail-auth's
//! verifier (fed the published record) and independently by dkimpy.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use mail_auth::DkimResult;
use support::dkim::{dkimpy_verify, mail_auth_verify, skip_dkimpy};
use support::mx::{MxConfig, TestMx};
use trackrelay::outbound::{
    deliver, generate_key, sign, ClientConfig, DkimAlgorithm, DkimKey, OutgoingMessage, TlsMemory,
};

const MESSAGE: &[u8] = b"From: \"Sender\" <sender@example.com>\r\n\
To: rcpt@example.net\r\n\
Subject: DKIM test\r\n\
Date: Mon, 04 May 2026 10:00:00 +0000\r\n\
Message-ID: <dkim-test@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
List-Unsubscribe: <mailto:unsub@example.com>\r\n\
X-Not-Signed: whatever\r\n\
\r\n\
Hello,\r\n\
.a line starting with a dot\r\n\
  indented   with  spaces  \r\n\
\r\n\
\r\n";

/// Generated keys live for the whole test binary: RSA generation is slow in
/// debug builds, and one key per algorithm is enough.
struct Keys {
    _dir: tempfile::TempDir,
    rsa_path: PathBuf,
    ed_path: PathBuf,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rsa_path = dir.path().join("example.com.rsa.pem");
        let ed_path = dir.path().join("example.com.ed.pem");
        generate_key("example.com", "rsa1", DkimAlgorithm::Rsa, &rsa_path).unwrap();
        generate_key("example.com", "ed1", DkimAlgorithm::Ed25519, &ed_path).unwrap();
        Keys {
            _dir: dir,
            rsa_path,
            ed_path,
        }
    })
}

fn rsa_key() -> DkimKey {
    DkimKey::load("example.com", "rsa1", &keys().rsa_path).unwrap()
}

fn ed_key() -> DkimKey {
    DkimKey::load("example.com", "ed1", &keys().ed_path).unwrap()
}

fn records(keys: &[&DkimKey]) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| (k.dns_name(), k.dns_record()))
        .collect()
}

fn signed(message: &[u8], keys: &[DkimKey]) -> Vec<u8> {
    let mut out = sign(message, keys).unwrap();
    out.extend_from_slice(message);
    out
}

fn dkimpy_expect(test: &str, message: &[u8], records: &[(String, String)], pass: bool) {
    match dkimpy_verify(message, records) {
        None => skip_dkimpy(test),
        Some(Ok(report)) => {
            eprint!("{test}: dkimpy: {report}");
            assert!(pass, "dkimpy passed a message it should fail:\n{report}")
        }
        Some(Err(report)) => {
            eprint!("{test}: dkimpy: {report}");
            assert!(!pass, "dkimpy failed:\n{report}")
        }
    }
}

async fn verifies(test: &str, keys: Vec<DkimKey>) {
    let recs = records(&keys.iter().collect::<Vec<_>>());
    let message = signed(MESSAGE, &keys);
    let results = mail_auth_verify(&message, &recs).await;
    assert_eq!(results.len(), keys.len());
    assert!(
        results.iter().all(|r| *r == DkimResult::Pass),
        "{results:?}"
    );
    dkimpy_expect(test, &message, &recs, true);
}

#[tokio::test]
async fn rsa_signature_verifies() {
    verifies("rsa_signature_verifies", vec![rsa_key()]).await;
}

#[tokio::test]
async fn ed25519_signature_verifies() {
    verifies("ed25519_signature_verifies", vec![ed_key()]).await;
}

#[tokio::test]
async fn every_key_signs() {
    let message = sign(MESSAGE, &[rsa_key(), ed_key()]).unwrap();
    let text = String::from_utf8(message).unwrap();
    assert_eq!(text.matches("DKIM-Signature:").count(), 2);
    assert!(text.contains("a=rsa-sha256") && text.contains("a=ed25519-sha256"));
    verifies("every_key_signs", vec![rsa_key(), ed_key()]).await;
}

#[test]
fn signature_header_shape() {
    let header = String::from_utf8(sign(MESSAGE, &[ed_key()]).unwrap()).unwrap();
    assert!(header.starts_with("DKIM-Signature: "));
    assert!(header.ends_with("\r\n"));
    // Continuation lines are folded with whitespace, so the block is valid
    // header syntax when prepended.
    for line in header.trim_end_matches("\r\n").split("\r\n").skip(1) {
        assert!(line.starts_with([' ', '\t']), "{line:?}");
    }
    let unfolded: String = header.split("\r\n").map(str::trim).collect();
    assert!(unfolded.contains("c=relaxed/relaxed"), "{unfolded}");
    assert!(unfolded.contains("d=example.com"));
    assert!(unfolded.contains("s=ed1"));
    let h = unfolded
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let signed: Vec<&str> = h.split(':').collect();
    assert_eq!(
        signed.iter().filter(|n| **n == "from").count(),
        2,
        "From oversigned: {h}"
    );
    for name in [
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "list-unsubscribe",
    ] {
        assert!(signed.contains(&name), "{name} not in h={h}");
    }
    for name in ["x-not-signed", "cc", "reply-to", "references"] {
        assert!(
            !signed.contains(&name),
            "{name} in h={h}, but absent or not ours to sign"
        );
    }
}

#[tokio::test]
async fn tampering_breaks_the_signature() {
    let key = rsa_key();
    let recs = records(&[&key]);
    let message = signed(MESSAGE, &[key]);
    let text = String::from_utf8(message.clone()).unwrap();

    let body = text.replace("Hello,", "Hellp,").into_bytes();
    let subject = text
        .replace("Subject: DKIM test", "Subject: DKIM jest")
        .into_bytes();
    // A second From would pass if From were signed only once.
    let extra_from = text
        .replace("To: rcpt", "From: evil@example.org\r\nTo: rcpt")
        .into_bytes();
    for (what, tampered) in [
        ("body", body),
        ("subject", subject),
        ("extra From", extra_from),
    ] {
        let results = mail_auth_verify(&tampered, &recs).await;
        assert!(
            results.iter().all(|r| matches!(
                r,
                DkimResult::Fail(_) | DkimResult::PermError(_) | DkimResult::Neutral(_)
            )),
            "{what}: {results:?}"
        );
        dkimpy_expect("tampering_breaks_the_signature", &tampered, &recs, false);
    }

    // Relaxed canonicalization tolerates what relays do to whitespace.
    let rewrapped = text
        .replace("  indented   with  spaces  ", "  indented with spaces")
        .into_bytes();
    let results = mail_auth_verify(&rewrapped, &recs).await;
    assert!(
        results.iter().all(|r| *r == DkimResult::Pass),
        "{results:?}"
    );
}

#[test]
fn generate_key_writes_0600_pkcs8_and_refuses_to_overwrite() {
    for (alg, tag) in [
        (DkimAlgorithm::Rsa, "rsa"),
        (DkimAlgorithm::Ed25519, "ed25519"),
    ] {
        let path = if alg == DkimAlgorithm::Rsa {
            &keys().rsa_path
        } else {
            &keys().ed_path
        };
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{tag}");
        let pem = std::fs::read_to_string(path).unwrap();
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{tag}: {pem:.40}"
        );
        let key = DkimKey::load("example.com", "sel", path).unwrap();
        assert_eq!(key.algorithm(), alg);
        assert_eq!(key.dns_name(), "sel._domainkey.example.com");
        assert!(key
            .dns_record()
            .starts_with(&format!("v=DKIM1; k={tag}; p=")));

        let before = std::fs::read(path).unwrap();
        let err = generate_key("example.com", "sel", alg, path).unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("overwrite"),
            "{err}"
        );
        assert_eq!(std::fs::read(path).unwrap(), before, "untouched");
    }
}

#[tokio::test]
async fn generated_rsa_key_verifies_against_its_published_record() {
    // The record published is the one dkim-keygen prints; the message must
    // verify against exactly that.
    let key = rsa_key();
    let rec = key.dns_record();
    let b64 = rec.split("p=").nth(1).unwrap();
    assert!(
        b64.len() > 350,
        "RSA-2048 SubjectPublicKeyInfo: {}",
        b64.len()
    );
    verifies(
        "generated_rsa_key_verifies_against_its_published_record",
        vec![key],
    )
    .await;
}

#[tokio::test]
async fn pkcs1_rsa_pem_loads_and_signs() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let pkcs8 = std::fs::read_to_string(&keys().rsa_path).unwrap();
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pkcs8).unwrap();
    let pkcs1 = private.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pkcs1.pem");
    std::fs::write(&path, pkcs1.as_bytes()).unwrap();
    let key = DkimKey::load("example.com", "rsa1", &path).unwrap();
    assert_eq!(
        key.dns_record(),
        rsa_key().dns_record(),
        "same public key either way"
    );
    verifies("pkcs1_rsa_pem_loads_and_signs", vec![key]).await;
}

#[test]
fn load_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = DkimKey::load("example.com", "s1", &missing).unwrap_err();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let err = DkimKey::load("example.com", "s1", &junk).unwrap_err();
    assert!(err.contains(&junk.display().to_string()), "{err}");
}

#[test]
fn signing_input_from_the_network_never_panics() {
    let keys = [ed_key()];
    for input in [
        &b""[..],
        b"\r\n\r\n",
        b"From: a@b\r\n",
        b"From:\r\n\r\n",
        b"\xff\xfe: \x00\r\nFrom: \xff\r\n\r\n\xff",
        b"From: a@b\r\n\tfolded\r\n without body",
        b"From: a@b\n\nLF only\n",
    ] {
        let _ = sign(input, &keys);
    }
    assert!(sign(b"To: x@y\r\n\r\nno from", &keys).is_err());
}

#[tokio::test]
async fn signed_message_delivered_through_the_mx_verifies() {
    let keys = [rsa_key(), ed_key()];
    let recs = records(&keys.iter().collect::<Vec<_>>());
    let data = signed(MESSAGE, &keys);
    let mx = TestMx::start(MxConfig::default()).await;
    let mut cfg = ClientConfig::new("relay.test");
    cfg.timeouts.quit = Duration::from_secs(2);
    let msg = OutgoingMessage {
        mail_from: "sender@example.com".into(),
        rcpt_to: "rcpt@example.net".into(),
        data: data.clone(),
        needs_smtputf8: false,
        needs_8bitmime: false,
    };
    let out = deliver(mx.addr(), "mx.test", &cfg, &[msg], &TlsMemory::default()).await;
    assert!(out[0].is_delivered(), "{out:?}");
    let received = mx.received().remove(0).data;
    assert_eq!(received, data, "received bytes are the signed bytes");
    let results = mail_auth_verify(&received, &recs).await;
    assert_eq!(results, vec![DkimResult::Pass, DkimResult::Pass]);
    dkimpy_expect(
        "signed_message_delivered_through_the_mx_verifies",
        &received,
        &recs,
        true,
    );
}

/// Keys made elsewhere (OpenSSL writes PKCS#8 v1 without the public key,
/// which a strict PKCS#8 v2 reader would reject for Ed25519). Skipped without openssl.
#[tokio::test]
async fn openssl_generated_keys_load_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (alg, args) in [
        ("ed25519", &["genpkey", "-algorithm", "ed25519"][..]),
        (
            "rsa",
            &[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ][..],
        ),
        ("rsa-pkcs1", &["genrsa", "-traditional", "2048"][..]),
    ] {
        let path = dir.path().join(format!("{alg}.pem"));
        let status = std::process::Command::new("openssl")
            .args(args)
            .arg("-out")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "SKIPPED openssl_generated_keys_load_and_verify ({alg}): openssl not available"
            );
            continue;
        }
        let key =
            DkimKey::load("example.com", "ossl", &path).unwrap_or_else(|e| panic!("{alg}: {e}"));
        verifies("openssl_generated_keys_load_and_verify", vec![key]).await;
    }
}

/// Runs `openssl` with `args`; `None` when it cannot be started at all.
fn openssl(args: &[&std::ffi::OsStr]) -> Option<std::process::Output> {
    match std::process::Command::new("openssl").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("SKIPPED openssl check: cannot run openssl ({e})");
            None
        }
    }
}

/// The real binary's `dkim-keygen` writes keys that OpenSSL 3 (and so
/// OpenDKIM and rspamd) reads, whose public half is the record printed, and
/// which trackrelay itself still signs with. Ed25519 used to be written as
/// PKCS#8 v2, which `openssl pkey` refuses as "unsupported".
#[tokio::test]
async fn dkim_keygen_output_is_read_by_openssl_and_signs() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    for alg in ["ed25519", "rsa"] {
        let path = dir.path().join(format!("{alg}.pem"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"))
            .args(["dkim-keygen", "--domain", "example.com", "--selector", "kg"])
            .args(["--algorithm", alg, "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{alg}: {out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], "kg._domainkey.example.com", "{stdout}");
        let published = base64::engine::general_purpose::STANDARD
            .decode(lines[1].split("p=").nth(1).unwrap())
            .unwrap();

        let Some(check) = openssl(&[
            "pkey".as_ref(),
            "-in".as_ref(),
            path.as_os_str(),
            "-noout".as_ref(),
        ]) else {
            return;
        };
        assert!(
            check.status.success(),
            "{alg}: openssl pkey refuses the key: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        // OpenSSL's view of the public key is what the record publishes:
        // the whole SubjectPublicKeyInfo for RSA, the raw 32 bytes (the
        // SPKI's tail) for Ed25519.
        let spki = openssl(&[
            "pkey".as_ref(),
            "-in".as_ref(),
            path.as_os_str(),
            "-pubout".as_ref(),
            "-outform".as_ref(),
            "DER".as_ref(),
        ])
        .unwrap();
        assert!(spki.status.success(), "{alg}: {spki:?}");
        if alg == "ed25519" {
            assert_eq!(published.len(), 32);
            assert!(spki.stdout.ends_with(&published), "{alg}");
        } else {
            assert_eq!(spki.stdout, published, "{alg}");
        }

        let key = DkimKey::load("example.com", "kg", &path).unwrap();
        assert_eq!(key.dns_record(), lines[1]);
        verifies("dkim_keygen_output_is_read_by_openssl_and_signs", vec![key]).await;
    }
}
