//! One test (at least) per rule of the prepare stage, on hand-written
//! messages, so the project is covered without ../shared.

mod prepare_util;

use base64::Engine;
use prepare_util::*;
use trackrelay::prepare::{control_headers, prepare, ControlHeaders, Token, TrackingOptions};

/// A single-part 8bit HTML message; the HTML keeps its own line ends.
fn html_message(html: &str) -> Vec<u8> {
    let head = crlf(
        "From: a@example.com\nTo: b@example.net\nSubject: t\nMIME-Version: 1.0\n\
         Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n",
    );
    [head, html.as_bytes().to_vec()].concat()
}

/// Output body of a single-part 8bit message as text.
fn body_of(out: &[u8]) -> String {
    let text = String::from_utf8(out.to_vec()).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn urls(tokens: &[Token]) -> Vec<String> {
    tokens
        .iter()
        .map(|t| match t {
            Token::Click { url, .. } => url.clone(),
            _ => unreachable!(),
        })
        .collect()
}

// ---- control headers -------------------------------------------------------

#[test]
fn control_headers_are_read_case_insensitively_with_folding() {
    let raw = crlf(
        "From: a@example.com\nx-track-opens:   FALSE\nX-TRACK-CLICKS: true\n\
         X-Tags: welcome,\n  onboarding , welcome\nx-tags: =?UTF-8?Q?caf=C3=A9?=\n\nbody",
    );
    assert_eq!(
        control_headers(&raw),
        ControlHeaders {
            track_opens: Some(false),
            track_clicks: Some(true),
            list_unsubscribe: None,
            tags: vec!["welcome".into(), "onboarding".into(), "café".into()],
        }
    );
    assert_eq!(
        control_headers(b"From: a\r\n\r\n"),
        ControlHeaders::default()
    );
    // An unreadable flag leaves the domain default in force.
    assert_eq!(
        control_headers(b"X-Track-Opens: maybe\r\n\r\n").track_opens,
        None
    );
}

#[test]
fn control_headers_are_removed_with_their_continuation_lines() {
    let raw = crlf(
        "From: a@example.com\nX-Tags: one,\n two\nSubject: s\nX-Track-Opens: true\n\
         x-track-clicks: false\nTo: b@example.net\n\n<p><a href=\"https://example.com/\">x</a>\nX-Tags: body text stays\n",
    );
    for host in [Some(HOST), None] {
        let mut opts = options(true, true);
        opts.tracking_host = host;
        let out = prepare(&raw, &opts, &keys());
        let text = String::from_utf8(out.message).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head,
            "From: a@example.com\r\nSubject: s\r\nTo: b@example.net"
        );
        assert!(body.ends_with("X-Tags: body text stays\r\n"));
    }
}

#[test]
fn header_overrides_beat_domain_defaults_and_are_independent() {
    let html = "<html><body><a href=\"https://example.com/\">x</a></body></html>";
    let raw = html_message(html);
    // Domain default on for both; the message turns opens off.
    let no_opens = [b"X-Track-Opens: false\r\n".as_slice(), &raw].concat();
    let out = run_with(&no_opens, true, true);
    assert_eq!((out.links_tracked, out.pixels_inserted), (1, 0));
    // Domain default off for both; the message turns clicks on.
    let clicks = [b"X-Track-Clicks: yes\r\n".as_slice(), &raw].concat();
    let out = run_with(&clicks, false, false);
    assert_eq!((out.links_tracked, out.pixels_inserted), (1, 0));
    // Opens only.
    let out = run_with(&raw, true, false);
    assert_eq!((out.links_tracked, out.pixels_inserted), (0, 1));
    assert!(body_of(&out.message).contains("href=\"https://example.com/\""));
    // Neither: the message is untouched.
    let out = run_with(&raw, false, false);
    assert_eq!(out.message, raw);
}

#[test]
fn without_a_tracking_host_nothing_but_control_headers_changes() {
    let raw = html_message("<a href=\"https://example.com/\">x</a>");
    let with_header = [b"X-Track-Clicks: true\r\n".as_slice(), &raw].concat();
    let opts = TrackingOptions {
        tracking_host: None,
        ..options(true, true)
    };
    let out = prepare(&with_header, &opts, &keys());
    assert_eq!(out.message, raw);
    assert_eq!((out.links_tracked, out.pixels_inserted), (0, 0));
}

