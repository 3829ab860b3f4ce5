//! Tracking tokens: self-contained, authenticated, URL-safe.
//!
//! A redirect must work without a database read and forever (even after the
//! message is pruned), so a click token carries its destination; and a token
//! must never become an open redirect, so every byte is authenticated.
//!
//! Format (all integers unsigned):
//!
//! ```text
//! token   = base64url-no-padding( payload || tag )
//! payload = header:u8 || key_id:u8 || email_id:[u8;16] || varint(rcpt_index)
//!           [ || varint(link_index) || url:UTF-8 ]        -- click tokens only
//! header  = 0x10 (version 1) | kind (0 = open, 1 = click)
//! key_id  = SHA-256("trackrelay tracking key id" || key)[0]
//! tag     = HMAC-SHA256(key, payload)[..16]               -- 128 bits
//! varint  = LEB128, at most 5 bytes for a u32, minimal form only
//! ```
//!
//! The URL runs to the tag, so it needs no length. The key id lets a token
//! made under a rotated-out key find that key without configuration; ids can
//! collide (one byte), so verification tries every key that has the id. The
//! base64 decoder rejects padding and non-zero trailing bits, so a changed
//! character always changes the decoded bytes, which the tag then rejects.

use aws_lc_rs::{digest, hmac, rand::SecureRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

const VERSION: u8 = 0x10;
const KIND_OPEN: u8 = 0;
const KIND_CLICK: u8 = 1;
const TAG_LEN: usize = 16;
/// Version and key bytes, the email id and the longest recipient varint.
const PAYLOAD_HEAD: usize = 2 + 16 + 5;
const MIN_LEN: usize = 1 + 1 + 16 + 1 + TAG_LEN;
/// Longer tokens are refused before decoding: no real link comes near this,
/// and verification runs on unauthenticated input from the internet.
const MAX_TOKEN_CHARS: usize = 64 * 1024;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Open {
        email_id: Uuid,
        rcpt_index: u32,
    },
    Click {
        email_id: Uuid,
        rcpt_index: u32,
        link_index: u32,
        url: String,
    },
}

#[derive(Clone)]
struct Key {
    id: u8,
    hmac: hmac::Key,
}

impl Key {
    fn new(secret: &[u8; 32]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"trackrelay tracking key id");
        ctx.update(secret);
        Key {
            id: ctx.finish().as_ref()[0],
            hmac: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let full = hmac::sign(&self.hmac, payload);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }
}

/// The current signing key plus older keys that still verify.
#[derive(Clone)]
pub struct TokenKeys {
    current: Key,
    /// Every key, current first, for verification.
    all: Vec<Key>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("current_key_id", &self.current.id)
            .field("keys", &self.all.len())
            .finish()
    }
}

impl TokenKeys {
    pub fn new(current: [u8; 32], old: Vec<[u8; 32]>) -> Self {
        let current = Key::new(&current);
        let mut all = vec![current.clone()];
        all.extend(old.iter().map(Key::new));
        TokenKeys { current, all }
    }

    /// Reads the secret file; creates it with 32 random bytes (mode 0600) if
    /// it is missing. A file holds either the raw 32 bytes or, for keys made
    /// by hand (`openssl rand -hex 32`), 64 hex digits. Old key files must
    /// exist: a missing old key would silently break old links.
    pub fn load_or_create(path: &Path, old_paths: &[PathBuf]) -> Result<Self, String> {
        let current = match read_key(path) {
            Ok(key) => key,
            Err(ReadError::Missing) => create_key(path)?,
            Err(ReadError::Other(e)) => return Err(e),
        };
        let mut old = Vec::with_capacity(old_paths.len());
        for p in old_paths {
            match read_key(p) {
                Ok(key) => old.push(key),
                Err(ReadError::Missing) => {
                    return Err(format!(
                        "old tracking secret {}: file not found",
                        p.display()
                    ));
                }
                Err(ReadError::Other(e)) => return Err(e),
            }
        }
        Ok(TokenKeys::new(current, old))
    }

    pub fn open_token(&self, email_id: Uuid, rcpt_index: u32) -> String {
        // Room for the tag `seal` appends: the payload is never reallocated.
        let mut payload = Vec::with_capacity(PAYLOAD_HEAD + TAG_LEN);
        self.start_payload(&mut payload, KIND_OPEN, email_id, rcpt_index);
        self.seal(payload)
    }

    pub fn click_token(
        &self,
        email_id: Uuid,
        rcpt_index: u32,
        link_index: u32,
        url: &str,
    ) -> String {
        let mut payload = Vec::with_capacity(PAYLOAD_HEAD + 5 + url.len() + TAG_LEN);
        self.start_payload(&mut payload, KIND_CLICK, email_id, rcpt_index);
        put_varint(&mut payload, link_index);
        payload.extend_from_slice(url.as_bytes());
        self.seal(payload)
    }

