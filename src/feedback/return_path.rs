//! The return-path token: `{local}+{token}@{return_path}.{domain}`.
//!
//! A bounce or complaint reaches us by this address, possibly months later
//! and from anyone on the internet, so the token must name the email and the
//! recipient without a lookup and must not be forgeable (a forged bounce
//! would suppress a good address). MTAs may change the case of a local
//! part, hence base32, compared case-insensitively.
//!
//! ```text
//! token   = lowercase base32-no-padding( payload || tag )        -- 52 chars
//! payload = 0x21 || key_id:u8 || email_id:[u8;16] || rcpt_index:u32 BE
//! tag     = HMAC-SHA256(key, CONTEXT || payload)[..10]            -- 80 bits
//! ```
//!
//! The keys are the tracking keys (src/prepare/token.rs), so a rotated-out
//! key keeps verifying old bounces. CONTEXT keeps these tags apart from the
//! tracking tokens'. 80 bits is ample against online guessing (each guess is
//! a mail), and keeps `bounces+{token}` at 60 of the 64 characters a local
//! part may hold. The decoder rejects non-zero trailing bits, so every
//! character change changes the bytes that the tag covers.

use crate::prepare::TokenKeys;
use data_encoding::BASE32_NOPAD;
use uuid::Uuid;

const VERSION: u8 = 0x21;
const CONTEXT: &[u8] = b"trackrelay return path\0";
const PAYLOAD_LEN: usize = 1 + 1 + 16 + 4;
const TAG_LEN: usize = 10;
/// Length of every token: 32 bytes of base32.
pub const TOKEN_LEN: usize = 52;
/// RFC 5321 4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;

/// What a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnPath {
    pub email_id: Uuid,
    pub rcpt_index: u32,
}

fn payload(key_id: u8, email_id: Uuid, rcpt_index: u32) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[0] = VERSION;
    p[1] = key_id;
    p[2..18].copy_from_slice(email_id.as_bytes());
    p[18..22].copy_from_slice(&rcpt_index.to_be_bytes());
    p
}

fn hmac_input(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CONTEXT.len() + payload.len());
    v.extend_from_slice(CONTEXT);
    v.extend_from_slice(payload);
    v
}

/// The token alone (lowercase, [`TOKEN_LEN`] characters).
pub fn encode(keys: &TokenKeys, email_id: Uuid, rcpt_index: u32) -> String {
    let p = payload(keys.current_key_id(), email_id, rcpt_index);
    let tag = keys.current_tag(&hmac_input(&p));
    let mut bytes = p.to_vec();
    bytes.extend_from_slice(&tag[..TAG_LEN]);
    BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
}

/// The whole envelope sender, or `None` when `local` would push the local
/// part past 64 characters (or is not a plain dot-atom we can extend).
pub fn address(
    keys: &TokenKeys,
    local: &str,
    domain: &str,
    email_id: Uuid,
    rcpt_index: u32,
) -> Option<String> {
    let plain = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain || local.len() + 1 + TOKEN_LEN > MAX_LOCAL_PART {
        return None;
    }
    Some(format!(
        "{local}+{}@{domain}",
        encode(keys, email_id, rcpt_index)
    ))
}

/// Checks a token from the outside world, in any case. Never panics.
pub fn verify(keys: &TokenKeys, token: &str) -> Option<ReturnPath> {
    if token.len() != TOKEN_LEN || !token.is_ascii() {
        return None;
    }
    let bytes = BASE32_NOPAD
        .decode(token.to_ascii_uppercase().as_bytes())
        .ok()?;
    if bytes.len() != PAYLOAD_LEN + TAG_LEN || bytes[0] != VERSION {
        return None;
    }
    let (p, tag) = bytes.split_at(PAYLOAD_LEN);
    if !keys.tag_matches(p[1], &hmac_input(p), tag) {
        return None;
    }
    Some(ReturnPath {
        email_id: Uuid::from_slice(&p[2..18]).ok()?,
        rcpt_index: u32::from_be_bytes(p[18..22].try_into().ok()?),
    })
}