#[test]
fn a_message_without_html_is_unchanged_but_for_control_headers() {
    let raw = crlf(
        "From: a@example.com\nX-Tags: t\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\
         Content-Type: text/plain\n\nsee https://example.com/\n--b\nContent-Type: application/pdf\n\
         Content-Transfer-Encoding: base64\n\nJVBERi0=\n--b--\n",
    );
    let out = run(&raw);
    let expected: Vec<u8> = String::from_utf8(raw.clone())
        .unwrap()
        .replace("X-Tags: t\r\n", "")
        .into_bytes();
    assert_eq!(out.message, expected);
    assert!(out.unchanged_parts.is_empty(), "{:?}", out.unchanged_parts);
}

// ---- links -----------------------------------------------------------------

#[test]
fn only_the_href_values_and_the_pixel_change() {
    let html = "<!DOCTYPE html>\n<html><head><title>T</title></head>\n<BODY>\n\
        <p>Hello <a  class=\"btn\"   href=\"https://example.com/a?x=1\" target=_blank >one</a>\n\
        <A HREF='http://example.org/b'>two</A> <a href=https://example.net/c>three</a>\n\
        <map><area shape=rect coords=\"0,0,1,1\" href=\"https://example.com/area\"></map>\n\
        </BODY>\n</html>\n";
    let raw = html_message(html);
    let out = run(&raw);
    assert_eq!((out.links_tracked, out.pixels_inserted), (4, 1));
    let body = body_of(&out.message);
    let (back, tokens) = untrack(&body);
    assert_eq!(
        back, html,
        "everything outside hrefs and the pixel is byte-identical"
    );
    assert_eq!(
        urls(&tokens),
        [
            "https://example.com/a?x=1",
            "http://example.org/b",
            "https://example.net/c",
            "https://example.com/area"
        ]
    );
    // Quotes are kept as written: single stays single, unquoted stays unquoted.
    assert!(body.contains(&format!("HREF='{CLICK}")));
    assert!(body.contains(&format!("href={CLICK}")));
    // Pixel right before </BODY>.
    let pixel_at = body.find(&format!("<img src=\"{OPEN}")).unwrap();
    let pixel_end = body[pixel_at..].find('>').unwrap() + pixel_at + 1;
    assert!(body[pixel_end..].starts_with("</BODY>"));
    // Headers are untouched.
    assert!(out
        .message
        .starts_with(&raw[..raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap()]));
}

