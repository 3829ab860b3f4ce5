//! A deterministic stand-in for the fuzzer that runs with `cargo test`:
//! prepare over many mutated messages (the committed fuzz seeds, plus the
//! shared corpus when it is there). Nothing may panic, and the output must
//! stay consistent with what prepare reports.

mod prepare_util;

use prepare_util::*;
use std::path::Path;
use trackrelay::prepare::{control_headers, prepare, TrackingOptions};

/// Cases per input; the total stays a few seconds in a debug build.
const MUTATIONS: usize = 48;

const INSERTS: &[&[u8]] = &[
    b"<!--[if mso]>",
    b"<![endif]-->",
    b"<a href=\"https://x.example/?a=1&amp;b=2\">",
    b"<v:roundrect href='http://v.example/'>",
    b"</body>",
    b"<BODY>",
    b"\r\n--",
    b"\r\n\r\n",
    b"\n",
    b"=\r\n",
    b"=3D",
    b"&#x26;",
    b"&",
    b"\"",
    b"'",
    b"<",
    b">",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Type: text/html; charset=utf-16\r\n",
    b"Content-Type: text/html; charset=iso-2022-jp\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/alternative; boundary=b\r\n",
    b"X-Track-Clicks: true\r\n",
    b"\x1b$B",
    b"\xff\xfe",
    b"\x00",
    b"data-notrack ",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let ins = INSERTS[rng.below(INSERTS.len())];
                data.splice(at..at, ins.iter().copied());
            }
            2 => {
                let end = (at + rng.below(64)).min(data.len());
                data.drain(at..end);
            }
            3 => data.truncate(at),
            4 => {
                let end = (at + rng.below(200)).min(data.len());
                let chunk = data[at..end].to_vec();
                data.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + rng.below(400)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

fn inputs() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "fuzz/seeds/prepare",
        "../shared/corpus/eml",
        "../shared/corpus/html",
    ] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            files.extend(paths.into_iter().filter(|p| p.is_file()));
        }
    }
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        // Big inputs cost a lot in a debug build and add little here.
        .map(|d| d[..d.len().min(48 * 1024)].to_vec())
        .collect()
}

#[test]
fn prepare_survives_mutated_messages() {
    let inputs = inputs();
    assert!(inputs.len() >= 10, "the fuzz seeds are committed");
    let keys = keys();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut runs, mut tracked) = (0usize, 0u32);
    for (i, input) in inputs.iter().enumerate() {
        let other = &inputs[(i + 1) % inputs.len()];
        for m in 0..MUTATIONS {
            let data = mutate(&mut rng, input, other);
            let mode = m % 4;
            let opts = TrackingOptions {
                rcpt_index: m as u32,
                tracking_host: (mode != 3).then_some(HOST),
                ..options(mode != 1, mode != 2)
            };
            let out = prepare(&data, &opts, &keys);
            let _ = control_headers(&data);
            runs += 1;
            tracked += out.links_tracked;
            for r in &out.unchanged_parts {
                let known_debug_assert = cfg!(debug_assertions) && r.contains("Invalid part ID");
                assert!(
                    !r.contains("internal error") || known_debug_assert,
                    "input {i} mutation {m}: {r}"
                );
            }
            let notrack = data
                .windows(12)
                .any(|w| w.eq_ignore_ascii_case(b"data-notrack"));
            if out.links_tracked == 0 && out.pixels_inserted == 0 && !notrack {
                assert!(
                    out.message.len() <= data.len(),
                    "input {i} mutation {m} grew"
                );
            }
            if mode == 3 {
                assert_eq!((out.links_tracked, out.pixels_inserted), (0, 0));
            }
        }
    }
    println!("{runs} mutated messages prepared, {tracked} links tracked");
    assert!(tracked > 0);
}
