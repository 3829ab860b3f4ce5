//! The MIME walk: finds the text/html parts (see [`structure`]), rewrites
//! each one, and returns byte-range edits against the raw message, so that
//! every byte outside those parts stays as it was.

use super::charset::{self, TextCodec};
use super::encode::{self, Cte, SMTP_LINE_LIMIT};
use super::headers::{self, Field, HeaderBlock};
use super::html::{self, Tracker};
use super::splice::{apply, Splice};
use super::structure::{self, Kind, Part};

/// How deep a message/rfc822 body may nest inside another before we stop.
const MAX_EMBEDDED_DEPTH: u32 = 3;

pub(crate) struct Walk<'t> {
    tracker: &'t Tracker<'t>,
    pub links: u32,
    pub pixels: u32,
    pub notes: Vec<String>,
}

impl<'t> Walk<'t> {
    pub fn new(tracker: &'t Tracker<'t>) -> Self {
        Walk {
            tracker,
            links: 0,
            pixels: 0,
            notes: Vec::new(),
        }
    }

    /// Edits for one message (the top level or a message/rfc822 body).
    pub fn message(&mut self, raw: &[u8], depth: u32) -> Vec<Splice> {
        let Some(parts) = structure::parts(raw) else {
            self.notes
                .push("the message could not be parsed as MIME; left as it is".into());
            return Vec::new();
        };
        if let Err(reason) = structure_agrees(raw, &parts) {
            self.notes.push(format!("{reason}; message left as it is"));
            return Vec::new();
        }
        let top = HeaderBlock::scan(raw, 0);
        let message_eol = headers::line_ending(raw, &top);
        let mut edits = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let result = match part.kind {
                Kind::Html if part.attachment => {
                    Err("an HTML attachment, not a body; left as it is".into())
                }
                Kind::Html => self.html_part(raw, part, message_eol),
                // A forwarded message is tracked only when it is the body
                // itself; as an attachment it is someone else's mail.
                Kind::Message if i == 0 => self.embedded(raw, part, message_eol, depth),
                // mail-parser's reading of text/html it found malformed.
                Kind::Text if part.ctype == "text/html" => {
                    Err("malformed MIME (no closing boundary or similar); left intact".into())
                }
                _ => Ok(Vec::new()),
            };
            match result {
                Ok(e) => edits.extend(e),
                Err(reason) => {
                    self.notes
                        .push(format!("part {} ({}): {reason}", i + 1, describe(part)))
                }
            }
        }
        edits
    }

    fn html_part(
        &mut self,
        raw: &[u8],
        part: &Part,
        message_eol: &'static [u8],
    ) -> Result<Vec<Splice>, String> {
        let p = PartBytes::locate(raw, part)?;
        // Quoted-printable keeps its map of hard lines, so that only the
        // lines the rewrite changed are encoded again.
        let (decoded, content_len, qp_lines) = if p.cte == Cte::QuotedPrintable {
            let (d, lines) = encode::qp_decode_mapped(p.body);
            (std::borrow::Cow::Owned(d), p.body.len(), Some(lines))
        } else {
            let (d, len) = encode::decode(p.cte, p.body)?;
            (d, len, None)
        };
        let label = part.charset.as_deref();
        let codec = charset::resolve(label, &decoded)?;
        let first_link = self.links;
        let (new, links, pixel) = match codec {
            TextCodec::Ascii(enc) => {
                let r = html::rewrite(&decoded, enc, self.tracker, first_link)?;
                (r.html, r.links, r.pixel)
            }
            other => {
                let text = other.decode(&decoded)?;
                let r = html::rewrite(
                    text.as_bytes(),
                    encoding_rs::UTF_8,
                    self.tracker,
                    first_link,
                )?;
                let html = match r.html {
                    Some(h) => {
                        let h = String::from_utf8(h)
                            .map_err(|_| "internal error: rewritten text is not UTF-8")?;
                        Some(other.encode(&h)?)
                    }
                    None => None,
                };
                (html, r.links, r.pixel)
            }
        };
        let Some(new) = new else {
            return Ok(Vec::new());
        };
        let eol = encode::body_line_ending(p.body, message_eol);
        let mut edits = Vec::new();
        let mut cte = p.cte;
        // Longer tracked URLs can push a line past what SMTP carries; such a
        // part travels as quoted-printable instead (binary has no limit).
        if cte == Cte::Identity && !p.is_binary() && encode::longest_line(&new) > SMTP_LINE_LIMIT {
            cte = Cte::QuotedPrintable;
            edits.push(match p.cte_field {
                Some(f) => Splice::replace(f.value.clone(), b" quoted-printable".to_vec()),
                None => Splice::insert(
                    p.header.end,
                    [
                        b"Content-Transfer-Encoding: quoted-printable",
                        headers::line_ending(raw, &p.header),
                    ]
                    .concat(),
                ),
            });
        }
        let encoded = match (&qp_lines, cte) {
            (Some(lines), Cte::QuotedPrintable) => {
                encode::qp_reencode(&p.body[..content_len], lines, &decoded, &new, eol)
            }
            _ => encode::encode(cte, new, eol),
        };
        edits.push(Splice::replace(
            p.body_start..p.body_start + content_len,
            encoded,
        ));
        self.links += links;
        self.pixels += u32::from(pixel);
        Ok(edits)
    }

    fn embedded(
        &mut self,
        raw: &[u8],
        part: &Part,
        message_eol: &'static [u8],
        depth: u32,
    ) -> Result<Vec<Splice>, String> {
        if depth >= MAX_EMBEDDED_DEPTH {
            return Err("message/rfc822 nested too deeply; left as it is".into());
        }
        let p = PartBytes::locate(raw, part)?;
        let (decoded, content_len) = encode::decode(p.cte, p.body)?;
        let inner = self.message(&decoded, depth + 1);
        if inner.is_empty() {
            return Ok(Vec::new());
        }
        let new = apply(&decoded, inner)?;
        let eol = encode::body_line_ending(p.body, message_eol);
        Ok(vec![Splice::replace(
            p.body_start..p.body_start + content_len,
            encode::encode(p.cte, new, eol),
        )])
    }
}