#[test]
fn link_indexes_follow_document_order_and_are_the_same_for_every_recipient() {
    let raw = html_message(
        "<a href=\"https://a.example/\">1</a><a href=\"mailto:x@y\">no</a><a href=\"https://b.example/\">2</a>",
    );
    let mut seen = Vec::new();
    for rcpt in 0..3u32 {
        let opts = TrackingOptions {
            rcpt_index: rcpt,
            ..options(false, true)
        };
        let out = prepare(&raw, &opts, &keys());
        let (_, tokens) = untrack(&body_of(&out.message));
        let ids: Vec<(u32, u32)> = tokens
            .iter()
            .map(|t| match t {
                Token::Click {
                    rcpt_index,
                    link_index,
                    email_id: e,
                    ..
                } => {
                    assert_eq!(*e, email_id());
                    (*rcpt_index, *link_index)
                }
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids, [(rcpt, 0), (rcpt, 1)]);
        seen.push(out.message);
    }
    assert_ne!(seen[0], seen[1], "each recipient has its own tokens");
}

#[test]
fn entities_are_decoded_before_the_url_goes_into_the_token() {
    let hrefs = [
        (
            "https://e.example/?a=1&amp;b=2",
            "https://e.example/?a=1&b=2",
        ),
        (
            "https://e.example/?a=1&#38;b=2",
            "https://e.example/?a=1&b=2",
        ),
        (
            "https://e.example/?a=1&#x26;b=2",
            "https://e.example/?a=1&b=2",
        ),
        ("https://e.example/caf&eacute;", "https://e.example/café"),
        ("https&#58;//e.example/colon", "https://e.example/colon"),
        // In attributes, a legacy entity without ';' before '=' stays text.
        (
            "https://e.example/?x=1&copy=2",
            "https://e.example/?x=1&copy=2",
        ),
        (
            "https://e.example/?q=&quot;hi&quot;",
            "https://e.example/?q=\"hi\"",
        ),
    ];
    let html: String = hrefs
        .iter()
        .map(|(raw, _)| format!("<a href=\"{raw}\">x</a>\n"))
        .collect();
    let out = run_with(&html_message(&html), false, true);
    let (_, tokens) = untrack(&body_of(&out.message));
    let want: Vec<&str> = hrefs.iter().map(|(_, url)| *url).collect();
    assert_eq!(urls(&tokens), want);
}

#[test]
fn links_that_are_not_absolute_http_urls_are_left_alone() {
    let untouched = [
        "mailto:someone@example.com",
        "MAILTO:someone@example.com",
        "tel:+15551234",
        "sms:+15551234",
        "#section",
        "/relative/path",
        "relative.html",
        "javascript:void(0)",
        "{{url}}",
        "{{{ unsubscribe_url }}}",
        "*|UNSUB|*",
        "%%link%%",
        "[[link]]",
        "$url",
        "https://{{host}}/x",
        "https://links.example.com/v1/track/click/abc",
        "https://old-links.example.com/v1/track/click/abc",
        "ftp://example.com/file",
        "data:text/html,hi",
        "",
    ];
    let mut html = String::from("<html><head><base href=\"https://base.example/\"></head><body>\n");
    for href in untouched {
        html.push_str(&format!("<a href=\"{href}\">x</a>\n"));
    }
    html.push_str("<a>no href</a><a href>empty</a></body></html>");
    let out = run_with(&html_message(&html), false, true);
    assert_eq!(out.links_tracked, 0);
    assert_eq!(body_of(&out.message), html);
}

#[test]
fn an_http_link_whose_host_starts_with_a_non_ascii_character_is_tracked_with_the_rest() {
    // "http://" is 7 bytes, so byte 8 falls inside the host's first character;
    // slicing there used to panic and the whole message went out untracked.
    let hrefs = [
        "https://example.com/before",
        "http://\u{fc}ber.example/a",
        "http://\u{1F600}.example/",
        "https:/\u{e9}t\u{e9}",
        "https://example.net/after",
    ];
    let html: String = hrefs
        .iter()
        .map(|h| format!("<a href=\"{h}\">x</a>\n"))
        .collect();
    let out = run_with(&html_message(&html), true, true);
    assert!(out.unchanged_parts.is_empty(), "{:?}", out.unchanged_parts);
    assert_eq!((out.links_tracked, out.pixels_inserted), (4, 1));
    let (back, tokens) = untrack(&body_of(&out.message));
    assert_eq!(
        urls(&tokens),
        [
            "https://example.com/before",
            "http://\u{fc}ber.example/a",
            "http://\u{1F600}.example/",
            "https://example.net/after"
        ]
    );
    // The malformed one stays exactly as written.
    assert!(back.contains("<a href=\"https:/\u{e9}t\u{e9}\">x</a>"));
}

#[test]
fn data_notrack_keeps_the_link_and_only_the_attribute_goes() {
    let cases = [
        (
            "<a href=\"https://example.com/\" data-notrack class=x>y</a>",
            "<a href=\"https://example.com/\" class=x>y</a>",
        ),
        (
            "<a data-notrack=\"1\"  href='https://example.com/'>y</a>",
            "<a  href='https://example.com/'>y</a>",
        ),
        (
            "<a\n  href=https://example.com/\n  DATA-NOTRACK=''>y</a>",
            "<a\n  href=https://example.com/>y</a>",
        ),
        (
            "<a data-notrack href=\"mailto:x@y\">m</a>",
            "<a href=\"mailto:x@y\">m</a>",
        ),
    ];
    for (before, after) in cases {
        let out = run_with(&html_message(before), false, true);
        assert_eq!(body_of(&out.message), after, "{before}");
        assert_eq!(out.links_tracked, 0);
    }
}

#[test]
fn vml_and_links_inside_outlook_conditional_comments_are_rewritten() {
    let html = "<body>\n<!--[if mso]>\n<v:roundrect xmlns:v=\"urn:schemas-microsoft-com:vml\" \
        href=\"https://example.com/button?a=1&amp;b=2\" style=\"height:40px\" arcsize=\"10%\">\n\
        <w:anchorlock/><center>Go</center></v:roundrect>\n<a href=\"https://example.com/mso-link\">m</a>\n\
        <![endif]-->\n<!--[if !mso]><!-- --><a href=\"https://example.com/button?a=1&amp;b=2\">Go</a><!--<![endif]-->\n\
        <!-- an ordinary comment: <a href=\"https://example.com/commented-out\">old</a> -->\n</body>";
    let out = run_with(&html_message(html), false, true);
    let body = body_of(&out.message);
    let (back, tokens) = untrack(&body);
    assert_eq!(
        urls(&tokens),
        [
            "https://example.com/button?a=1&b=2",
            "https://example.com/mso-link",
            "https://example.com/button?a=1&b=2"
        ]
    );
    assert_eq!(back, html.replace("&amp;", "&"));
    assert!(body.contains("href=\"https://example.com/commented-out\""));
    assert!(body.contains(&format!(
        "<v:roundrect xmlns:v=\"urn:schemas-microsoft-com:vml\" href=\"{CLICK}"
    )));
}

// ---- pixel -----------------------------------------------------------------

#[test]
fn the_pixel_goes_before_the_last_body_end_tag_or_at_the_end() {
    let out = run_with(
        &html_message("<body>a</body>\n<body>b</BODY>\n</html>\n"),
        true,
        false,
    );
    let body = body_of(&out.message);
    assert_eq!(count(&body, OPEN), 1);
    let pixel_end = body.find(OPEN).unwrap();
    assert!(!body[pixel_end..].contains(">b"));
    assert!(body.ends_with("\"></BODY>\n</html>\n"));
    assert!(body.starts_with("<body>a</body>\n<body>b<img src="));

    let out = run_with(&html_message("<p>fragment</p>\n"), true, false);
    let body = body_of(&out.message);
    assert!(body.starts_with("<p>fragment</p>\n<img src=\""));
    assert!(body.ends_with("padding:0\">"));

    // A </body> inside a comment is not the end of the body.
    let out = run_with(&html_message("<body>x</body><!-- </body> -->"), true, false);
    assert!(body_of(&out.message).starts_with("<body>x<img src="));
}

#[test]
fn the_pixel_is_a_plain_one_by_one_image() {
    let out = run_with(&html_message("<body></body>"), true, false);
    let body = body_of(&out.message);
    let tag = &body[body.find("<img").unwrap()..body.find("</body>").unwrap()];
    for attr in ["width=\"1\"", "height=\"1\"", "alt=\"\"", "border=\"0\""] {
        assert!(tag.contains(attr), "{tag}");
    }
    assert!(!tag.contains("display"), "{tag}");
}

#[test]
fn every_html_alternative_gets_one_pixel_and_text_parts_none() {
    let raw = crlf(
        "From: a@example.com\nContent-Type: multipart/alternative; boundary=\"alt\"\n\n\
         --alt\nContent-Type: text/plain\n\nhttps://example.com/ </body>\n\
         --alt\nContent-Type: text/html\n\n<body><a href=\"https://example.com/1\">1</a></body>\n\
         --alt\nContent-Type: text/html; charset=us-ascii\n\n<body><a href=\"https://example.com/2\">2</a></body>\n\
         --alt--\n",
    );
    let out = run(&raw);
    assert_eq!((out.links_tracked, out.pixels_inserted), (2, 2));
    let parts = html_parts(&out.message);
    assert_eq!(parts.len(), 2);
    for p in &parts {
        assert_eq!(count(p, OPEN), 1);
    }
    let text = String::from_utf8(out.message).unwrap();
    assert!(text.contains("\r\n\r\nhttps://example.com/ </body>\r\n--alt\r\n"));
    let (_, tokens) = untrack(&parts[1]);
    assert!(
        matches!(tokens[0], Token::Click { link_index: 1, .. }),
        "indexes run across parts"
    );
}

// ---- MIME ------------------------------------------------------------------

#[test]
fn nested_multiparts_at_any_depth_and_bytes_outside_html_parts_unchanged() {
    let raw = crlf(
        "From: a@example.com\nContent-Type: multipart/mixed; boundary=m\n\npreamble\n--m\n\
         Content-Type: multipart/related; boundary=r\n\n--r\n\
         Content-Type: multipart/alternative; boundary=a\n\n--a\nContent-Type: text/plain; charset=utf-8\n\n\
         plain https://example.com/\n--a\nContent-Type: text/html; charset=utf-8\n\
         Content-Transfer-Encoding: quoted-printable\n\n<body><a href=3D\"https://example.com/deep\">d</a></body>\n\
         --a--\n\n--r\nContent-Type: image/png\nContent-ID: <i>\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n\
         --r--\n--m\nContent-Type: application/octet-stream\n\n<a href=\"https://example.com/not-html\">\n--m--\nepilogue\n",
    );
    let out = run(&raw);
    assert_eq!((out.links_tracked, out.pixels_inserted), (1, 1));
    let before = String::from_utf8(raw).unwrap();
    let after = String::from_utf8(out.message).unwrap();
    let cut = |s: &str| {
        let start = s.find("quoted-printable\r\n\r\n").unwrap() + 20;
        let end = s.find("\r\n--a--").unwrap();
        (s[..start].to_owned(), s[end..].to_owned())
    };
    assert_eq!(cut(&before), cut(&after));
    let html = &html_parts(after.as_bytes())[0];
    let (back, _) = untrack(html);
    assert_eq!(
        back,
        "<body><a href=\"https://example.com/deep\">d</a></body>"
    );
}

#[test]
fn quoted_printable_soft_breaks_inside_an_href_are_decoded_and_lines_re_encoded() {
    let raw = crlf(
        "From: a@example.com\nContent-Type: text/html; charset=utf-8\n\
         Content-Transfer-Encoding: quoted-printable\n\n\
         <html><body><p>Caf=C3=A9 <a href=3D\"https://www.exa=\nmple.com/path?a=3D1&amp;b=\n=3D2\">link</a></p>=\n\
         </body></html>\n",
    );
    let out = run(&raw);
    assert_eq!(out.links_tracked, 1);
    let text = String::from_utf8(out.message.clone()).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    for line in body.split("\r\n") {
        assert!(line.len() <= 76, "QP line too long: {line}");
    }
    assert!(!body.replace("\r\n", "").contains('\n'), "CRLF only");
    let html = &html_parts(&out.message)[0];
    let (back, tokens) = untrack(html);
    assert_eq!(urls(&tokens), ["https://www.example.com/path?a=1&b=2"]);
    assert_eq!(
        back,
        "<html><body><p>Café <a href=\"https://www.example.com/path?a=1&b=2\">link</a></p></body></html>\r\n"
    );
}

#[test]
fn a_message_with_bare_lf_line_ends_keeps_them() {
    let raw = b"From: a@example.com\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n\
        <body>\n<a href=3D\"https://example.com/x\">x</a>\n</body>\n"
        .to_vec();
    let out = run(&raw);
    assert_eq!(out.links_tracked, 1);
    assert!(!out.message.contains(&b'\r'));
    let (back, _) = untrack(&html_parts(&out.message)[0]);
    assert_eq!(
        back,
        "<body>\n<a href=\"https://example.com/x\">x</a>\n</body>\n"
    );
}

#[test]
fn base64_html_at_the_top_level_is_re_encoded_at_76_columns() {
    let html = format!(
        "<html><body>{}<a href=\"https://example.com/b64\">b</a></body></html>",
        "<p>padding text to make several lines of base64</p>".repeat(5)
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&html);
    let wrapped: Vec<&str> = b64
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let raw = crlf(&format!(
        "From: a@example.com\nSubject: b64\nContent-Type: text/html; charset=\"utf-8\"\n\
         Content-Transfer-Encoding: base64\n\n{}\n",
        wrapped.join("\n")
    ));
    let out = run(&raw);
    assert_eq!((out.links_tracked, out.pixels_inserted), (1, 1));
    let text = String::from_utf8(out.message.clone()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(raw.starts_with(head.as_bytes()));
    let lines: Vec<&str> = body.trim_end().split("\r\n").collect();
    assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 76));
    assert!(body.ends_with("\r\n") && !body.ends_with("\r\n\r\n"));
    let (back, _) = untrack(&html_parts(&out.message)[0]);
    assert_eq!(back, html);
}

