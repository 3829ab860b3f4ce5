//! What one DKIM signature costs per recipient copy, with the graph's crypto
//! provider (aws-lc-rs) against the other RSA in the graph.
//!
//!   CARGO_TARGET_DIR=... cargo bench --bench dkim [-- SECONDS_PER_CASE]
//!
//! Cases (taking turns, so load from elsewhere on the shared box hits them
//! alike), in microseconds per operation:
//! * `aws-lc rsa2048`: aws-lc-rs's RSA-2048 PKCS#1 v1.5 SHA-256 signature over a
//!   DKIM-sized header block (what mail-auth calls once per copy);
//! * `rustcrypto rsa2048`: the same signature with the `rsa` crate (in the
//!   graph for key generation), CRT with precomputed values, no blinding
//!   (blinding would only make it slower);
//! * `dkim::sign 50KB`: our whole signing step on a 50 KB newsletter
//!   whose body relaxed canonicalisation changes (a run of blanks on every
//!   line), so mail-auth canonicalises it (+ body hash + header hash + RSA);
//! * `dkim::sign 50KB plain`: the same on a body already in relaxed form,
//!   as nearly every copy is (CRLF only, no tab, no run of blanks), which
//!   is hashed as it is (`outbound::dkim_body`, issue 15);
//! * `sha256 50KB`: aws-lc-rs's SHA-256 over the same bytes, the floor of the
//!   body hash.
//!
//! OpenSSL's own figure on the same machine (`openssl speed rsa2048`) is the
//! yardstick (OpenSSL 3 and aws-lc share the AVX-512 IFMA RSA code); it is
//! printed beside ours in bench/README.md. ring, the provider before issue 15,
//! took 1.85x aws-lc-rs's time here.

use std::hint::black_box;
use std::time::{Duration, Instant};
use trackrelay::outbound::dkim::{self, DkimAlgorithm};

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.pem");
    let key = dkim::generate_key("example.com", "bench", DkimAlgorithm::Rsa, &path)
        .expect("RSA-2048 key");
    let pem = std::fs::read(&path).expect("key file");
    let der = pkcs8_der(&pem);

    let lc_key = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).expect("aws-lc-rs reads the key");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let rc_key = {
        use rsa::pkcs8::DecodePrivateKey;
        rsa::RsaPrivateKey::from_pkcs8_der(&der).expect("rsa reads the key")
    };

    // About what mail-auth hashes and signs: the signed header fields plus
    // the DKIM-Signature header without b=.
    let header_block = vec![b'h'; 700];
    let message = newsletter(50_000, "  ");
    let plain = newsletter(50_000, " ");

    let mut sig = vec![0u8; lc_key.public_modulus_len()];
    let mut lc_sign = || {
        lc_key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &rng,
                black_box(&header_block),
                &mut sig,
            )
            .expect("aws-lc-rs signs");
        black_box(&sig);
    };
    let mut rc_sign = || {
        // DigestInfo for SHA-256 (RFC 8017 9.2, note 1) + the digest.
        const PREFIX: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(&header_block));
        let mut t = PREFIX.to_vec();
        t.extend_from_slice(digest.as_ref());
        let s = rc_key
            .sign(rsa::Pkcs1v15Sign::new_unprefixed(), &t)
            .expect("rsa signs");
        black_box(s);
    };
    let mut full = || {
        let s = dkim::sign(black_box(&message), std::slice::from_ref(&key)).expect("signs");
        black_box(s);
    };
    let mut full_plain = || {
        let s = dkim::sign(black_box(&plain), std::slice::from_ref(&key)).expect("signs");
        black_box(s);
    };
    let mut body_hash = || {
        black_box(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            black_box(&message),
        ));
    };

    let us = interleaved(
        budget,
        &mut [
            &mut lc_sign,
            &mut rc_sign,
            &mut full,
            &mut full_plain,
            &mut body_hash,
        ],
    );
    println!("RSA-2048 / DKIM, microseconds per operation (lower is better)");
    for (name, v) in [
        "aws-lc rsa2048",
        "rustcrypto rsa2048",
        "dkim::sign 50KB",
        "dkim::sign 50KB plain",
        "sha256 50KB",
    ]
    .iter()
    .zip(us)
    {
        println!("{name:<22} {v:>9.1}");
    }
    println!(
        "aws-lc-rs is {:.2}x the speed of rustcrypto; RSA is {:.0}% of dkim::sign",
        us[1] / us[0],
        100.0 * us[0] / us[2]
    );
}

/// Runs the cases in turn, round after round, for about `budget`, and
/// returns microseconds per call of each.
fn interleaved<const N: usize>(budget: Duration, cases: &mut [&mut dyn FnMut(); N]) -> [f64; N] {
    for case in cases.iter_mut() {
        case();
    }
    let mut spent = [Duration::ZERO; N];
    let mut rounds = 0u32;
    let start = Instant::now();
    while start.elapsed() < budget || rounds < 3 {
        for (case, t) in cases.iter_mut().zip(spent.iter_mut()) {
            let t0 = Instant::now();
            case();
            *t += t0.elapsed();
        }
        rounds += 1;
    }
    spent.map(|t| t.as_secs_f64() * 1e6 / f64::from(rounds))
}

fn pkcs8_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivatePkcs8KeyDer;
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .expect("PKCS#8 PEM")
        .secret_pkcs8_der()
        .to_vec()
}

/// A CRLF newsletter-like message of about `size` bytes, with `gap` between
/// two of each line's words.
fn newsletter(size: usize, gap: &str) -> Vec<u8> {
    let mut m = String::from(
        "From: News <news@example.com>\r\nTo: <user@example.net>\r\nSubject: Spring\r\n\
         Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n",
    );
    let mut i = 0;
    while m.len() < size {
        m.push_str(&format!(
            "<tr><td style=\"padding:20px 30px;\">Paragraph {i} of the spring{gap}newsletter, \
             with a <a href=\"https://links.example.com/v1/track/click/abcdef{i}\">link</a>.</td></tr>\r\n"
        ));
        i += 1;
    }
    m.into_bytes()
}
