//! Throughput of `prepare` on the corpus's largest HTML emails, beside the
//! ceiling: lol_html passing the same HTML through with no handlers.
//!
//!   CARGO_TARGET_DIR=... cargo bench --bench prepare [-- SECONDS_PER_CASE]
//!
//! Each HTML file is sent as a multipart/alternative message whose HTML part
//! is 8bit, then quoted-printable (the common case for real mail). MB/s are
//! HTML bytes per second (10^6) in every column, so the ratios are fair; the
//! cases take turns so that load from elsewhere hits them alike. Two more
//! columns show the floors prepare stands on: lol_html with an empty handler
//! on `a, area` ("lol+a") and mail-parser reading the message ("mparser").
//!
//! Last run (2 shared cores, release, 3 s per case, 5 largest corpus files,
//! 399 KB of HTML): ceiling 959 MB/s; prepare 107 MB/s for 8bit (11%) and
//! 86 MB/s for quoted-printable (9%); lol+a 435 MB/s (45%), mparser
//! 536 MB/s (56%). Those two floors alone add up to 240 MB/s (25% of the
//! ceiling), so the 60% target cannot be met by a design that
//! parses MIME with mail-parser and finds links with lol_html handlers; the
//! rest goes to per-link work (URL check, HMAC, splicing: about 2 us a link)
//! and to re-encoding the rewritten part.

use lol_html::{HtmlRewriter, Settings};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use trackrelay::prepare::{prepare, TokenKeys, TrackingOptions};

const LARGEST: usize = 5;

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    let inputs = inputs();
    let keys = TokenKeys::new([7; 32], vec![]);
    let hosts: Vec<String> = Vec::new();
    let opts = TrackingOptions {
        email_id: uuid::Uuid::now_v7(),
        rcpt_index: 0,
        scheme: "https",
        tracking_host: Some("links.example.com"),
        other_tracking_hosts: &hosts,
        open_tracking: true,
        click_tracking: true,
        feedback: None,
    };

    println!(
        "{:<44} {:>6} {:>8} {:>8} {:>8} {:>6} {:>6} | {:>8} {:>8}",
        "html (MB/s of HTML)",
        "KB",
        "lol_html",
        "prep8bit",
        "prepQP",
        "8bit%",
        "QP%",
        "lol+a",
        "mparser"
    );
    let mut totals = [0f64; 5]; // seconds spent on all the bytes, per case
    let mut bytes_total = 0usize;
    for (name, html) in &inputs {
        let plain = message(html, "8bit");
        let qp = message(html, "quoted-printable");
        let mut sink = Vec::with_capacity(html.len() * 2);
        let [ceiling, eight, quoted, links_only, parse_only] = interleaved(
            html.len(),
            budget,
            &mut [
                &mut || {
                    sink.clear();
                    let mut r =
                        HtmlRewriter::new(Settings::new(), |c: &[u8]| sink.extend_from_slice(c));
                    r.write(html).unwrap();
                    r.end().unwrap();
                    black_box(&sink);
                },
                &mut || {
                    black_box(prepare(&plain, &opts, &keys));
                },
                &mut || {
                    black_box(prepare(&qp, &opts, &keys));
                },
                // Floors of what prepare builds on: lol_html with an empty
                // handler on links, and mail-parser reading the message.
                &mut || {
                    let handler = lol_html::element!("a, area", |el| {
                        black_box(el.attributes().len());
                        Ok(())
                    });
                    let mut r = HtmlRewriter::new(
                        Settings::new().append_element_content_handler(handler),
                        |_: &[u8]| {},
                    );
                    r.write(html).unwrap();
                    r.end().unwrap();
                },
                &mut || {
                    black_box(
                        mail_parser::MessageParser::new()
                            .with_mime_headers()
                            .parse(&plain),
                    );
                },
            ],
        );
        let probe = prepare(&plain, &opts, &keys);
        assert!(
            probe.pixels_inserted == 1,
            "{name}: {:?}",
            probe.unchanged_parts
        );
        println!(
            "{:<44} {:>6.1} {:>8.1} {:>8.1} {:>8.1} {:>5.0}% {:>5.0}% | {:>8.1} {:>8.1}",
            name,
            html.len() as f64 / 1024.0,
            ceiling,
            eight,
            quoted,
            100.0 * eight / ceiling,
            100.0 * quoted / ceiling,
            links_only,
            parse_only
        );
        for (t, r) in totals
            .iter_mut()
            .zip([ceiling, eight, quoted, links_only, parse_only])
        {
            *t += html.len() as f64 / (r * 1e6);
        }
        bytes_total += html.len();
    }
    let mbps = |t: f64| bytes_total as f64 / t / 1e6;
    let [c, e, q, l, p] = totals.map(mbps);
    println!(
        "{:<44} {:>6.1} {:>8.1} {:>8.1} {:>8.1} {:>5.0}% {:>5.0}% | {:>8.1} {:>8.1}",
        "ALL (bytes / total time)",
        bytes_total as f64 / 1024.0,
        c,
        e,
        q,
        100.0 * e / c,
        100.0 * q / c,
        l,
        p
    );
}

/// Runs the cases in turn, round after round, for about `budget`, and
/// returns MB/s of `len` bytes for each. Taking turns means a busy machine
/// (2 shared cores) slows every case alike, so the ratios hold.
fn interleaved<const N: usize>(
    len: usize,
    budget: Duration,
    cases: &mut [&mut dyn FnMut(); N],
) -> [f64; N] {
    for case in cases.iter_mut() {
        case(); // warm up caches and the allocator
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
    spent.map(|t| len as f64 * f64::from(rounds) / t.as_secs_f64() / 1e6)
}

fn inputs() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/html");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    let picked: Vec<_> = files
        .into_iter()
        .take(LARGEST)
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, crlf(&std::fs::read(&p).unwrap()))
        })
        .collect();
    if picked.is_empty() {
        println!("../shared/corpus not found: benchmarking a synthetic newsletter instead");
        return vec![("synthetic".into(), synthetic())];
    }
    picked
}

fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 20);
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn message(html: &[u8], cte: &str) -> Vec<u8> {
    let body = if cte == "8bit" {
        html.to_vec()
    } else {
        quoted_printable::encode(html)
    };
    let head = format!(
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n--b\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    );
    [head.into_bytes(), body, b"\r\n--b--\r\n".to_vec()].concat()
}

fn synthetic() -> Vec<u8> {
    let mut html =
        String::from("<!DOCTYPE html><html><head><style>td{padding:0}</style></head><body>\r\n");
    for i in 0..400 {
        html.push_str(&format!(
            "<table role=\"presentation\"><tr><td style=\"font-family:Arial;color:#333\">Item {i} \
             <a href=\"https://shop.example.com/p/{i}?utm_source=news&amp;utm_medium=email\">view</a>\
             </td></tr></table>\r\n"
        ));
    }
    html.push_str("</body></html>\r\n");
    html.into_bytes()
}
