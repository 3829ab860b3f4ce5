//! Link rewriting and the open pixel inside one decoded HTML part.
//!
//! lol_html is used only as a scanner: its own serialisation of a changed
//! tag would re-quote and re-space the whole tag, so the handlers record
//! byte ranges (`value_source_location`, `source_location`) and the new
//! values are spliced into the original bytes afterwards. Outlook
//! conditional comments (`<!--[if mso]>...<![endif]-->`) are plain comments
//! to an HTML parser, yet Outlook renders their content, VML buttons
//! included; their inner bytes are scanned again as HTML.

use super::links::{self, OwnHosts};
use super::splice::{apply, Splice};
use super::token::TokenKeys;
use encoding_rs::Encoding;
use lol_html::html_content::{Attribute, Comment, Element};
use lol_html::{
    doc_comments, end_tag, AsciiCompatibleEncoding, ElementContentHandlers, HtmlRewriter, Selector,
    Settings,
};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::LazyLock;
use uuid::Uuid;

/// Everything the rewrite of one message needs, fixed for that message.
pub(crate) struct Tracker<'a> {
    pub keys: &'a TokenKeys,
    pub email_id: Uuid,
    pub rcpt_index: u32,
    /// `{scheme}://{host}/v1/track/click/` when click tracking is on.
    pub click_prefix: Option<String>,
    /// The whole `<img>` tag when open tracking is on.
    pub pixel: Option<String>,
    pub own_hosts: OwnHosts,
}

pub(crate) struct Rewritten {
    /// `None` when the part needs no change.
    pub html: Option<Vec<u8>>,
    pub links: u32,
    pub pixel: bool,
}

/// Rewrites `html` (in an ASCII-compatible `encoding`); link indexes start
/// at `first_link`.
pub(crate) fn rewrite(
    html: &[u8],
    encoding: &'static Encoding,
    tracker: &Tracker,
    first_link: u32,
) -> Result<Rewritten, String> {
    let encoding = AsciiCompatibleEncoding::new(encoding)
        .ok_or_else(|| format!("{} is not ASCII-compatible", encoding.name()))?;
    let state = RefCell::new(Scan {
        src: html,
        encoding: encoding.into(),
        tracker,
        next_link: first_link,
        splices: Vec::new(),
    });
    let links = tracker.click_prefix.is_some() || contains_ignore_case(html, b"data-notrack");
    let wants = Wants {
        links,
        body_end: tracker.pixel.is_some(),
        // Comment contents are only scanned for links.
        comments: links && has_conditional_comment(html),
    };
    let body_end = scan(&state, html, 0, encoding, Some(wants))?;
    let mut state = state.into_inner();
    let links = state.next_link - first_link;
    let pixel = tracker.pixel.as_ref().map(|tag| {
        let at = body_end.unwrap_or(html.len());
        state
            .splices
            .push(Splice::insert(at, tag.as_bytes().to_vec()));
    });
    if state.splices.is_empty() {
        return Ok(Rewritten {
            html: None,
            links,
            pixel: false,
        });
    }
    Ok(Rewritten {
        html: Some(apply(html, state.splices)?),
        links,
        pixel: pixel.is_some(),
    })
}

struct Scan<'a> {
    /// The whole part; scans of comment contents see a slice of it.
    src: &'a [u8],
    encoding: &'static Encoding,
    tracker: &'a Tracker<'a>,
    next_link: u32,
    splices: Vec<Splice>,
}

/// Which handlers a top-level scan needs. Each makes lol_html tokenize
/// more of the document, so none is installed without a use.
#[derive(Clone, Copy)]
struct Wants {
    links: bool,
    body_end: bool,
    /// Outlook conditional comments.
    comments: bool,
}

/// The selectors, parsed once: lol_html's `element!` parses its selector
/// text for every rewriter, and a rewriter is built per part per copy.
static ANY: LazyLock<Selector> = LazyLock::new(|| selector("*"));
static LINKS: LazyLock<Selector> = LazyLock::new(|| selector("a, area"));
static BODY: LazyLock<Selector> = LazyLock::new(|| selector("body"));

