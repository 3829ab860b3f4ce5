//! Per-recipient message preparation (pure, no I/O): removes the control
//! headers, rewrites http(s) links in every text/html part to tracked click
//! URLs, adds the open pixel, and adds the feedback headers
//! (`X-Trackrelay-Ref`, List-Unsubscribe; see `feedback_headers`).
//!
//! The rule everything here follows: a recipient's email must look and work
//! exactly as the sender wrote it. Only the edited attribute values, the
//! pixel and the removed control headers change; a rewritten part is
//! re-encoded with its own transfer encoding and charset; anything that
//! cannot be handled with certainty is sent as it came, with a reason in
//! [`Prepared::unchanged_parts`].

mod charset;
mod encode;
mod feedback_headers;
pub(crate) mod headers;
mod html;
mod links;
mod mime;
mod splice;
mod structure;
mod token;

pub use feedback_headers::{Feedback, ListUnsubscribe};
pub use headers::header_block_len;
/// For the fuzz target: see [`structure::agrees_with_mail_parser`].
#[doc(hidden)]
pub use structure::agrees_with_mail_parser;
pub use token::{Token, TokenKeys};

use headers::HeaderBlock;
use splice::{apply, Splice};

pub struct TrackingOptions<'a> {
    pub email_id: uuid::Uuid,
    pub rcpt_index: u32,
    /// "https" or "http".
    pub scheme: &'a str,
    /// e.g. "links.example.com"; `None` turns tracking off (control headers
    /// are still removed).
    pub tracking_host: Option<&'a str>,
    /// Earlier tracking hosts: links already on any of them are left alone.
    pub other_tracking_hosts: &'a [String],
    /// The domain's default; `X-Track-Opens` overrides it.
    pub open_tracking: bool,
    /// The domain's default; `X-Track-Clicks` overrides it.
    pub click_tracking: bool,
    /// The return-path token and unsubscribe settings; `None`: no
    /// `X-Trackrelay-Ref` and no List-Unsubscribe (a submitted
    /// `X-Trackrelay-Ref` is removed all the same).
    pub feedback: Option<Feedback<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlHeaders {
    pub track_opens: Option<bool>,
    pub track_clicks: Option<bool>,
    /// `X-Track-Unsubscribe`: overrides the domain's `list_unsubscribe`.
    pub list_unsubscribe: Option<bool>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// What goes on the wire (before DKIM).
    pub message: Vec<u8>,
    pub links_tracked: u32,
    pub pixels_inserted: u32,
    /// Human reasons for parts left as they were (for logging).
    pub unchanged_parts: Vec<String>,
    pub list_unsubscribe: ListUnsubscribe,
}

const TRACK_OPENS: &str = "X-Track-Opens";
const TRACK_CLICKS: &str = "X-Track-Clicks";
const TAGS: &str = "X-Tags";
const TRACK_UNSUBSCRIBE: &str = "X-Track-Unsubscribe";
/// Removed from every message: control headers, and our own reference,
/// which a client must not be able to forge.
const REMOVED: [&str; 5] = [
    TRACK_OPENS,
    TRACK_CLICKS,
    TAGS,
    TRACK_UNSUBSCRIBE,
    feedback_headers::REF,
];

/// Reads X-Track-Opens / X-Track-Clicks / X-Track-Unsubscribe / X-Tags from the top-level header
/// block (names case-insensitive, folded lines joined). A flag that is not
/// a recognisable yes or no counts as absent, so the domain default holds.
pub fn control_headers(raw: &[u8]) -> ControlHeaders {
    read_control_headers(raw, &HeaderBlock::scan(raw, 0))
}

fn read_control_headers(raw: &[u8], block: &HeaderBlock) -> ControlHeaders {
    let flag = |name| {
        block
            .named(raw, name)
            .last()
            .and_then(|f| parse_flag(&headers::unfolded(raw, &f.value)))
    };
    ControlHeaders {
        track_opens: flag(TRACK_OPENS),
        track_clicks: flag(TRACK_CLICKS),
        list_unsubscribe: flag(TRACK_UNSUBSCRIBE),
        tags: headers::tags(raw, block, TAGS),
    }
}