#[test]
fn utf16_parts_stay_utf16() {
    let html = "<html><body><p>Grüße 😀</p><a href=\"https://example.com/ü\">x</a></body></html>";
    let mut bytes = vec![0xFF, 0xFE];
    for u in html.encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let raw = crlf(&format!(
        "From: a@example.com\nContent-Type: multipart/alternative; boundary=x\n\n--x\n\
         Content-Type: text/html; charset=utf-16\nContent-Transfer-Encoding: base64\n\n{b64}\n--x--\n"
    ));
    let out = run(&raw);
    assert_eq!(
        (out.links_tracked, out.pixels_inserted),
        (1, 1),
        "{:?}",
        out.unchanged_parts
    );
    let text = String::from_utf8(out.message).unwrap();
    let b64 = text
        .split("\r\n\r\n")
        .nth(2)
        .unwrap()
        .split("\r\n--x--")
        .next()
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.replace("\r\n", ""))
        .unwrap();
    assert_eq!(&decoded[..2], &[0xFF, 0xFE], "BOM kept");
    let units: Vec<u16> = decoded[2..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16(&units).unwrap();
    let (back, tokens) = untrack(&text);
    assert_eq!(back, html);
    assert_eq!(urls(&tokens), ["https://example.com/ü"]);
}