/// A leaf part's bytes, checked against our own reading of its headers.
struct PartBytes<'a> {
    header: HeaderBlock,
    cte_field: Option<Field>,
    cte_value: Option<String>,
    cte: Cte,
    body_start: usize,
    body: &'a [u8],
}

impl<'a> PartBytes<'a> {
    fn locate(raw: &'a [u8], part: &Part) -> Result<Self, String> {
        let (hs, bs, be) = (part.header, part.body, part.end);
        if !(hs <= bs && bs <= be && be <= raw.len()) {
            return Err(format!("part offsets {hs}/{bs}/{be} are out of range"));
        }
        // mail-parser accepts a boundary anywhere on a line; a part that does
        // not end at a line-leading boundary (or the end) is not trusted.
        let rest = &raw[be..];
        let at_boundary = rest.is_empty()
            || rest.starts_with(b"\r\n--")
            || rest.starts_with(b"\n--")
            || rest.starts_with(b"--") && (be == 0 || raw[be - 1] == b'\n');
        if !at_boundary {
            return Err("the part does not end at a boundary line".into());
        }
        let header = HeaderBlock::scan(raw, hs);
        if header.body != bs || header.end == header.body {
            return Err("the part's header block does not end where its body starts".into());
        }
        let cte_field = {
            let mut ctes = header.named(raw, "Content-Transfer-Encoding");
            match (ctes.next(), ctes.next()) {
                (Some(_), Some(_)) => return Err("several Content-Transfer-Encoding fields".into()),
                (first, _) => first.cloned(),
            }
        };
        let cte_value = cte_field.as_ref().map(|f| headers::unfolded(raw, &f.value));
        let cte = Cte::from_header(cte_value.as_deref()).ok_or_else(|| {
            format!(
                "unknown Content-Transfer-Encoding {:?}",
                cte_value.as_deref().unwrap_or("")
            )
        })?;
        Ok(PartBytes {
            header,
            cte_field,
            cte_value,
            cte,
            body_start: bs,
            body: &raw[bs..be],
        })
    }

    fn is_binary(&self) -> bool {
        self.cte_value
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case("binary"))
    }
}

/// Mail that readers can take apart differently (a header block mail-parser
/// ends elsewhere than a plain line reader, a part with two Content-Types)
/// is not rewritten: we cannot know which reading the recipient's client
/// will use.
fn structure_agrees(raw: &[u8], parts: &[Part]) -> Result<(), String> {
    for (i, part) in parts.iter().enumerate() {
        let block = HeaderBlock::scan(raw, part.header);
        if block.body != part.body {
            return Err(format!(
                "part {}: MIME readers disagree on where its headers end",
                i + 1
            ));
        }
        if block.named(raw, "Content-Type").nth(1).is_some() {
            return Err(format!("part {}: several Content-Type fields", i + 1));
        }
    }
    Ok(())
}

fn describe(part: &Part) -> String {
    if part.ctype.is_empty() {
        "no Content-Type".into()
    } else {
        part.ctype.clone()
    }
}
