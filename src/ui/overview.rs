//! The overview: counts, rates and charts over a window, per domain or
//! all, read from the hourly rollups only (`QueryStore::series`).
//! Charts are SVG drawn here: no script, and the numbers are in the page
//! (each line's `data-values`, and a table) for readers and tests.

use super::html::{esc, pct, q, time};
use super::{Page, PageError, Req};
use crate::api::reply::Reply;
use crate::store::queries::{hour_of, Stats, HOUR_MS};
use std::fmt::Write;

const DAY: i64 = 24 * HOUR_MS;
/// Most buckets a custom window is cut into.
const MAX_BUCKETS: i64 = 60;

/// The window shown: whole hours `[from, to)` in buckets of `bucket` ms.
struct Window {
    key: &'static str,
    from: i64,
    to: i64,
    bucket: i64,
}

fn window(range: &str, since: &str, until: &str, now: i64) -> Result<Window, PageError> {
    let to = hour_of(now) + HOUR_MS;
    let preset = |key, span, bucket| Window {
        key,
        from: to - span,
        to,
        bucket,
    };
    Ok(match range {
        "" | "24h" => preset("24h", DAY, HOUR_MS),
        "7d" => preset("7d", 7 * DAY, 6 * HOUR_MS),
        "30d" => preset("30d", 30 * DAY, DAY),
        "custom" => {
            let parse = |s: &str, name: &str| {
                crate::time::parse_time(s).ok_or_else(|| {
                    PageError::BadRequest(format!(
                        "{name}: {s:?} is not a date (2026-11-24), a time (RFC 3339) or a duration back (36h)"
                    ))
                })
            };
            let from = hour_of(parse(since, "From")?);
            let until = if until.trim().is_empty() {
                now
            } else {
                parse(until, "To")?
            };
            let to = hour_of(until + HOUR_MS - 1);
            if to <= from {
                return Err(PageError::BadRequest(
                    "The window ends before it starts.".into(),
                ));
            }
            let hours = (to - from) / HOUR_MS;
            let per = (hours + MAX_BUCKETS - 1) / MAX_BUCKETS;
            Window {
                key: "custom",
                from,
                to,
                bucket: per.max(1) * HOUR_MS,
            }
        }
        other => {
            return Err(PageError::BadRequest(format!(
                "Unknown range {other:?}: 24h, 7d, 30d or custom."
            )))
        }
    })
}

/// A chart line: its label, CSS class, and how to read it from a bucket.
type Line = (&'static str, &'static str, fn(&Stats) -> i64);

const DELIVERY: [Line; 5] = [
    ("Sent", "sent", |s| s.sent),
    ("Delivered", "delivered", |s| s.delivered),
    ("Delayed", "delayed", |s| s.delayed),
    ("Bounced", "bounced", |s| s.bounced),
    ("Complained", "complained", |s| s.complained),
];
const ENGAGEMENT: [Line; 4] = [
    ("Opened (people)", "opened_human", |s| s.opened_human),
    ("Opened (machines)", "opened_machine", |s| s.opened_machine),
    ("Clicked (people)", "clicked_human", |s| s.clicked_human),
    ("Clicked (machines)", "clicked_machine", |s| {
        s.clicked_machine
    }),
];

