//! A byte-exact view of a header block: where each field starts and ends
//! (continuation lines included), so fields can be cut out or edited without
//! touching the bytes around them. Parsing values is left to mail-parser;
//! this only needs to know line structure. Submission uses the same scan,
//! so the header block it checks is the one prepare edits.

use std::ops::Range;

#[derive(Clone)]
pub(crate) struct Field {
    /// The field name as written (before the colon, trailing blanks trimmed);
    /// empty for a line that has no colon.
    pub name: Range<usize>,
    /// From the first byte after the colon to the end of the last
    /// continuation line, line ending excluded.
    pub value: Range<usize>,
    /// The whole field including its final line ending.
    pub whole: Range<usize>,
}

pub(crate) struct HeaderBlock {
    pub fields: Vec<Field>,
    /// Offset of the empty line that ends the block (or of the end of input
    /// when there is none).
    pub end: usize,
    /// Offset of the first body byte, after the empty line.
    pub body: usize,
}

impl HeaderBlock {
    /// Scans `raw[start..]` up to the first empty line.
    pub fn scan(raw: &[u8], start: usize) -> HeaderBlock {
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = start.min(raw.len());
        loop {
            if pos >= raw.len() {
                return HeaderBlock {
                    fields,
                    end: raw.len(),
                    body: raw.len(),
                };
            }
            let next = memchr::memchr(b'\n', &raw[pos..]).map_or(raw.len(), |i| pos + i + 1);
            let content_end = line_content_end(raw, pos, next);
            if content_end == pos {
                return HeaderBlock {
                    fields,
                    end: pos,
                    body: next,
                };
            }
            let first = raw[pos];
            match fields.last_mut() {
                Some(field) if first == b' ' || first == b'\t' => {
                    field.value.end = content_end;
                    field.whole.end = next;
                }
                _ => {
                    let line = &raw[pos..content_end];
                    let field = match memchr::memchr(b':', line) {
                        Some(colon) => {
                            let name_len = line[..colon].trim_ascii_end().len();
                            Field {
                                name: pos..pos + name_len,
                                value: pos + colon + 1..content_end,
                                whole: pos..next,
                            }
                        }
                        None => Field {
                            name: pos..pos,
                            value: pos..content_end,
                            whole: pos..next,
                        },
                    };
                    fields.push(field);
                }
            }
            pos = next;
        }
    }

    pub fn named<'a>(&'a self, raw: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a Field> {
        self.fields
            .iter()
            .filter(move |f| raw[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// Length of the header block including the empty line that ends it, or the
/// whole input when there is none.
pub fn header_block_len(raw: &[u8]) -> usize {
    HeaderBlock::scan(raw, 0).body
}

/// The tags of every `X-Tags` field, in order and each once. A message may
/// carry several X-Tags fields, and a value may be RFC 2047-encoded.
pub(crate) fn tags(raw: &[u8], block: &HeaderBlock, name: &str) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for field in block.named(raw, name) {
        let value = decode_words(&unfolded(raw, &field.value));
        for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            }
        }
    }
    tags
}

/// Encoded words (`=?UTF-8?Q?...?=`) decoded; mail-parser knows how.
fn decode_words(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_owned();
    }
    let header = format!("Subject: {value}\r\n\r\n");
    mail_parser::MessageParser::new()
        .header_text(mail_parser::HeaderName::Subject)
        .parse_headers(header.as_bytes())
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_else(|| value.to_owned())
}

fn line_content_end(raw: &[u8], start: usize, next: usize) -> usize {
    let mut end = next;
    if end > start && raw[end - 1] == b'\n' {
        end -= 1;
        if end > start && raw[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}

/// A field value with folding undone (line breaks before blanks removed) and
/// blanks trimmed.
pub(crate) fn unfolded(raw: &[u8], value: &Range<usize>) -> String {
    let bytes: Vec<u8> = raw[value.clone()]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    String::from_utf8_lossy(bytes.trim_ascii()).into_owned()
}

/// The line ending the header block uses, for lines we add to it.
pub(crate) fn line_ending(raw: &[u8], block: &HeaderBlock) -> &'static [u8] {
    match block.fields.first() {
        Some(f) if raw[..f.whole.end].ends_with(b"\r\n") => b"\r\n",
        Some(_) => b"\n",
        None => b"\r\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_folded_fields_and_finds_the_body() {
        let raw = b"From: a@b\r\nX-Tags: one,\r\n two\r\nSubject: hi\r\n\r\nbody";
        let block = HeaderBlock::scan(raw, 0);
        assert_eq!(block.fields.len(), 3);
        let tags = &block.fields[1];
        assert_eq!(&raw[tags.name.clone()], b"X-Tags");
        assert_eq!(&raw[tags.whole.clone()], b"X-Tags: one,\r\n two\r\n");
        assert_eq!(unfolded(raw, &tags.value), "one, two");
        assert_eq!(&raw[block.body..], b"body");
        assert_eq!(block.end, raw.len() - 6);
    }

    #[test]
    fn handles_bare_lf_and_no_body() {
        let raw = b"A: 1\nB : 2\n";
        let block = HeaderBlock::scan(raw, 0);
        assert_eq!(block.fields.len(), 2);
        assert_eq!(&raw[block.fields[1].name.clone()], b"B");
        assert_eq!(block.body, raw.len());
        assert_eq!(line_ending(raw, &block), b"\n");
    }

    #[test]
    fn header_block_len_counts_the_empty_line() {
        assert_eq!(header_block_len(b"A: 1\r\n\r\nbody"), 8);
        assert_eq!(header_block_len(b"A: 1\n\nbody"), 6);
        assert_eq!(header_block_len(b"A: 1\r\nB: 2"), 10, "no body: all of it");
        assert_eq!(header_block_len(b"\r\nbody"), 2);
        assert_eq!(header_block_len(b""), 0);
    }

    fn tags_of(raw: &[u8]) -> Vec<String> {
        tags(raw, &HeaderBlock::scan(raw, 0), "X-Tags")
    }

    #[test]
    fn tags_from_every_field_decoded_and_once() {
        let raw = b"X-Tags: a, b ,,c\r\nSubject: s\r\nx-tags: b,\r\n d\r\n\
X-Tags: =?UTF-8?Q?caf=C3=A9,_a?=\r\n\r\nX-Tags: body\r\n";
        assert_eq!(tags_of(raw), ["a", "b", "c", "d", "caf\u{e9}"]);
        assert_eq!(tags_of(b"X-Tags: =?utf-8?B?bmV3cw==?=\n\n"), ["news"]);
        assert!(tags_of(b"X-Tags:  , \r\n\r\n").is_empty());
        assert_eq!(tags_of(b"X-Tags: A, a\r\n\r\n"), ["A", "a"], "case is kept");
    }
}