    /// Checks a token from the outside world. Never panics; `None` for
    /// anything not made by one of our keys.
    pub fn verify(&self, token: &str) -> Option<Token> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() < MIN_LEN || bytes[0] & 0xF0 != VERSION {
            return None;
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let key_id = payload[1];
        let authentic = self
            .all
            .iter()
            .filter(|k| k.id == key_id)
            .any(|k| constant_time_eq(&k.tag(payload), tag));
        if !authentic {
            return None;
        }
        parse_payload(payload)
    }

    /// For other authenticated tokens made with the same keys (the return
    /// path, src/feedback/return_path.rs): the current key's id and tag.
    pub(crate) fn current_key_id(&self) -> u8 {
        self.current.id
    }

    pub(crate) fn current_tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        self.current.tag(payload)
    }

    /// Whether any key with `key_id` made a tag starting with `tag`
    /// (callers may truncate), compared in constant time.
    pub(crate) fn tag_matches(&self, key_id: u8, payload: &[u8], tag: &[u8]) -> bool {
        !tag.is_empty()
            && tag.len() <= TAG_LEN
            && self
                .all
                .iter()
                .filter(|k| k.id == key_id)
                .any(|k| constant_time_eq(&k.tag(payload)[..tag.len()], tag))
    }

    fn start_payload(&self, out: &mut Vec<u8>, kind: u8, email_id: Uuid, rcpt_index: u32) {
        out.push(VERSION | kind);
        out.push(self.current.id);
        out.extend_from_slice(email_id.as_bytes());
        put_varint(out, rcpt_index);
    }

    fn seal(&self, mut payload: Vec<u8>) -> String {
        let tag = self.current.tag(&payload);
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(&payload)
    }
}

fn parse_payload(payload: &[u8]) -> Option<Token> {
    let kind = payload.first()? & 0x0F;
    let email_id = Uuid::from_slice(payload.get(2..18)?).ok()?;
    let mut rest = payload.get(18..)?;
    let rcpt_index = take_varint(&mut rest)?;
    match kind {
        KIND_OPEN if rest.is_empty() => Some(Token::Open {
            email_id,
            rcpt_index,
        }),
        KIND_CLICK => {
            let link_index = take_varint(&mut rest)?;
            let url = std::str::from_utf8(rest).ok()?.to_owned();
            Some(Token::Click {
                email_id,
                rcpt_index,
                link_index,
                url,
            })
        }
        _ => None,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Only the minimal encoding is accepted, so each value has one spelling.
fn take_varint(input: &mut &[u8]) -> Option<u32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        let bits = u32::from(b & 0x7F);
        if i == 4 && bits > 0x0F {
            return None;
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return None;
            }
            return Some(value);
        }
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

enum ReadError {
    Missing,
    Other(String),
}

fn read_key(path: &Path) -> Result<[u8; 32], ReadError> {
    let mut data = Vec::new();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut data)) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => {
            return Err(ReadError::Other(format!(
                "tracking secret {}: {e}",
                path.display()
            )));
        }
    }
    parse_key(&data).ok_or_else(|| {
        ReadError::Other(format!(
            "tracking secret {}: expected 32 raw bytes or 64 hex digits, found {} bytes",
            path.display(),
            data.len()
        ))
    })
}

fn parse_key(data: &[u8]) -> Option<[u8; 32]> {
    if let Ok(raw) = <[u8; 32]>::try_from(data) {
        return Some(raw);
    }
    let text = data.trim_ascii();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(key)
}

fn create_key(path: &Path) -> Result<[u8; 32], String> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.display();
    let mut key = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| format!("tracking secret {name}: no random source"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "tracking secret {name}: cannot create {}: {e}",
                dir.display()
            )
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        // Another process created it between our read and our create: use theirs.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return read_key(path).map_err(|e| match e {
                ReadError::Missing => format!("tracking secret {name}: vanished while reading"),
                ReadError::Other(e) => e,
            });
        }
        Err(e) => return Err(format!("tracking secret {name}: cannot create: {e}")),
    };
    file.write_all(&key)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("tracking secret {name}: cannot write: {e}"))?;
    tracing::info!(path = %name, "created a new tracking secret");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new([7u8; 32], vec![])
    }

    #[test]
    fn varints_round_trip_and_reject_overlong_forms() {
        for v in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX - 1, u32::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut s = &buf[..];
            assert_eq!(take_varint(&mut s), Some(v));
            assert!(s.is_empty());
        }
        assert_eq!(take_varint(&mut &[0x80, 0x00][..]), None);
        assert_eq!(take_varint(&mut &[0xFF, 0xFF, 0xFF, 0xFF, 0x1F][..]), None);
        assert_eq!(take_varint(&mut &[0x80][..]), None);
    }

    #[test]
    fn parses_hex_keys() {
        let hex = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
        let key = parse_key(hex).unwrap();
        assert_eq!(key[31], 0x1f);
        assert!(parse_key(b"short").is_none());
    }

    #[test]
    fn open_token_is_compact() {
        let t = keys().open_token(Uuid::now_v7(), 3);
        assert_eq!(t.len(), 47);
    }
}