fn selector(text: &str) -> Selector {
    text.parse()
        .unwrap_or_else(|e| panic!("the built-in selector {text:?} does not parse: {e}"))
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// `[if` starts every conditional comment's content and is rare elsewhere.
fn has_conditional_comment(html: &[u8]) -> bool {
    memchr::memchr_iter(b'[', html).any(|i| {
        html.get(i + 1..i + 3)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"if"))
    })
}

/// Scans `input`, which starts at `base` in the part; `wants` is `None` for
/// the contents of a conditional comment. Returns where the last `</body>`
/// end tag starts (top level only).
fn scan(
    state: &RefCell<Scan>,
    input: &[u8],
    base: usize,
    encoding: AsciiCompatibleEncoding,
    wants: Option<Wants>,
) -> Result<Option<usize>, String> {
    let body_end = Rc::new(Cell::new(None));
    let nested_error = RefCell::new(None);
    let mut settings = Settings::new().with_encoding(encoding).with_strict(false);
    match wants {
        None => {
            // Outlook-only markup: VML shapes (v:roundrect, v:rect...) carry
            // hrefs too. Few elements live in comments, so match them all.
            settings = settings.append_element_content_handler((
                Cow::Borrowed(&*ANY),
                ElementContentHandlers::default().element(|el: &mut Element| {
                    let tag = el.tag_name();
                    if tag == "a" || tag == "area" || tag.starts_with("v:") {
                        state.borrow_mut().link(el, base);
                    }
                    Ok(())
                }),
            ));
        }
        Some(wants) => {
            if wants.links {
                settings = settings.append_element_content_handler((
                    Cow::Borrowed(&*LINKS),
                    ElementContentHandlers::default().element(|el: &mut Element| {
                        state.borrow_mut().link(el, base);
                        Ok(())
                    }),
                ));
            }
            if wants.body_end {
                let be = body_end.clone();
                settings = settings.append_element_content_handler((
                    Cow::Borrowed(&*BODY),
                    ElementContentHandlers::default().element(move |el: &mut Element| {
                        if let Some(handlers) = el.end_tag_handlers() {
                            let be = be.clone();
                            handlers.push(end_tag!(move |end| {
                                be.set(Some(end.source_location().bytes().start));
                                Ok(())
                            }));
                        }
                        Ok(())
                    }),
                ));
            }
            if wants.comments {
                settings = settings.append_document_content_handler(doc_comments!(|c| {
                    if let Err(e) = conditional_comment(state, c, input, base, encoding) {
                        *nested_error.borrow_mut() = Some(e);
                    }
                    Ok(())
                }));
            }
        }
    }
    let mut rewriter = HtmlRewriter::new(settings, |_: &[u8]| {});
    rewriter
        .write(input)
        .and_then(|_| rewriter.end())
        .map_err(|e| format!("HTML scan failed: {e}"))?;
    if let Some(e) = nested_error.into_inner() {
        return Err(e);
    }
    Ok(body_end.get())
}

fn conditional_comment(
    state: &RefCell<Scan>,
    comment: &Comment,
    input: &[u8],
    base: usize,
    encoding: AsciiCompatibleEncoding,
) -> Result<(), String> {
    let range = comment.source_location().bytes();
    let Some(raw) = input.get(range.clone()) else {
        return Ok(());
    };
    let Some(inner) = raw.strip_prefix(b"<!--") else {
        return Ok(()); // <!doctype-like or <? bogus comments hold no markup
    };
    let inner = inner
        .strip_suffix(b"-->")
        .or_else(|| inner.strip_suffix(b"--!>"))
        .unwrap_or(inner);
    let head = inner.trim_ascii_start();
    // Most conditional comments only open or close a table for Outlook; a
    // second scanner is built only for those that can hold a link.
    if head.len() < 3
        || !head[..3].eq_ignore_ascii_case(b"[if")
        || !contains_ignore_case(inner, b"href")
    {
        return Ok(());
    }
    scan(state, inner, base + range.start + 4, encoding, None).map(|_| ())
}

