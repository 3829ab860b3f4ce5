//! DKIM verification for tests: mail-auth's verifier with the published
//! records fed through its TXT cache (no DNS), and dkimpy as an independent
//! second opinion through tests/helpers/dkimverify.py.
#![allow(dead_code)]

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

/// A TXT "DNS" that only knows the records a test publishes.
#[derive(Default)]
pub struct TxtRecords(Mutex<HashMap<Box<str>, Txt>>);

impl TxtRecords {
    /// `name` like "s1._domainkey.example.com", `record` like "v=DKIM1; ...".
    pub fn publish(&self, name: &str, record: &str) {
        let key = DomainKey::parse(record.as_bytes()).expect("DKIM record parses");
        let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.0
            .lock()
            .unwrap()
            .insert(fqdn.into_boxed_str(), Txt::from(key));
    }
}

impl ResolverCache<Box<str>, Txt> for TxtRecords {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// One result per DKIM-Signature, verified by mail-auth against `records`
/// ((dns name, TXT value) pairs).
pub async fn mail_auth_verify(message: &[u8], records: &[(String, String)]) -> Vec<DkimResult> {
    let txt = TxtRecords::default();
    for (name, record) in records {
        txt.publish(name, record);
    }
    // The resolver is never asked: every key is in the cache above.
    let authenticator = MessageAuthenticator::new_cloudflare().expect("resolver");
    let parsed = AuthenticatedMessage::parse(message).expect("message parses");
    authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(&txt))
        .await
        .iter()
        .map(|output| output.result().clone())
        .collect()
}

/// dkimpy's verdict on every signature: `None` when python3 or dkimpy is
/// missing (callers skip with a message), `Some(Ok(report))` when all pass,
/// `Some(Err(report))` otherwise.
pub fn dkimpy_verify(
    message: &[u8],
    records: &[(String, String)],
) -> Option<Result<String, String>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/dkimverify.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for (name, record) in records {
        cmd.arg(name).arg(record);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(message).ok()?;
    let out = child.wait_with_output().ok()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Some(Ok(report)),
        Some(3) => None,
        _ => Some(Err(report)),
    }
}

/// For skipped checks: says so loudly in the test output.
pub fn skip_dkimpy(test: &str) {
    eprintln!("SKIPPED dkimpy check in {test}: python3 with dkimpy is not available (pip install 'dkimpy[ed25519]')");
}
