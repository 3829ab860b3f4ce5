//! DKIM keys and signing (RFC 6376, RFC 8463) on mail-auth with aws-lc-rs.
//!
//! Signing happens after every rewrite, on the exact bytes the client sends,
//! so the caller prepends [`sign`]'s output and changes nothing afterwards.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use mail_auth::common::crypto::{
    Algorithm, Ed25519Key, HashContext, HashImpl, HashOutput, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimAlgorithm {
    Rsa,
    Ed25519,
}

impl DkimAlgorithm {
    fn dns_tag(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }
}

enum Secret {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// A private key bound to the domain and selector it signs for.
pub struct DkimKey {
    domain: String,
    selector: String,
    secret: Secret,
    /// What goes into `p=`: SubjectPublicKeyInfo DER for RSA (what
    /// opendkim-genkey publishes), the raw 32 bytes for Ed25519 (RFC 8463).
    public_key: Vec<u8>,
}

impl fmt::Debug for DkimKey {
    // Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm())
            .finish()
    }
}

impl DkimKey {
    /// PKCS#8 PEM (RSA or Ed25519, detected), or PKCS#1 "RSA PRIVATE KEY" PEM.
    /// Errors name the path.
    pub fn load(domain: &str, selector: &str, path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("DKIM key {}: cannot read: {e}", path.display()))?;
        Self::from_pem(domain, selector, &pem)
            .map_err(|e| format!("DKIM key {}: {e}", path.display()))
    }

    /// Same as [`DkimKey::load`], from PEM bytes already in memory.
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, String> {
        check_label("domain", domain)?;
        check_label("selector", selector)?;
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            format!("no PKCS#8 \"PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\" PEM block ({e})")
        })?;
        let secret = match der {
            PrivateKeyDer::Pkcs1(_) => Secret::Rsa(rsa_from_der(der)?),
            PrivateKeyDer::Pkcs8(ref pkcs8) => {
                // "maybe_unchecked" also accepts the PKCS#8 v1 files OpenSSL
                // writes (no embedded public key); aws-lc-rs's own are v2.
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()) {
                    Ok(key) => Secret::Ed25519(key),
                    Err(_) => Secret::Rsa(rsa_from_der(der)?),
                }
            }
            PrivateKeyDer::Sec1(_) => {
                return Err("EC (SEC1) keys cannot sign DKIM; use RSA or Ed25519".into())
            }
            _ => return Err("unsupported private key format".into()),
        };
        let public_key = match &secret {
            Secret::Rsa(key) => rsa_spki(&key.public_key())?,
            Secret::Ed25519(key) => key.public_key(),
        };
        Ok(DkimKey {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            secret,
            public_key,
        })
    }

    pub fn algorithm(&self) -> DkimAlgorithm {
        match self.secret {
            Secret::Rsa(_) => DkimAlgorithm::Rsa,
            Secret::Ed25519(_) => DkimAlgorithm::Ed25519,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The TXT record value to publish at [`DkimKey::dns_name`].
    pub fn dns_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().dns_tag(),
            base64::engine::general_purpose::STANDARD.encode(&self.public_key)
        )
    }

    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

fn check_label(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid DKIM {what} {value:?}"))
    }
}

fn rsa_from_der(der: PrivateKeyDer<'_>) -> Result<RsaKey<Sha256>, String> {
    RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
        format!("not a usable RSA or Ed25519 private key (RSA must be 2048-8192 bits): {e}")
    })
}

/// The crypto library hands out the bare PKCS#1 RSAPublicKey; DNS wants it wrapped.
fn rsa_spki(pkcs1: &[u8]) -> Result<Vec<u8>, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    let key = rsa::RsaPublicKey::from_pkcs1_der(pkcs1)
        .map_err(|e| format!("cannot read RSA public key: {e}"))?;
    key.to_public_key_der()
        .map(|der| der.as_bytes().to_vec())
        .map_err(|e| format!("cannot encode RSA public key: {e}"))
}