/// Verifies the token of an address such as `bounces+TOKEN@bounces.example.com`
/// (angle brackets and surrounding space allowed).
pub fn verify_address(keys: &TokenKeys, address: &str) -> Option<ReturnPath> {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, _domain) = a.rsplit_once('@')?;
    let (_, token) = local.rsplit_once('+')?;
    verify(keys, token)
}

/// Every distinct token that verifies in `text` (returned headers, a
/// `Final-Recipient`, a plain-text bounce), in order of appearance. Scans
/// for `+` followed by exactly [`TOKEN_LEN`] base32 characters and `@`, so
/// it works whatever the surrounding syntax (brackets, quotes, folding).
pub fn find_tokens(keys: &TokenKeys, text: &[u8]) -> Vec<ReturnPath> {
    let mut found: Vec<ReturnPath> = Vec::new();
    let is_b32 = |b: u8| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b);
    let mut i = 0;
    while let Some(off) = text
        .get(i..)
        .and_then(|t| t.iter().position(|&b| b == b'+'))
    {
        let start = i + off + 1;
        i = start;
        let end = start + TOKEN_LEN;
        let Some(candidate) = text.get(start..end) else {
            break;
        };
        if text.get(end) != Some(&b'@') || !candidate.iter().all(|&b| is_b32(b)) {
            continue;
        }
        // All ASCII, checked above.
        let token = std::str::from_utf8(candidate).unwrap_or_default();
        if let Some(rp) = verify(keys, token) {
            if !found.contains(&rp) {
                found.push(rp);
            }
            i = end;
        }
    }
    found
}

/// The header trackrelay adds to every message it sends, holding the
/// return-path token alone: the link back for complaints whose provider
/// redacted the recipient and the return path.
pub const REF_HEADER: &str = "X-Trackrelay-Ref";

/// Every distinct token that verifies in an `X-Trackrelay-Ref:` header line
/// of `text` (name in any case, at the start of a line), in order.
pub fn find_ref_tokens(keys: &TokenKeys, text: &[u8]) -> Vec<ReturnPath> {
    let name = REF_HEADER.as_bytes();
    let mut found: Vec<ReturnPath> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(head) = line.get(..name.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(name) {
            continue;
        }
        let rest = &line[name.len()..];
        let rest = rest.trim_ascii_start();
        let Some(value) = rest.strip_prefix(b":") else {
            continue;
        };
        let token = value
            .trim_ascii()
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        let Ok(token) = std::str::from_utf8(token) else {
            continue;
        };
        if let Some(rp) = verify(keys, token) {
            if !found.contains(&rp) {
                found.push(rp);
            }
        }
    }
    found
}