#[test]
fn iso_2022_jp_parts_stay_iso_2022_jp() {
    let html = "<html><body><p>日本語のメール</p><a href=\"https://example.jp/\">リンク</a></body></html>\r\n";
    let (jis, _, err) = encoding_rs::ISO_2022_JP.encode(html);
    assert!(!err);
    let raw = [
        crlf("From: a@example.com\nContent-Type: text/html; charset=ISO-2022-JP\nContent-Transfer-Encoding: 7bit\n\n"),
        jis.to_vec(),
    ]
    .concat();
    let out = run(&raw);
    assert_eq!(
        (out.links_tracked, out.pixels_inserted),
        (1, 1),
        "{:?}",
        out.unchanged_parts
    );
    let body = &out.message[out
        .message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4..];
    assert!(body.iter().all(|b| b.is_ascii()), "still 7-bit ISO-2022-JP");
    let (text, had_errors) = encoding_rs::ISO_2022_JP.decode_without_bom_handling(body);
    assert!(!had_errors);
    let (back, _) = untrack(&text);
    assert_eq!(back, html);
}

#[test]
fn malformed_html_parts_are_left_intact_with_a_reason() {
    let bad_base64 = crlf(
        "From: a@example.com\nContent-Type: multipart/alternative; boundary=x\n\n--x\n\
         Content-Type: text/html\nContent-Transfer-Encoding: base64\n\nPGE+*** not base64 ***\n\
         --x\nContent-Type: text/html\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 a\n\
         --x\nContent-Type: text/html; charset=iso-2022-kr\n\n<a href=\"https://example.com/\">k</a>\n--x--\n",
    );
    let out = run(&bad_base64);
    assert_eq!(out.message, bad_base64);
    assert_eq!(out.unchanged_parts.len(), 3, "{:?}", out.unchanged_parts);
    assert!(out.unchanged_parts[0].contains("base64"));
    assert!(out.unchanged_parts[1].contains("x-uuencode"));
    assert!(out.unchanged_parts[2].contains("iso-2022-kr"));

    // An unterminated multipart: the HTML part is not trusted.
    let truncated = crlf(
        "From: a@example.com\nContent-Type: multipart/alternative; boundary=x\n\n--x\n\
         Content-Type: text/html\n\n<a href=\"https://example.com/\">cut",
    );
    let out = run(&truncated);
    assert_eq!(out.message, truncated);
    assert_eq!(out.links_tracked, 0);

    // Not even a header block.
    for junk in [
        &b""[..],
        b"\r\n\r\n",
        b"<html>no headers</html>",
        b"\xff\xfe\x00garbage",
    ] {
        let out = run(junk);
        assert_eq!(out.message, junk);
    }
}