pub async fn page(p: &Page<'_>, req: &Req<'_>) -> Result<Reply, PageError> {
    let f = req.query_fields();
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let w = window(
        get("range"),
        get("since"),
        get("until"),
        crate::store::now_ms(),
    )?;
    let domain = Some(get("domain").trim().to_ascii_lowercase()).filter(|d| !d.is_empty());
    let series = p
        .answer(
            "the rollups",
            p.store().series(domain.as_deref(), w.from, w.to, w.bucket),
        )
        .await?;
    let domains = &p.ui.domains;
    let mut t = Stats::default();
    for (_, s) in &series {
        t.sent += s.sent;
        t.delivered += s.delivered;
        t.delayed += s.delayed;
        t.bounced += s.bounced;
        t.complained += s.complained;
        t.opened += s.opened;
        t.opened_human += s.opened_human;
        t.opened_machine += s.opened_machine;
        t.clicked += s.clicked;
        t.clicked_human += s.clicked_human;
        t.clicked_machine += s.clicked_machine;
    }

    let mut b = String::new();
    filters(
        &mut b,
        &w,
        domain.as_deref(),
        domains,
        get("since"),
        get("until"),
    );
    let _ = write!(
        b,
        "<p class=\"window\">Emails accepted from {} to {} UTC{}.</p>",
        time(w.from),
        time(w.to),
        match &domain {
            Some(d) => format!(", sent from {}", esc(d)),
            None => String::new(),
        }
    );
    b.push_str("<section class=\"cards\" aria-label=\"Totals\">");
    let card = |b: &mut String, label: &str, key: &str, n: i64, note: String| {
        let _ = write!(
            b,
            "<div class=\"card\"><span class=\"label\">{label}</span>\
             <span class=\"num\" data-k=\"{key}\">{n}</span><span class=\"note\">{note}</span></div>"
        );
    };
    card(&mut b, "Sent", "sent", t.sent, String::new());
    card(
        &mut b,
        "Delivered",
        "delivered",
        t.delivered,
        format!("{} of sent", pct(t.delivered, t.sent)),
    );
    card(
        &mut b,
        "Delayed",
        "delayed",
        t.delayed,
        "at least once".into(),
    );
    card(
        &mut b,
        "Bounced",
        "bounced",
        t.bounced,
        format!("{} of sent", pct(t.bounced, t.sent)),
    );
    card(
        &mut b,
        "Complained",
        "complained",
        t.complained,
        format!("{} of delivered", pct(t.complained, t.delivered)),
    );
    card(
        &mut b,
        "Opened by people",
        "opened_human",
        t.opened_human,
        format!(
            "{} of delivered; {} by machines",
            pct(t.opened_human, t.delivered),
            t.opened_machine
        ),
    );
    card(
        &mut b,
        "Clicked by people",
        "clicked_human",
        t.clicked_human,
        format!(
            "{} of delivered; {} by machines",
            pct(t.clicked_human, t.delivered),
            t.clicked_machine
        ),
    );
    b.push_str("</section>");
    chart(&mut b, "Delivery", "chart-delivery", &series, &DELIVERY);
    chart(
        &mut b,
        "Opens and clicks",
        "chart-engagement",
        &series,
        &ENGAGEMENT,
    );
    table(&mut b, &series);
    Ok(p.render("Overview", "/", &b))
}

fn filters(
    b: &mut String,
    w: &Window,
    domain: Option<&str>,
    domains: &[String],
    since: &str,
    until: &str,
) {
    b.push_str(
        "<form method=\"get\" action=\"/\" class=\"filters\"><fieldset><legend>Window</legend>",
    );
    for (key, label) in [
        ("24h", "24 hours"),
        ("7d", "7 days"),
        ("30d", "30 days"),
        ("custom", "From–to"),
    ] {
        let checked = if key == w.key { " checked" } else { "" };
        let _ = write!(
            b,
            "<label><input type=\"radio\" name=\"range\" value=\"{key}\"{checked}> {label}</label>"
        );
    }
    let _ = write!(
        b,
        "<label>From <input name=\"since\" type=\"date\" value=\"{}\"></label>\
         <label>To <input name=\"until\" type=\"date\" value=\"{}\"></label></fieldset>\
         <label>Domain <select name=\"domain\"><option value=\"\">All domains</option>",
        esc(since),
        esc(until)
    );
    for d in domains {
        let sel = if Some(d.as_str()) == domain {
            " selected"
        } else {
            ""
        };
        let _ = write!(b, "<option value=\"{}\"{sel}>{}</option>", esc(d), esc(d));
    }
    b.push_str("</select></label><button type=\"submit\">Show</button></form>");
    // Quick links, for a keyboard user as much as for a mouse.
    let dq = domain
        .map(|d| format!("&amp;domain={}", q(d)))
        .unwrap_or_default();
    let _ = write!(
        b,
        "<p class=\"quick\"><a href=\"/?range=24h{dq}\">24 h</a> · <a href=\"/?range=7d{dq}\">7 d</a> · \
         <a href=\"/?range=30d{dq}\">30 d</a></p>"
    );
}

const W: f64 = 720.0;
const H: f64 = 220.0;
const PAD_L: f64 = 40.0;
const PAD_B: f64 = 24.0;

