//! Tracking tokens: round trips, key rotation, tamper resistance, key files.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::os::unix::fs::PermissionsExt;
use trackrelay::prepare::{Token, TokenKeys};
use uuid::Uuid;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn id() -> Uuid {
    Uuid::from_u128(0x0190_1234_5678_7abc_8def_0123_4567_89ab)
}

#[test]
fn tokens_round_trip() {
    let keys = TokenKeys::new([3; 32], vec![]);
    let open = keys.open_token(id(), 7);
    assert_eq!(
        keys.verify(&open),
        Some(Token::Open {
            email_id: id(),
            rcpt_index: 7
        })
    );
    for (link, url) in [
        (0, "https://example.com/"),
        (300, "https://example.com/ü?a=1&b=2#frag"),
        (u32::MAX, ""),
    ] {
        let t = keys.click_token(id(), u32::MAX, link, url);
        assert!(t.bytes().all(|b| ALPHABET.contains(&b)), "base64url: {t}");
        assert_eq!(
            keys.verify(&t),
            Some(Token::Click {
                email_id: id(),
                rcpt_index: u32::MAX,
                link_index: link,
                url: url.into()
            })
        );
    }
}

#[test]
fn old_keys_keep_verifying_and_unknown_keys_do_not() {
    let old = TokenKeys::new([1; 32], vec![]);
    let token = old.click_token(id(), 0, 0, "https://example.com/");
    let rotated = TokenKeys::new([2; 32], vec![[1; 32]]);
    assert!(rotated.verify(&token).is_some());
    let forgot = TokenKeys::new([2; 32], vec![]);
    assert_eq!(forgot.verify(&token), None);
    // New tokens are made with the current key only.
    let new = rotated.open_token(id(), 0);
    assert_eq!(old.verify(&new), None);
}

#[test]
fn keys_with_the_same_id_byte_are_all_tried() {
    // Find two keys whose id bytes collide, then make sure either verifies.
    let key_id = |k: [u8; 32]| {
        let t = TokenKeys::new(k, vec![]).open_token(id(), 0);
        URL_SAFE_NO_PAD.decode(t).unwrap()[1]
    };
    let first = [0u8; 32];
    let want = key_id(first);
    let twin = (1u8..=255)
        .flat_map(|a| (0u8..=255).map(move |b| [a, b]))
        .map(|ab| {
            let mut k = [0u8; 32];
            k[..2].copy_from_slice(&ab);
            k
        })
        .find(|k| key_id(*k) == want)
        .expect("a colliding key id in 65k tries");
    let token = TokenKeys::new(twin, vec![]).open_token(id(), 1);
    let keys = TokenKeys::new([9; 32], vec![first, twin]);
    assert!(keys.verify(&token).is_some());
}

#[test]
fn any_single_changed_character_or_bit_fails() {
    let keys = TokenKeys::new([5; 32], vec![[6; 32]]);
    for token in [
        keys.open_token(id(), 1),
        keys.click_token(id(), 2, 3, "https://example.com/path?q=1"),
    ] {
        for i in 0..token.len() {
            for &c in ALPHABET {
                if c == token.as_bytes()[i] {
                    continue;
                }
                let mut t = token.clone().into_bytes();
                t[i] = c;
                let t = String::from_utf8(t).unwrap();
                assert_eq!(keys.verify(&t), None, "char {i} -> {}", c as char);
            }
        }
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(keys.verify(&URL_SAFE_NO_PAD.encode(&b)), None, "bit {bit}");
        }
        // Truncated, extended, padded.
        assert_eq!(keys.verify(&token[..token.len() - 1]), None);
        assert_eq!(keys.verify(&format!("{token}A")), None);
        assert_eq!(keys.verify(&format!("{token}=")), None);
    }
}

#[test]
fn verify_never_panics_on_garbage() {
    let keys = TokenKeys::new([5; 32], vec![]);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = (next() % 120) as usize;
        let s: String = (0..len)
            .map(|_| ALPHABET[(next() % 64) as usize] as char)
            .collect();
        assert_eq!(keys.verify(&s), None);
    }
    for s in ["", "é", "\u{0}", "====", &"A".repeat(200_000)] {
        assert_eq!(keys.verify(s), None);
    }
}

#[test]
fn secret_files_are_created_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/tracking.key");
    let keys = TokenKeys::load_or_create(&path, &[]).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = keys.open_token(id(), 0);
    let again = TokenKeys::load_or_create(&path, &[]).unwrap();
    assert!(again.verify(&token).is_some(), "the same key is read back");

    // Rotation: the old file verifies old tokens.
    let old = dir.path().join("old.key");
    std::fs::rename(&path, &old).unwrap();
    let rotated = TokenKeys::load_or_create(&path, std::slice::from_ref(&old)).unwrap();
    assert!(rotated.verify(&token).is_some());
    assert!(rotated.verify(&rotated.open_token(id(), 0)).is_some());
}

#[test]
fn key_file_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("short.key");
    std::fs::write(&bad, b"too short").unwrap();
    let err = TokenKeys::load_or_create(&bad, &[]).unwrap_err();
    assert!(err.contains(&bad.display().to_string()), "{err}");

    let good = dir.path().join("good.key");
    let missing = dir.path().join("missing-old.key");
    let err = TokenKeys::load_or_create(&good, std::slice::from_ref(&missing)).unwrap_err();
    assert!(err.contains("missing-old.key"), "{err}");

    let hex = dir.path().join("hex.key");
    std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
    let from_hex = TokenKeys::load_or_create(&hex, &[]).unwrap();
    let raw = TokenKeys::new([0xab; 32], vec![]);
    assert!(from_hex.verify(&raw.open_token(id(), 0)).is_some());
}
