//! prepare over the shared corpus (../shared/corpus), checked with an
//! independent MIME reader: Python's `email` package and html.parser, in
//! tests/helpers/mime_parts.py.
//!
//! For every .eml, and every .html wrapped in a multipart/alternative
//! message (quoted-printable, base64 and 8bit in turn):
//! - prepare succeeds (no internal error);
//! - every non-HTML part decodes to the same bytes as before;
//! - in each rewritten HTML part, putting back each href as written and
//!   removing the pixel gives the original decoded part byte for byte;
//! - the links tracked are exactly those Python calls trackable, in order,
//!   with the same (entity-decoded) URL.

mod prepare_util;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use prepare_util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use trackrelay::prepare::Token;

struct Item {
    name: String,
    raw: Vec<u8>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

fn sorted_files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
    });
    files.sort();
    files
}

/// The corpus as messages: .eml as they are, .html wrapped.
fn corpus() -> Option<Vec<Item>> {
    let dir = corpus_dir();
    if !dir.is_dir() {
        return None;
    }
    let mut items = Vec::new();
    for p in sorted_files(&dir.join("eml"), &["eml"]) {
        items.push(Item {
            name: p.file_name().unwrap().to_string_lossy().into_owned(),
            raw: std::fs::read(&p).unwrap(),
        });
    }
    for (i, p) in sorted_files(&dir.join("html"), &["html", "htm"])
        .iter()
        .enumerate()
    {
        let html = std::fs::read(p).unwrap();
        items.push(Item {
            name: p.file_name().unwrap().to_string_lossy().into_owned(),
            raw: wrap_html(&html, i),
        });
    }
    Some(items)
}

/// A multipart/alternative message around `html`, with its line ends made
/// CRLF as an SMTP client would send them; the transfer encoding rotates.
pub fn wrap_html(html: &[u8], i: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(html.len() + html.len() / 20);
    for (j, &b) in html.iter().enumerate() {
        if b == b'\n' && (j == 0 || html[j - 1] != b'\r') {
            body.push(b'\r');
        }
        body.push(b);
    }
    let charset = if std::str::from_utf8(&body).is_ok() {
        "utf-8"
    } else {
        "windows-1252"
    };
    let (cte, encoded) = match i % 3 {
        0 => ("quoted-printable", quoted_printable::encode(&body)),
        1 => {
            let b64 = STANDARD.encode(&body);
            let lines: Vec<&[u8]> = b64.as_bytes().chunks(76).collect();
            ("base64", lines.join(&b"\r\n"[..]))
        }
        _ => ("8bit", body),
    };
    let head = format!(
        "From: Sender <sender@example.com>\r\nTo: rcpt@example.net\r\nSubject: corpus {i}\r\n\
         X-Tags: corpus\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"=_corpus_boundary\"\r\n\r\n\
         --=_corpus_boundary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Plain text version.\r\n--=_corpus_boundary\r\n\
         Content-Type: text/html; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    );
    [
        head.into_bytes(),
        encoded,
        b"\r\n--=_corpus_boundary--\r\n".to_vec(),
    ]
    .concat()
}

struct Part {
    path: String,
    ctype: String,
    charset: Option<String>,
    attachment: bool,
    in_attached_message: bool,
    payload: Vec<u8>,
    links: Vec<Value>,
}

/// Runs the Python reader over many files at once (one interpreter start).
fn python_parts(files: &[PathBuf]) -> Vec<Vec<Part>> {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/mime_parts.py");
    let out = Command::new("python3")
        .arg(helper)
        .args(files)
        .output()
        .expect("python3 is needed for the corpus tests (independent MIME reader)");
    assert!(
        out.status.success(),
        "mime_parts.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .map(|line| {
            let doc: Value = serde_json::from_str(line).unwrap();
            doc["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| Part {
                    path: p["path"].as_str().unwrap().to_owned(),
                    ctype: p["ctype"].as_str().unwrap().to_owned(),
                    charset: p["charset"].as_str().map(str::to_owned),
                    attachment: p["attachment"].as_bool().unwrap(),
                    in_attached_message: p["in_attached_message"].as_bool().unwrap(),
                    payload: STANDARD.decode(p["payload"].as_str().unwrap()).unwrap(),
                    links: p["links"].as_array().cloned().unwrap_or_default(),
                })
                .collect()
        })
        .collect()
}