fn parse_flag(value: &str) -> Option<bool> {
    let v = value.trim().to_ascii_lowercase();
    match v.as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Pure: no I/O. Never panics, never fails: on any internal error the
/// control headers are still removed and the rest is returned byte-for-byte
/// unchanged (with a reason in `unchanged_parts`).
pub fn prepare(raw: &[u8], opts: &TrackingOptions, keys: &TokenKeys) -> Prepared {
    let block = HeaderBlock::scan(raw, 0);
    let control = read_control_headers(raw, &block);
    let mut header_edits: Vec<Splice> = REMOVED
        .iter()
        .flat_map(|name| block.named(raw, name))
        .map(|f| Splice::replace(f.whole.clone(), Vec::new()))
        .collect();
    let base = opts
        .tracking_host
        .and_then(|host| base_url(opts.scheme, host).ok());
    let (added, list_unsubscribe) = feedback_headers::lines(
        raw,
        &block,
        opts.feedback.as_ref(),
        base.as_ref(),
        control.list_unsubscribe,
    );
    if !added.is_empty() {
        header_edits.push(Splice::insert(0, added));
    }
    let unchanged = |mut notes: Vec<String>| {
        let message = apply(raw, header_edits.clone()).unwrap_or_else(|e| {
            notes.push(e);
            raw.to_vec()
        });
        Prepared {
            message,
            links_tracked: 0,
            pixels_inserted: 0,
            unchanged_parts: notes,
            list_unsubscribe,
        }
    };

    let tracker = match tracker(opts, keys, &control) {
        Ok(Some(t)) => t,
        Ok(None) => return unchanged(Vec::new()),
        Err(e) => return unchanged(vec![e]),
    };
    let walked = guarded(|| {
        let mut walk = mime::Walk::new(&tracker);
        let edits = walk.message(raw, 0);
        (edits, walk)
    });
    let (body_edits, walk) = match walked {
        Ok(w) => w,
        Err(e) => return unchanged(vec![e]),
    };
    let mut notes = walk.notes;
    if body_edits.is_empty() {
        return unchanged(notes);
    }
    let all = header_edits.iter().cloned().chain(body_edits).collect();
    match apply(raw, all) {
        Ok(message) => Prepared {
            message,
            links_tracked: walk.links,
            pixels_inserted: walk.pixels,
            unchanged_parts: notes,
            list_unsubscribe,
        },
        Err(e) => {
            notes.push(format!("{e}; message left unchanged"));
            unchanged(notes)
        }
    }
}

/// `None` when this message gets no tracking at all.
fn tracker<'k>(
    opts: &TrackingOptions,
    keys: &'k TokenKeys,
    control: &ControlHeaders,
) -> Result<Option<html::Tracker<'k>>, String> {
    let Some(host) = opts.tracking_host.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let opens = control.track_opens.unwrap_or(opts.open_tracking);
    let clicks = control.track_clicks.unwrap_or(opts.click_tracking);
    if !opens && !clicks {
        return Ok(None);
    }
    let base = base_url(opts.scheme, host)?;
    let prefix = format!("{}v1/track/", base.as_str());
    let own_hosts = links::OwnHosts::new(
        std::iter::once(host).chain(opts.other_tracking_hosts.iter().map(String::as_str)),
    );
    Ok(Some(html::Tracker {
        keys,
        email_id: opts.email_id,
        rcpt_index: opts.rcpt_index,
        click_prefix: clicks.then(|| format!("{prefix}click/")),
        pixel: opens.then(|| {
            html::pixel_tag(&format!(
                "{prefix}open/{}",
                keys.open_token(opts.email_id, opts.rcpt_index)
            ))
        }),
        own_hosts,
    }))
}

/// `{scheme}://{host}/`, the root of every URL on the tracking host.
fn base_url(scheme: &str, host: &str) -> Result<url::Url, String> {
    let scheme = scheme.trim().to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(format!(
            "tracking scheme {scheme:?} is neither https nor http; tracking off"
        ));
    }
    // Through the URL parser so that an IDN host is written as ASCII and a
    // path or credentials smuggled into the host are refused.
    let host = host.trim();
    url::Url::parse(&format!("{scheme}://{host}/"))
        .ok()
        .filter(|u| {
            !host.is_empty() && u.path() == "/" && u.query().is_none() && u.username().is_empty()
        })
        .ok_or_else(|| format!("tracking host {host:?} is not a host name; tracking off"))
}

/// A bug must cost tracking, never the email: a panic while rewriting
/// leaves the message as it came. Fuzzing builds let panics through so the
/// fuzzer sees them.
#[allow(unexpected_cfgs)] // `fuzzing` is set by cargo-fuzz
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    #[cfg(fuzzing)]
    {
        Ok(f())
    }
    #[cfg(not(fuzzing))]
    {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "prepare panicked; message sent without tracking");
            format!("internal error (panic: {what}) while rewriting; message left unchanged")
        })
    }
}
