//! How the bytes of an HTML part are read and written back.
//!
//! Most charsets are ASCII-compatible: every byte below 0x80 is that ASCII
//! character and never part of a multi-byte sequence that matters to HTML
//! syntax. Those parts are scanned as they are and only ASCII is spliced in,
//! so every other byte stays put and the charset cannot be a problem.
//!
//! UTF-16 and ISO-2022-JP are not: `<` may be half of a character. Those
//! parts are decoded to UTF-8, rewritten, and encoded back into the same
//! charset, which is only done when the original decodes without loss and
//! re-encodes to exactly its own bytes; otherwise the part is left alone.
//! What we add is ASCII, which both charsets can represent, so the charset
//! never has to change.

use encoding_rs::{Encoding, ISO_2022_JP, REPLACEMENT, UTF_16BE, UTF_16LE, UTF_8, WINDOWS_1252};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TextCodec {
    /// Scanned in place; `Encoding` is used to read href values.
    Ascii(&'static Encoding),
    Utf16 {
        big_endian: bool,
        bom: bool,
    },
    Iso2022Jp,
}

pub(crate) fn resolve(label: Option<&str>, data: &[u8]) -> Result<TextCodec, String> {
    // A byte order mark wins over the label, as it does in browsers.
    if data.starts_with(b"\xEF\xBB\xBF") {
        return ascii(UTF_8, data);
    }
    if data.starts_with(b"\xFF\xFE") || data.starts_with(b"\xFE\xFF") {
        return Ok(TextCodec::Utf16 {
            big_endian: data[0] == 0xFE,
            bom: true,
        });
    }
    let label = label.map(str::trim).filter(|l| !l.is_empty());
    let named = label.and_then(|l| Encoding::for_label(l.as_bytes()));
    match named {
        Some(e) if e == UTF_16LE || e == UTF_16BE => {
            let l = label.unwrap_or_default().to_ascii_lowercase();
            let big_endian = match l.as_str() {
                "utf-16le" => false,
                "utf-16be" => true,
                _ => guess_big_endian(data),
            };
            Ok(TextCodec::Utf16 {
                big_endian,
                bom: false,
            })
        }
        Some(e) if e == ISO_2022_JP => Ok(TextCodec::Iso2022Jp),
        Some(e) if e == REPLACEMENT || !e.is_ascii_compatible() => Err(format!(
            "charset {} is not supported",
            label.unwrap_or_default()
        )),
        Some(e) => ascii(e, data),
        None => {
            let l = label.unwrap_or_default();
            if l.to_ascii_lowercase().contains("utf-7") || memchr::memchr(0x1B, data).is_some() {
                return Err(format!(
                    "charset {l:?} is unknown and the text is not ASCII-based"
                ));
            }
            // Unknown or missing: the links and the pixel are ASCII, so any
            // ASCII-based reading is safe; UTF-8 reads non-ASCII URLs best.
            let e = if std::str::from_utf8(data).is_ok() {
                UTF_8
            } else {
                WINDOWS_1252
            };
            ascii(e, data)
        }
    }
}

fn ascii(e: &'static Encoding, data: &[u8]) -> Result<TextCodec, String> {
    // NUL never occurs in 8-bit HTML; it does in mislabelled UTF-16, where
    // ASCII spliced in would be garbage.
    if memchr::memchr(0, data).is_some() {
        return Err(format!(
            "labelled {} but contains NUL bytes (UTF-16?)",
            e.name()
        ));
    }
    Ok(TextCodec::Ascii(e))
}

/// RFC 2781 says big-endian when unmarked; but HTML is mostly ASCII, so the
/// side the zero bytes fall on is a better witness.
fn guess_big_endian(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(1024)];
    let (mut even, mut odd) = (0usize, 0usize);
    for (i, &b) in sample.iter().enumerate() {
        if b == 0 {
            if i % 2 == 0 {
                even += 1;
            } else {
                odd += 1;
            }
        }
    }
    even >= odd
}

