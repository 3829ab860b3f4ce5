//! A byte-exact view of a header block: where each field starts and ends
//! (continuation lines included), so fields can be cut out or edited without
//! touching the bytes around them. Parsing values is left to mail-parser;
//! this only needs to know line structure.

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
}