/// One SVG line chart. Each line keeps its numbers in `data-values`.
fn chart(b: &mut String, title: &str, id: &str, series: &[(i64, Stats)], lines: &[Line]) {
    let max = series
        .iter()
        .flat_map(|(_, s)| lines.iter().map(move |(_, _, f)| f(s)))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = series.len().max(2) as f64;
    let x = |i: usize| PAD_L + (W - PAD_L - 8.0) * i as f64 / (n - 1.0);
    let y = |v: i64| 8.0 + (H - PAD_B - 8.0) * (1.0 - v as f64 / max as f64);
    let _ = write!(
        b,
        "<figure class=\"chart\"><figcaption>{title}</figcaption>\
         <svg id=\"{id}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title} per period; the numbers are in the table below\" data-max=\"{max}\">"
    );
    // Axis: zero and the maximum, and the first and last period.
    let _ = write!(
        b,
        "<line class=\"axis\" x1=\"{PAD_L}\" y1=\"{y0}\" x2=\"{W}\" y2=\"{y0}\"/>\
         <text class=\"tick\" x=\"{tx}\" y=\"{ty0}\" text-anchor=\"end\">0</text>\
         <text class=\"tick\" x=\"{tx}\" y=\"16\" text-anchor=\"end\">{max}</text>",
        y0 = y(0),
        tx = PAD_L - 6.0,
        ty0 = y(0) + 4.0,
    );
    if let (Some(first), Some(last)) = (series.first(), series.last()) {
        let _ = write!(
            b,
            "<text class=\"tick\" x=\"{PAD_L}\" y=\"{H}\">{}</text>\
             <text class=\"tick\" x=\"{W}\" y=\"{H}\" text-anchor=\"end\">{}</text>",
            &time(first.0)[5..16],
            &time(last.0)[5..16]
        );
    }
    for (label, key, f) in lines {
        let values: Vec<i64> = series.iter().map(|(_, s)| f(s)).collect();
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let csv: Vec<String> = values.iter().map(i64::to_string).collect();
        let _ = write!(
            b,
            "<polyline class=\"line s-{key}\" data-series=\"{key}\" data-values=\"{}\" points=\"{}\"><title>{label}</title></polyline>",
            csv.join(","),
            points.join(" ")
        );
        for (i, v) in values.iter().enumerate() {
            if *v > 0 {
                let _ = write!(
                    b,
                    "<circle class=\"dot s-{key}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>{label}: {v} ({} UTC)</title></circle>",
                    x(i),
                    y(*v),
                    time(series[i].0)
                );
            }
        }
    }
    b.push_str("</svg><ul class=\"legend\">");
    for (label, key, _) in lines {
        let _ = write!(b, "<li><span class=\"swatch s-{key}\"></span>{label}</li>");
    }
    b.push_str("</ul></figure>");
}

/// The charts' numbers, for screen readers and for copying.
fn table(b: &mut String, series: &[(i64, Stats)]) {
    b.push_str(
        "<details class=\"data\"><summary>Numbers per period</summary><div class=\"scroll\"><table>\
         <thead><tr><th scope=\"col\">Period (UTC)</th><th scope=\"col\">Sent</th><th scope=\"col\">Delivered</th>\
         <th scope=\"col\">Delayed</th><th scope=\"col\">Bounced</th><th scope=\"col\">Complained</th>\
         <th scope=\"col\">Opened (people / machines)</th><th scope=\"col\">Clicked (people / machines)</th></tr></thead><tbody>",
    );
    for (at, s) in series.iter().filter(|(_, s)| *s != Stats::default()) {
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} / {}</td></tr>",
            time(*at),
            s.sent,
            s.delivered,
            s.delayed,
            s.bounced,
            s.complained,
            s.opened_human,
            s.opened_machine,
            s.clicked_human,
            s.clicked_machine
        );
    }
    b.push_str("</tbody></table></div></details>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_whole_hours_ending_after_now() {
        let now = 100 * HOUR_MS + 5;
        let w = window("24h", "", "", now).unwrap();
        assert_eq!(
            (w.from, w.to, w.bucket),
            (77 * HOUR_MS, 101 * HOUR_MS, HOUR_MS)
        );
        let w = window("30d", "", "", now).unwrap();
        assert_eq!((w.to - w.from) / w.bucket, 30);
        let w = window("custom", "1970-01-01", "1970-01-31", now).unwrap();
        assert!((w.to - w.from) / w.bucket <= MAX_BUCKETS);
        assert!(window("custom", "nonsense", "", now).is_err());
        assert!(window("1y", "", "", now).is_err());
    }

    #[test]
    fn a_chart_carries_its_numbers() {
        let s = Stats {
            sent: 3,
            ..Stats::default()
        };
        let series = vec![(0, Stats::default()), (HOUR_MS, s)];
        let mut b = String::new();
        chart(&mut b, "T", "c", &series, &DELIVERY);
        assert!(
            b.contains("data-series=\"sent\" data-values=\"0,3\""),
            "{b}"
        );
        assert!(b.contains("data-max=\"3\""));
    }
}