impl TextCodec {
    pub fn name(&self) -> &'static str {
        match self {
            TextCodec::Ascii(e) => e.name(),
            TextCodec::Utf16 {
                big_endian: true, ..
            } => "UTF-16BE",
            TextCodec::Utf16 { .. } => "UTF-16LE",
            TextCodec::Iso2022Jp => "ISO-2022-JP",
        }
    }

    /// Decodes a transcoded part, refusing anything that would not come back
    /// byte for byte.
    pub fn decode(&self, data: &[u8]) -> Result<String, String> {
        let bad = || format!("{} text does not decode cleanly", self.name());
        match *self {
            TextCodec::Ascii(_) => String::from_utf8(data.to_vec()).map_err(|_| bad()),
            TextCodec::Utf16 { big_endian, bom } => {
                let data = if bom { &data[2..] } else { data };
                let e = if big_endian { UTF_16BE } else { UTF_16LE };
                e.decode_without_bom_handling_and_without_replacement(data)
                    .map(|s| s.into_owned())
                    .ok_or_else(bad)
            }
            TextCodec::Iso2022Jp => {
                let text = ISO_2022_JP
                    .decode_without_bom_handling_and_without_replacement(data)
                    .ok_or_else(bad)?
                    .into_owned();
                if self.encode(&text)? != data {
                    return Err("ISO-2022-JP text would not re-encode to the same bytes".into());
                }
                Ok(text)
            }
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u8>, String> {
        match *self {
            TextCodec::Ascii(_) => Ok(text.as_bytes().to_vec()),
            TextCodec::Utf16 { big_endian, bom } => {
                let mut out = Vec::with_capacity(text.len() * 2 + 2);
                let mut put = |u: u16| {
                    out.extend_from_slice(&if big_endian {
                        u.to_be_bytes()
                    } else {
                        u.to_le_bytes()
                    })
                };
                if bom {
                    put(0xFEFF);
                }
                text.encode_utf16().for_each(put);
                Ok(out)
            }
            TextCodec::Iso2022Jp => {
                let (bytes, _, had_errors) = ISO_2022_JP.encode(text);
                if had_errors {
                    return Err("text cannot be represented in ISO-2022-JP".into());
                }
                Ok(bytes.into_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_labels_boms_and_guesses() {
        assert_eq!(
            resolve(Some("ISO-8859-1"), b"x").unwrap(),
            TextCodec::Ascii(WINDOWS_1252)
        );
        assert_eq!(
            resolve(Some("utf-16"), b"<\0h\0").unwrap(),
            TextCodec::Utf16 {
                big_endian: false,
                bom: false
            }
        );
        assert_eq!(
            resolve(Some("utf-8"), b"\xFE\xFF\0<").unwrap(),
            TextCodec::Utf16 {
                big_endian: true,
                bom: true
            }
        );
        assert_eq!(
            resolve(Some("iso-2022-jp"), b"").unwrap(),
            TextCodec::Iso2022Jp
        );
        assert!(resolve(Some("iso-2022-kr"), b"").is_err());
        assert!(resolve(Some("utf-7"), b"+ADw-").is_err());
        assert!(resolve(Some("utf-8"), b"<\0h\0").is_err());
        assert_eq!(
            resolve(Some("x-unknown"), b"caf\xe9").unwrap(),
            TextCodec::Ascii(WINDOWS_1252)
        );
        assert_eq!(resolve(None, b"plain").unwrap(), TextCodec::Ascii(UTF_8));
    }

    #[test]
    fn utf16_round_trips_with_bom() {
        let codec = TextCodec::Utf16 {
            big_endian: false,
            bom: true,
        };
        let bytes = codec.encode("<p>h\u{e9} \u{1F600}</p>").unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), "<p>h\u{e9} \u{1F600}</p>");
        assert!(codec.decode(b"\xFF\xFE\x00\xD8").is_err());
    }

    #[test]
    fn iso_2022_jp_refuses_text_that_would_not_come_back() {
        let codec = TextCodec::Iso2022Jp;
        let bytes = codec.encode("<p>\u{65e5}\u{672c}</p>").unwrap();
        assert!(codec.decode(&bytes).is_ok());
        // A redundant escape decodes fine but would be dropped on the way back.
        let redundant = [b"\x1b(B".as_slice(), &bytes].concat();
        assert!(codec.decode(&redundant).is_err());
    }
}