/// Generates a key (RSA-2048 or Ed25519), writes it as PKCS#8 PEM with mode
/// 0600 (an existing file is never overwritten) and returns it loaded back
/// from disk, so what was written is known to be usable.
pub fn generate_key(
    domain: &str,
    selector: &str,
    alg: DkimAlgorithm,
    out: &Path,
) -> Result<DkimKey, String> {
    let fail = |e: String| format!("DKIM key {}: {e}", out.display());
    check_label("domain", domain).map_err(fail)?;
    check_label("selector", selector).map_err(fail)?;
    // Checked before the (slow) RSA generation; create_new below is what
    // actually guarantees nothing is overwritten.
    if out.symlink_metadata().is_ok() {
        return Err(fail("already exists; refusing to overwrite".into()));
    }
    let pkcs8 = match alg {
        DkimAlgorithm::Rsa => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let pair = DkimKeyPair::generate_rsa(2048)
                .map_err(|e| fail(format!("RSA key generation failed: {e}")))?;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(pair.private_key())
                .map_err(|e| fail(format!("generated RSA key unreadable: {e}")))?;
            key.to_pkcs8_der()
                .map_err(|e| fail(format!("cannot encode PKCS#8: {e}")))?
                .as_bytes()
                .to_vec()
        }
        DkimAlgorithm::Ed25519 => {
            let pair = DkimKeyPair::generate_ed25519()
                .map_err(|e| fail(format!("Ed25519 key generation failed: {e}")))?;
            ed25519_pkcs8_v1(pair.private_key()).map_err(fail)?
        }
    };
    let pem = pem_encode("PRIVATE KEY", &pkcs8);
    write_new_private(out, pem.as_bytes()).map_err(fail)?;
    DkimKey::load(domain, selector, out)
}

/// aws-lc-rs writes PKCS#8 v2 (RFC 5958, with the public key); OpenSSL 3.0 and
/// the tools built on it (OpenDKIM, rspamd) read only the v1 form RFC 8410
/// shows, so the public key is dropped (it is derived from the seed anyway).
fn ed25519_pkcs8_v1(v2: &[u8]) -> Result<Vec<u8>, String> {
    use rsa::pkcs8::der::Encode;
    use rsa::pkcs8::{ObjectIdentifier, PrivateKeyInfo};
    const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
    let mut info = PrivateKeyInfo::try_from(v2)
        .map_err(|e| format!("generated Ed25519 PKCS#8 unreadable: {e}"))?;
    if info.algorithm.oid != ED25519 || info.algorithm.parameters.is_some() {
        return Err(format!(
            "generated key has algorithm {}, not Ed25519",
            info.algorithm.oid
        ));
    }
    info.public_key = None;
    info.to_der()
        .map_err(|e| format!("cannot encode Ed25519 PKCS#8 v1: {e}"))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => "already exists; refusing to overwrite".into(),
            _ => format!("cannot create: {e}"),
        })?;
    let written = file.write_all(bytes).and_then(|_| file.sync_all());
    if let Err(e) = written {
        // A truncated key file would fail later with a confusing error.
        let _ = std::fs::remove_file(path);
        return Err(format!("cannot write: {e}"));
    }
    Ok(())
}

/// Headers signed when present. From is always signed, and once more than it
/// occurs, so a second From cannot be added without breaking the signature.
/// The same holds for the one-click unsubscribe pair when present (see
/// [`OVERSIGNED_WHEN_PRESENT`]).
const SIGNED_HEADERS: &[&str] = &[
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "Sender",
    "Feedback-ID",
];

/// Signed once more than they occur, when they occur: mailbox providers act
/// on List-Unsubscribe(-Post) (RFC 8058 requires them DKIM-covered), so a
/// replayer must not be able to add a second one pointing elsewhere. Absent
/// ones are not signed, so a mailing list may still add its own.
const OVERSIGNED_WHEN_PRESENT: &[&str] = &["List-Unsubscribe", "List-Unsubscribe-Post"];

/// The `h=` list for this message: From for each occurrence plus one, then
/// every other listed header present (the over-signed ones as often as they
/// occur plus one).
pub fn header_list(message: &[u8]) -> Result<Vec<&'static str>, String> {
    let names = header_names(message);
    let froms = names
        .iter()
        .filter(|n| n.eq_ignore_ascii_case(b"From"))
        .count();
    if froms == 0 {
        return Err("message has no From header; DKIM requires signing it".into());
    }
    let mut list = vec!["From"; froms + 1];
    for h in SIGNED_HEADERS {
        let n = names
            .iter()
            .filter(|n| n.eq_ignore_ascii_case(h.as_bytes()))
            .count();
        if n == 0 {
            continue;
        }
        let times = if OVERSIGNED_WHEN_PRESENT.contains(h) {
            n + 1
        } else {
            1
        };
        list.extend(std::iter::repeat_n(*h, times));
    }
    Ok(list)
}

/// Field names of the header section, as written (not trimmed, so they
/// compare the way mail-auth's canonicalization matches them).
fn header_names(message: &[u8]) -> Vec<&[u8]> {
    let mut names = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            names.push(&line[..colon]);
        }
    }
    names
}