/// Whether `address` has a local part `{anything}+{TOKEN_LEN base32}`:
/// what our return path looks like, verified or not.
pub fn looks_like_token_address(address: &str) -> bool {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    let Some((local, _)) = a.rsplit_once('@') else {
        return false;
    };
    let Some((_, token)) = local.rsplit_once('+') else {
        return false;
    };
    token.len() == TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new([7u8; 32], vec![])
    }

    fn id() -> Uuid {
        Uuid::from_u128(0x0190_1234_5678_7abc_8def_0123_4567_89ab)
    }

    #[test]
    fn round_trip_for_edge_indexes() {
        let k = keys();
        for idx in [0, 1, 255, 65_536, u32::MAX] {
            let t = encode(&k, id(), idx);
            assert_eq!(t.len(), TOKEN_LEN);
            assert_eq!(t, t.to_ascii_lowercase());
            let rp = verify(&k, &t).unwrap();
            assert_eq!((rp.email_id, rp.rcpt_index), (id(), idx));
        }
    }

    #[test]
    fn upper_and_mixed_case_verify() {
        let k = keys();
        let t = encode(&k, id(), 3);
        assert_eq!(verify(&k, &t.to_ascii_uppercase()).unwrap().rcpt_index, 3);
        let mixed: String = t
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        assert_eq!(verify(&k, &mixed).unwrap().rcpt_index, 3);
    }

    #[test]
    fn local_part_stays_within_64() {
        let k = keys();
        let a = address(&k, "bounces", "bounces.example.com", id(), u32::MAX).unwrap();
        let local = a.split('@').next().unwrap();
        assert!(local.len() <= 64, "{local}");
        assert_eq!(verify_address(&k, &a).unwrap().rcpt_index, u32::MAX);
        // 11 characters is the longest local that fits; 12 does not.
        assert!(address(&k, "abcdefghijk", "d", id(), 0).is_some());
        assert!(address(&k, "abcdefghijkl", "d", id(), 0).is_none());
        assert!(address(&k, "a b", "d", id(), 0).is_none());
        assert!(address(&k, "", "d", id(), 0).is_none());
    }

    #[test]
    fn forged_altered_and_truncated_tokens_are_rejected() {
        let k = keys();
        let t = encode(&k, id(), 1);
        // Every single-character change is caught.
        for i in 0..t.len() {
            for c in ['a', 'q', '7', '2'] {
                let mut s = t.clone().into_bytes();
                if s[i] == c as u8 {
                    continue;
                }
                s[i] = c as u8;
                let s = String::from_utf8(s).unwrap();
                assert_eq!(verify(&k, &s), None, "changed char {i} to {c}");
            }
        }
        assert_eq!(verify(&k, &t[..TOKEN_LEN - 1]), None);
        assert_eq!(verify(&k, &format!("{t}a")), None);
        assert_eq!(verify(&k, ""), None);
        assert_eq!(verify(&k, &"é".repeat(26)), None);
        // Same layout, another key: the forger does not have ours.
        let other = TokenKeys::new([9u8; 32], vec![]);
        assert_eq!(verify(&k, &encode(&other, id(), 1)), None);
        // A tracking token made with our own key is not a return-path token.
        assert_eq!(verify(&k, &k.open_token(id(), 1)), None);
    }

    #[test]
    fn old_key_still_verifies_after_rotation() {
        let old = keys();
        let t = encode(&old, id(), 5);
        let rotated = TokenKeys::new([8u8; 32], vec![[7u8; 32]]);
        assert_eq!(verify(&rotated, &t).unwrap().rcpt_index, 5);
        // New tokens use the new key, which the old set does not know.
        assert_eq!(verify(&old, &encode(&rotated, id(), 5)), None);
    }

    #[test]
    fn finds_tokens_in_text() {
        let k = keys();
        let a = address(&k, "bounces", "bounces.example.com", id(), 2).unwrap();
        let forged = address(
            &TokenKeys::new([1u8; 32], vec![]),
            "bounces",
            "bounces.example.com",
            id(),
            9,
        )
        .unwrap();
        let text = format!(
            "Return-Path: <{}>\r\nX-Other: {forged}\r\nTo: x+y@z\r\nFinal: rfc822; {a}\r\n+",
            a.to_ascii_uppercase()
        );
        let found = find_tokens(&k, text.as_bytes());
        assert_eq!(
            found,
            vec![ReturnPath {
                email_id: id(),
                rcpt_index: 2
            }]
        );
        assert!(find_tokens(&k, b"").is_empty());
        assert!(find_tokens(&k, b"++++@").is_empty());
    }

    #[test]
    fn ref_header_tokens_in_any_case_and_only_verified_ones() {
        let k = keys();
        let t = encode(&k, id(), 4);
        let forged = encode(&TokenKeys::new([1u8; 32], vec![]), id(), 5);
        let text = format!(
            "Subject: x\r\nx-trackrelay-ref : {forged}\r\nX-TRACKRELAY-REF:\t{}\r\n\
             X-Trackrelay-Ref: {t}\r\nX-Other: X-Trackrelay-Ref: {t}\r\n",
            t.to_ascii_uppercase()
        );
        let found = find_ref_tokens(&k, text.as_bytes());
        assert_eq!(
            found,
            vec![ReturnPath {
                email_id: id(),
                rcpt_index: 4
            }]
        );
        assert!(find_ref_tokens(&k, b"X-Trackrelay-Ref").is_empty());
        assert!(find_ref_tokens(&k, b"X-Trackrelay-Ref: \xff\xfe").is_empty());
        assert!(looks_like_token_address(&format!(
            "<bounces+{forged}@b.example.com>"
        )));
        assert!(!looks_like_token_address("fbl@bounces.example.com"));
        assert!(!looks_like_token_address("bounces+short@b.example.com"));
    }
}