/// HTML in charsets that are not ASCII-based is compared as text.
fn comparable(part: &Part) -> Vec<u8> {
    let enc = part
        .charset
        .as_deref()
        .and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes()));
    match enc {
        Some(e) if !e.is_ascii_compatible() => e.decode(&part.payload).0.into_owned().into_bytes(),
        _ => part.payload.clone(),
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Checks one rewritten HTML part; returns how many links it tracked.
fn check_html(before: &Part, after: &Part, first_link: u32) -> Result<u32, String> {
    let expected: Vec<&Value> = before
        .links
        .iter()
        .filter(|l| l["trackable"].as_bool() == Some(true))
        .collect();
    let keys = keys();
    let text = comparable(after);
    let mut restored = Vec::with_capacity(text.len());
    let mut pos = 0;
    let mut k = 0usize;
    let mut pixels = 0;
    let pixel_start = format!("<img src=\"{OPEN}");
    loop {
        let click = find(&text, CLICK.as_bytes(), pos);
        let pixel = find(&text, pixel_start.as_bytes(), pos);
        match (click, pixel) {
            (Some(c), p) if p.is_none_or(|p| c < p) => {
                restored.extend_from_slice(&text[pos..c]);
                let t0 = c + CLICK.len();
                let t1 = text[t0..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
                    .map_or(text.len(), |i| t0 + i);
                let token = std::str::from_utf8(&text[t0..t1]).unwrap();
                let Some(Token::Click {
                    link_index, url, ..
                }) = keys.verify(token)
                else {
                    return Err(format!("bad click token {token}"));
                };
                let want = expected.get(k).ok_or_else(|| {
                    format!("tracked link #{k} ({url}) that Python does not call trackable")
                })?;
                if link_index != first_link + k as u32 {
                    return Err(format!(
                        "link index {link_index}, expected {}",
                        first_link + k as u32
                    ));
                }
                if want["cleaned"].as_str() != Some(url.as_str()) {
                    return Err(format!(
                        "token URL {url:?} != Python's {:?}",
                        want["cleaned"]
                    ));
                }
                restored.extend_from_slice(want["raw"].as_str().unwrap().as_bytes());
                k += 1;
                pos = t1;
            }
            (_, Some(p)) => {
                restored.extend_from_slice(&text[pos..p]);
                let end = text[p..].iter().position(|&b| b == b'>').unwrap() + p + 1;
                let tag = String::from_utf8_lossy(&text[p..end]);
                if tag.contains("display") {
                    return Err(format!("hidden pixel {tag}"));
                }
                pixels += 1;
                pos = end;
            }
            _ => {
                restored.extend_from_slice(&text[pos..]);
                break;
            }
        }
    }
    if k != expected.len() {
        let missed: Vec<_> = expected[k..].iter().map(|l| l["raw"].clone()).collect();
        return Err(format!(
            "{k} links tracked, Python expected {}; missed {missed:?}",
            expected.len()
        ));
    }
    if pixels != 1 {
        return Err(format!("{pixels} pixels"));
    }
    let original = comparable(before);
    if restored != original {
        let at = restored
            .iter()
            .zip(&original)
            .position(|(a, b)| a != b)
            .unwrap_or(restored.len().min(original.len()));
        let show = |v: &[u8]| {
            String::from_utf8_lossy(&v[at.saturating_sub(60)..(at + 60).min(v.len())]).into_owned()
        };
        return Err(format!(
            "restored part differs at byte {at}:\n  got  {:?}\n  want {:?}",
            show(&restored),
            show(&original)
        ));
    }
    Ok(k as u32)
}

/// mail-parser 0.11.9 has `debug_assert!(false, ...)` on paths malformed
/// mail reaches (spamassassin__nice_mime9.eml reaches one). In release
/// builds, which is what runs, they are compiled out and the message is
/// prepared normally (`cargo test --release` checks it); in debug builds
/// prepare's panic guard sends the message unchanged, which is the safe
/// outcome, so that alone is accepted here.
fn mail_parser_debug_assertion(reason: &str) -> bool {
    cfg!(debug_assertions)
        && [
            "Invalid part ID, could not find",
            "Failed to restore parent message",
            "This should not have happened",
        ]
        .iter()
        .any(|m| reason.contains(m))
}

#[test]
fn corpus_messages_change_only_in_links_pixel_and_control_headers() {
    let Some(items) = corpus() else {
        println!(
            "skipping: ../shared/corpus not found at {}",
            corpus_dir().display()
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut prepared = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let out = run(&item.raw);
        let before = tmp.path().join(format!("{i}.before.eml"));
        let after = tmp.path().join(format!("{i}.after.eml"));
        std::fs::write(&before, &item.raw).unwrap();
        std::fs::write(&after, &out.message).unwrap();
        files.push(before);
        files.push(after);
        prepared.push(out);
    }
    let parsed = python_parts(&files);
    assert_eq!(parsed.len(), files.len());

    let mut failures = Vec::new();
    let (mut total_links, mut total_pixels, mut skipped_html) = (0, 0, 0);
    for (i, item) in items.iter().enumerate() {
        let out = &prepared[i];
        let (before, after) = (&parsed[2 * i], &parsed[2 * i + 1]);
        let mut fail = |msg: String| failures.push(format!("{}: {msg}", item.name));
        if let Some(e) = out
            .unchanged_parts
            .iter()
            .find(|r| r.contains("internal error"))
        {
            if !mail_parser_debug_assertion(e) {
                fail(e.clone());
            }
            continue;
        }
        if before.len() != after.len() {
            fail(format!(
                "{} parts before, {} after",
                before.len(),
                after.len()
            ));
            continue;
        }
        let mut next_link = 0;
        let mut pixels = 0;
        for (b, a) in before.iter().zip(after) {
            if b.ctype != a.ctype || b.path != a.path {
                fail(format!(
                    "part {} {} became {} {}",
                    b.path, b.ctype, a.path, a.ctype
                ));
                continue;
            }
            if b.payload == a.payload {
                let should_track =
                    b.ctype == "text/html" && !b.attachment && !b.in_attached_message;
                if should_track {
                    if out.unchanged_parts.is_empty() {
                        fail(format!(
                            "HTML part {} left unchanged without a reason",
                            b.path
                        ));
                    }
                    skipped_html += 1;
                }
                continue;
            }
            if b.ctype != "text/html" || b.attachment || b.in_attached_message {
                fail(format!("part {} ({}) changed", b.path, b.ctype));
                continue;
            }
            match check_html(b, a, next_link) {
                Ok(n) => {
                    next_link += n;
                    pixels += 1;
                }
                Err(e) => fail(format!("part {}: {e}", b.path)),
            }
        }
        if out.links_tracked != next_link || out.pixels_inserted != pixels {
            fail(format!(
                "reported {} links / {} pixels, found {next_link} / {pixels}",
                out.links_tracked, out.pixels_inserted
            ));
        }
        if out
            .message
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"x-tags: "))
        {
            let head_end = find(&out.message, b"\r\n\r\n", 0).unwrap_or(out.message.len());
            if find(
                &out.message[..head_end].to_ascii_lowercase(),
                b"\nx-tags:",
                0,
            )
            .is_some()
            {
                fail("X-Tags left in the header".into());
            }
        }
        total_links += next_link;
        total_pixels += pixels;
        for r in &out.unchanged_parts {
            println!("{}: unchanged: {r}", item.name);
        }
    }
    println!(
        "{} messages, {total_links} links tracked, {total_pixels} pixels, {skipped_html} HTML parts left with a reason",
        items.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total_links > 100 && total_pixels > 50,
        "the corpus exercised the rewrite"
    );
}