/// mail-auth's signer takes its key by value; this lends it ours per
/// message, with the body hash when [`dkim_body`](super::dkim_body) could
/// compute it.
struct Lend<'a> {
    secret: &'a Secret,
    body_hash: Option<aws_lc_rs::digest::Digest>,
}

impl SigningKey for Lend<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self.secret {
            Secret::Rsa(key) => key.sign(input),
            Secret::Ed25519(key) => key.sign(input),
        }
    }

    // mail-auth's signer hashes only the canonical body through the key
    // (the signature's own hash is inside `sign`); the `same_bh` test below
    // would catch a version that hashed anything else here.
    fn hash(&self, body: impl Writable) -> HashOutput {
        match self.body_hash {
            Some(digest) => HashOutput::Digest(digest),
            None => {
                let mut hasher = <Sha256 as HashImpl>::hasher();
                body.write(&mut hasher);
                hasher.complete()
            }
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self.secret {
            Secret::Rsa(key) => key.algorithm(),
            Secret::Ed25519(key) => key.algorithm(),
        }
    }
}

/// Signs with every key (relaxed/relaxed) and returns the DKIM-Signature
/// header lines, CRLF-terminated, to prepend to `message` unchanged.
pub fn sign(message: &[u8], keys: &[DkimKey]) -> Result<Vec<u8>, String> {
    sign_with(message, keys, super::dkim_body::relaxed_body_hash(message))
}