impl Scan<'_> {
    fn link(&mut self, el: &Element, base: usize) {
        let mut href = None;
        let mut notrack = None;
        for attr in el.attributes() {
            // Names are compared in the source bytes: no allocation per attribute.
            let Some(name) = attr
                .name_source_location()
                .and_then(|l| self.src.get(base + l.bytes().start..base + l.bytes().end))
            else {
                continue;
            };
            if href.is_none() && name.eq_ignore_ascii_case(b"href") {
                href = Some(attr);
            } else if notrack.is_none() && name.eq_ignore_ascii_case(b"data-notrack") {
                notrack = Some(attr);
            }
        }
        if let Some(attr) = notrack {
            let tag_start = base + el.source_location().bytes().start;
            self.remove_attribute(attr, base, tag_start);
        } else if let Some(attr) = href {
            self.track(attr, base);
        }
    }

    /// Cuts the attribute and the blanks before it; the rest of the tag
    /// keeps its bytes.
    fn remove_attribute(&mut self, attr: &Attribute, base: usize, tag_start: usize) {
        let Some(name) = attr.name_source_location() else {
            return;
        };
        let mut start = base + name.bytes().start;
        let mut end = base + name.bytes().end;
        if let Some(value) = attr.value_source_location() {
            end = base + value.bytes().end;
            if let Some(q) = self.quote_before(base + value.bytes().start) {
                if self.src.get(end) == Some(&q) {
                    end += 1;
                }
            }
        }
        while start > tag_start && self.src.get(start - 1).is_some_and(u8::is_ascii_whitespace) {
            start -= 1;
        }
        self.splices.push(Splice::replace(start..end, Vec::new()));
    }

    fn track(&mut self, attr: &Attribute, base: usize) {
        let Some(prefix) = self.tracker.click_prefix.as_deref() else {
            return;
        };
        let Some(loc) = attr.value_source_location() else {
            return;
        };
        let range = base + loc.bytes().start..base + loc.bytes().end;
        let Some(raw) = self.src.get(range.clone()) else {
            return;
        };
        let text = self.encoding.decode_without_bom_handling(raw).0;
        let href = htmlize::unescape_attribute(text);
        let Some(url) = links::trackable(&href, &self.tracker.own_hosts) else {
            return;
        };
        let t = self.tracker;
        let token = t
            .keys
            .click_token(t.email_id, t.rcpt_index, self.next_link, &url);
        self.next_link += 1;
        let mut new = String::with_capacity(prefix.len() + token.len());
        new.push_str(prefix);
        new.push_str(&token);
        let value = attribute_value(&new, self.quote_before(range.start));
        self.splices.push(Splice::replace(range, value));
    }

    fn quote_before(&self, value_start: usize) -> Option<u8> {
        let q = *self.src.get(value_start.checked_sub(1)?)?;
        (q == b'"' || q == b'\'').then_some(q)
    }
}

/// Writes `value` so it reads back the same inside the given quotes; an
/// unquoted value that could not stand unquoted gets double quotes.
fn attribute_value(value: &str, quote: Option<u8>) -> Vec<u8> {
    let needs_quotes = quote.is_none()
        && value
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b"\"'=<>`".contains(&b));
    if !needs_quotes && !value.bytes().any(|b| matches!(b, b'&' | b'"' | b'\'')) {
        return value.as_bytes().to_vec();
    }
    let quote = quote.or(needs_quotes.then_some(b'"'));
    let mut out = Vec::with_capacity(value.len() + 2);
    if needs_quotes {
        out.push(b'"');
    }
    for b in value.bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'"' if quote == Some(b'"') => out.extend_from_slice(b"&quot;"),
            b'\'' if quote == Some(b'\'') => out.extend_from_slice(b"&#39;"),
            _ => out.push(b),
        }
    }
    if needs_quotes {
        out.push(b'"');
    }
    out
}

/// The open pixel: a plain 1x1 image. Not hidden with display:none, which
/// Gmail's proxy does not fetch.
pub(crate) fn pixel_tag(url: &str) -> String {
    let src = String::from_utf8_lossy(&attribute_value(url, Some(b'"'))).into_owned();
    format!(
        "<img src=\"{src}\" width=\"1\" height=\"1\" alt=\"\" border=\"0\" \
         style=\"width:1px;height:1px;border:0;margin:0;padding:0\">"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_stay_valid_in_their_quoting() {
        assert_eq!(attribute_value("a&b", Some(b'"')), b"a&amp;b");
        assert_eq!(attribute_value("it's", Some(b'\'')), b"it&#39;s");
        assert_eq!(attribute_value("plain", None), b"plain");
        assert_eq!(attribute_value("a b", None), b"\"a b\"");
    }
}