#[test]
fn html_attachments_and_forwarded_messages_are_left_alone() {
    let raw = crlf(
        "From: a@example.com\nContent-Type: multipart/mixed; boundary=m\n\n--m\n\
         Content-Type: text/plain\n\nsee attached\n--m\n\
         Content-Type: text/html; name=page.html\nContent-Disposition: attachment; filename=page.html\n\n\
         <body><a href=\"https://example.com/attached\">a</a></body>\n--m\n\
         Content-Type: message/rfc822\n\nFrom: c@example.org\nContent-Type: text/html\n\n\
         <body><a href=\"https://example.com/forwarded\">f</a></body>\n--m--\n",
    );
    let out = run(&raw);
    assert_eq!(out.message, raw);
    assert_eq!(out.links_tracked, 0);
    assert!(out.unchanged_parts.iter().any(|r| r.contains("attachment")));
}

#[test]
fn a_message_rfc822_body_is_tracked() {
    let raw = crlf(
        "From: a@example.com\nContent-Type: message/rfc822\n\nFrom: c@example.org\n\
         Content-Type: text/html\n\n<body><a href=\"https://example.com/inner\">i</a></body>\n",
    );
    let out = run(&raw);
    assert_eq!(
        (out.links_tracked, out.pixels_inserted),
        (1, 1),
        "{:?}",
        out.unchanged_parts
    );
    let text = String::from_utf8(out.message).unwrap();
    let (back, _) = untrack(&text);
    assert_eq!(back.into_bytes(), raw);
}