fn sign_with(
    message: &[u8],
    keys: &[DkimKey],
    body_hash: Option<aws_lc_rs::digest::Digest>,
) -> Result<Vec<u8>, String> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let headers = header_list(message)?;
    let mut out = Vec::with_capacity(keys.len() * 512);
    for key in keys {
        let lend = Lend {
            secret: &key.secret,
            body_hash,
        };
        let signer = DkimSigner::from_key(lend)
            .domain(key.domain.as_str())
            .selector(key.selector.as_str())
            .headers(headers.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        // The message comes from the network; a bug in the parser below us
        // must become an error for this message, not take the runner down.
        let signed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| signer.sign(message)))
                .map_err(|_| format!("DKIM signing panicked for {}", key.dns_name()))?
                .map_err(|e| format!("DKIM signing with {} failed: {e}", key.dns_name()))?;
        out.extend_from_slice(signed.to_header().as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_is_oversigned_and_absent_headers_skipped() {
        let msg = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(
            header_list(msg).unwrap(),
            vec!["From", "From", "To", "Subject"]
        );
    }

    #[test]
    fn unsubscribe_headers_are_oversigned_only_when_present() {
        let msg = b"From: a@example.com\r\nList-Unsubscribe: <https://t.example.com/u>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nbody\r\n";
        assert_eq!(
            header_list(msg).unwrap(),
            vec![
                "From",
                "From",
                "List-Unsubscribe",
                "List-Unsubscribe",
                "List-Unsubscribe-Post",
                "List-Unsubscribe-Post"
            ]
        );
        let msg = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n";
        assert!(!header_list(msg).unwrap().contains(&"List-Unsubscribe"));
    }

    #[test]
    fn header_names_match_case_insensitively() {
        let msg = b"FROM: a@example.com\r\nmessage-id: <x@y>\r\n\r\n";
        assert_eq!(
            header_list(msg).unwrap(),
            vec!["From", "From", "Message-ID"]
        );
    }

    #[test]
    fn header_scan_stops_at_body_and_skips_folds() {
        let msg = b"Subject: a\r\n b\r\nFrom : x\r\nTo:y\r\n\r\nFrom: body\r\n";
        assert_eq!(
            header_names(msg),
            vec![&b"Subject"[..], &b"From "[..], &b"To"[..]]
        );
    }

    #[test]
    fn missing_from_is_an_error() {
        assert!(header_list(b"To: b@example.net\r\n\r\nbody").is_err());
        assert!(header_list(b"").is_err());
        assert!(header_list(b"\x00\xff\r\n\r\n").is_err());
    }

    #[test]
    fn pem_lines_are_64_columns() {
        let pem = pem_encode("PRIVATE KEY", &[7u8; 100]);
        let body: Vec<&str> = pem.lines().collect();
        assert_eq!(body[0], "-----BEGIN PRIVATE KEY-----");
        assert_eq!(body[1].len(), 64);
        assert_eq!(*body.last().unwrap(), "-----END PRIVATE KEY-----");
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        assert!(DkimKey::from_pem("example.com", "s1", b"garbage").is_err());
        let junk = pem_encode("PRIVATE KEY", b"\x30\x03\x02\x01\x00");
        assert!(DkimKey::from_pem("example.com", "s1", junk.as_bytes()).is_err());
        let ec = pem_encode("EC PRIVATE KEY", b"\x30\x03\x02\x01\x00");
        let err = DkimKey::from_pem("example.com", "s1", ec.as_bytes()).unwrap_err();
        assert!(err.contains("EC"), "{err}");
        assert!(DkimKey::from_pem("exa mple.com", "s1", b"").is_err());
    }

    #[test]
    fn ed25519_round_trip_and_record() {
        let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
        let pem = pem_encode("PRIVATE KEY", &pkcs8);
        let key = DkimKey::from_pem("Example.COM", "s1", pem.as_bytes()).unwrap();
        assert_eq!(key.algorithm(), DkimAlgorithm::Ed25519);
        assert_eq!(key.dns_name(), "s1._domainkey.example.com");
        let rec = key.dns_record();
        assert!(rec.starts_with("v=DKIM1; k=ed25519; p="), "{rec}");
        // 32 raw bytes -> 44 base64 characters
        assert_eq!(rec.len(), "v=DKIM1; k=ed25519; p=".len() + 44);
        let sig = sign(b"From: a@example.com\r\n\r\nhi\r\n", &[key]).unwrap();
        let sig = String::from_utf8(sig).unwrap();
        assert!(sig.starts_with("DKIM-Signature: "), "{sig}");
        assert!(sig.ends_with("\r\n"));
        assert!(sig.contains("a=ed25519-sha256"));
        assert!(sig.contains("c=relaxed/relaxed"));
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1_and_both_versions_load() {
        let v2 = Ed25519Key::generate_pkcs8().unwrap();
        let v1 = ed25519_pkcs8_v1(&v2).unwrap();
        // RFC 8410 section 10.3: version 0, id-Ed25519, OCTET STRING in an
        // OCTET STRING holding the 32-byte seed, nothing else.
        let head = b"\x30\x2e\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20";
        assert_eq!(v1.len(), 48);
        assert_eq!(&v1[..16], head);
        assert_eq!(&v1[16..], &v2[16..48], "the seed is kept");
        let load = |der: &[u8]| {
            let pem = pem_encode("PRIVATE KEY", der);
            DkimKey::from_pem("example.com", "s1", pem.as_bytes()).unwrap()
        };
        let (k1, k2) = (load(&v1), load(&v2));
        assert_eq!(k1.algorithm(), DkimAlgorithm::Ed25519);
        assert_eq!(k1.dns_record(), k2.dns_record());
        assert!(ed25519_pkcs8_v1(&v1).is_ok(), "v1 in, v1 out");
        assert!(ed25519_pkcs8_v1(b"\x30\x00").is_err());
    }

    /// The `bh=` our body hash gives is the one mail-auth computes itself,
    /// for plain copies and for ones that need canonicalising.
    #[test]
    fn same_bh() {
        let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
        let pem = pem_encode("PRIVATE KEY", &pkcs8);
        let keys = [DkimKey::from_pem("example.com", "s1", pem.as_bytes()).unwrap()];
        let bh = |sig: Vec<u8>| {
            let sig = String::from_utf8(sig).unwrap().replace("\r\n", "");
            let at = sig.find("bh=").unwrap() + 3;
            sig[at..at + sig[at..].find(';').unwrap()].replace([' ', '\t'], "")
        };
        let mut fast = 0;
        for msg in [
            &b"From: a@example.com\r\nSubject: x\r\n y\r\n\r\n<p>hello there</p>\r\n\r\n"[..],
            b"From: a@example.com\r\n\r\n",
            b"From: a@example.com\r\n\r\ntab\there  and there \r\n\r\n",
            b"From: a@example.com\nTo: b@example.net\n\nbare LF\n",
        ] {
            let body_hash = super::super::dkim_body::relaxed_body_hash(msg);
            fast += usize::from(body_hash.is_some());
            let ours = sign_with(msg, &keys, body_hash).unwrap();
            let theirs = sign_with(msg, &keys, None).unwrap();
            assert_eq!(bh(ours), bh(theirs), "{}", String::from_utf8_lossy(msg));
        }
        assert_eq!(fast, 2, "the plain messages take the fast path");
    }

    #[test]
    fn no_keys_no_signature() {
        assert!(sign(b"anything", &[]).unwrap().is_empty());
    }
}