#[test]
fn a_line_pushed_past_998_octets_switches_the_part_to_quoted_printable() {
    let links: String = (0..12)
        .map(|i| format!("<a href=\"https://e.example/{i}\">{i}</a>"))
        .collect();
    assert!(links.len() < 998);
    let raw = crlf(&format!(
        "From: a@example.com\nContent-Type: multipart/alternative; boundary=x\n\n--x\n\
         Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n<body>{links}</body>\n--x--\n"
    ));
    let out = run(&raw);
    assert_eq!(out.links_tracked, 12);
    let text = String::from_utf8(out.message.clone()).unwrap();
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\n"));
    assert!(text.split("\r\n").all(|l| l.len() <= 76));
    let (back, _) = untrack(&html_parts(&out.message)[0]);
    assert_eq!(back, format!("<body>{links}</body>"));

    // Without a CTE header one is added to the part's own headers.
    let raw = raw_without_cte(&raw);
    let out = run(&raw);
    let text = String::from_utf8(out.message).unwrap();
    assert!(text.contains(
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    ));
}

fn raw_without_cte(raw: &[u8]) -> Vec<u8> {
    String::from_utf8(raw.to_vec())
        .unwrap()
        .replace("Content-Transfer-Encoding: 7bit\r\n", "")
        .into_bytes()
}

#[test]
fn a_tracking_host_that_is_not_a_host_turns_tracking_off_with_a_reason() {
    let raw = html_message("<a href=\"https://example.com/\">x</a>");
    for host in [
        "links.example.com/path",
        "user@links.example.com",
        "bad host",
    ] {
        let opts = TrackingOptions {
            tracking_host: Some(host),
            ..options(true, true)
        };
        let out = prepare(&raw, &opts, &keys());
        assert_eq!(out.message, raw, "{host}");
        assert_eq!(out.unchanged_parts.len(), 1);
    }
}

#[test]
fn an_idn_tracking_host_is_written_as_ascii() {
    let raw = html_message("<a href=\"https://example.com/\">x</a>");
    let opts = TrackingOptions {
        tracking_host: Some("liens.bücher.example"),
        scheme: "http",
        ..options(true, true)
    };
    let out = prepare(&raw, &opts, &keys());
    let body = body_of(&out.message);
    assert!(
        body.contains("href=\"http://liens.xn--bcher-kva.example/v1/track/click/"),
        "{body}"
    );
}

#[test]
fn mail_that_readers_take_apart_differently_is_left_alone() {
    // Two Content-Type fields on one part: clients disagree on what it is.
    let two_types = crlf(
        "From: a@example.com\nContent-Type: multipart/related; boundary=r\n\n--r\n\
         Content-Type: multipart/alternative; boundary=a\nContent-Type: text/plain\n\n--a\n\
         Content-Type: text/html\n\n<a href=\"https://example.com/\">x</a>\n--a--\n--r--\n",
    );
    // A blank-looking first line: some readers see no headers at all.
    let leading_blank = [
        b"   \r\n".as_slice(),
        &html_message("<a href=\"https://example.com/\">x</a>"),
    ]
    .concat();
    for raw in [two_types, leading_blank] {
        let out = run(&raw);
        assert_eq!(out.message, raw);
        assert_eq!(out.unchanged_parts.len(), 1, "{:?}", out.unchanged_parts);
    }
}

#[test]
fn quoted_printable_trailing_blanks_survive_as_content() {
    let raw = crlf(
        "From: a@example.com\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n\
         <p>word  \n<a href=3D\"https://example.com/\">x</a>   \n</p>",
    );
    let out = run(&raw);
    let (back, _) = untrack(&html_parts(&out.message)[0]);
    assert_eq!(
        back,
        "<p>word  \r\n<a href=\"https://example.com/\">x</a>   \r\n</p>"
    );
    assert!(String::from_utf8(out.message)
        .unwrap()
        .contains("word =20\r\n"));
}
