//! The operator's read-side commands: queue, events, stats, export. Each
//! opens the store named by the config, beside a running server if any.

use crate::config::Config;
use crate::events::StoredEvent;
use crate::store::queries::{EventFilter, EVENT_FIELDS};
use crate::store::{self, Store, StoreError};
use crate::text::printable;
use std::io::Write;
use std::ops::ControlFlow;

mod queue;
pub mod reports;
pub mod store_admin;
pub mod suppressions;
pub mod tls_reports;
mod webhooks;

pub use queue::{queue_delete, queue_list, queue_retry};
pub use webhooks::{webhooks_list, webhooks_replay};

pub type CliResult = Result<(), String>;

/// A small runtime for the synchronous commands to call the store from.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

/// The store for a read command, opened read-only (on SQLite: no writer,
/// no migration, no database created), and a runtime to ask it.
pub(crate) fn open_store(config: &Config) -> Result<(tokio::runtime::Runtime, Store), String> {
    let rt = runtime()?;
    let store = rt
        .block_on(Store::open_read_only(config))
        .map_err(|e| format!("store: {e}"))?;
    Ok((rt, store))
}

/// The store for a command that writes (it must exist: only `serve`
/// creates one), and a runtime to ask it.
pub(crate) fn open_store_rw(config: &Config) -> Result<(tokio::runtime::Runtime, Store), String> {
    let rt = runtime()?;
    let store = rt
        .block_on(Store::open_existing(config))
        .map_err(|e| format!("store: {e}"))?;
    Ok((rt, store))
}

/// Stdout, buffered, for output written from the store's callbacks (which
/// must be `Send`, as a locked stdout is not).
fn stream_out() -> std::io::BufWriter<std::io::Stdout> {
    std::io::BufWriter::new(std::io::stdout())
}

pub(crate) fn out() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::new(std::io::stdout().lock())
}

pub(crate) fn time_arg(name: &str, v: &Option<String>) -> Result<Option<i64>, String> {
    match v {
        None => Ok(None),
        Some(s) => store::parse_time(s).map(Some).ok_or_else(|| {
            format!("--{name}: {s:?} is not a time (RFC 3339 like 2026-11-22T06:00:00Z, a date, or a duration back like 24h)")
        }),
    }
}

pub struct EventsArgs {
    pub email: Option<String>,
    pub kind: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: usize,
    pub json: bool,
}

pub fn events(config: &Config, a: &EventsArgs) -> CliResult {
    let kind = match &a.kind {
        Some(t) => Some(
            crate::events::EventType::parse(t)
                .ok_or_else(|| format!("--type: {t:?} is not an event type"))?
                .as_str()
                .to_string(),
        ),
        None => None,
    };
    let filter = EventFilter {
        email_id: a.email.clone(),
        kind,
        since: time_arg("since", &a.since)?,
        until: time_arg("until", &a.until)?,
        after_id: None,
        limit: a.limit,
    };
    let (rt, store) = open_store(config)?;
    let mut w = stream_out();
    let json = a.json;
    let done = streamed(
        |on| rt.block_on(store.each_event(&filter, on)),
        |e| {
            if json {
                writeln!(w, "{}", e.to_json()).map_err(Stop::Io)
            } else {
                writeln!(w, "{}", human_event(&e)).map_err(Stop::Io)
            }
        },
    );
    finish(done, w)
}

/// Runs a streaming read, `each` handing every row to `row`; the first
/// error, of the store or of `row`, ends it.
fn streamed<T>(
    each: impl FnOnce(store::queries::Each<'_, T>) -> store::Result<()>,
    mut row: impl FnMut(T) -> Result<(), Stop> + Send,
) -> Result<(), Stop> {
    let mut stopped = None;
    let read = each(&mut |v| match row(v) {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => {
            stopped = Some(e);
            ControlFlow::Break(())
        }
    });
    match (stopped, read) {
        (Some(e), _) => Err(e),
        (None, r) => r.map_err(Stop::Store),
    }
}

/// Why streaming output stopped: the store, or stdout (a closed pipe, as
/// with `| head`, is a normal end).
pub(crate) enum Stop {
    Store(StoreError),
    Io(std::io::Error),
}

impl From<csv::Error> for Stop {
    fn from(e: csv::Error) -> Self {
        match e.into_kind() {
            csv::ErrorKind::Io(e) => Stop::Io(e),
            other => Stop::Io(std::io::Error::other(format!("{other:?}"))),
        }
    }
}

pub(crate) fn finish(done: Result<(), Stop>, mut w: impl Write) -> CliResult {
    let flushed = done.and_then(|()| w.flush().map_err(Stop::Io));
    match flushed {
        Ok(()) => Ok(()),
        Err(Stop::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(Stop::Io(e)) => Err(format!("writing the output: {e}")),
        Err(Stop::Store(e)) => Err(format!("reading the store: {e}")),
    }
}

fn human_event(e: &StoredEvent) -> String {
    let mut s = format!(
        "{}  {:<22}  {}  {}",
        store::rfc3339(e.at),
        e.kind,
        e.email_id,
        printable(e.recipient.as_deref().unwrap_or("-"))
    );
    if let Some(link) = &e.link {
        s.push_str(&format!("  {}", printable(link)));
    }
    if e.machine == Some(true) {
        s.push_str(&format!(
            "  [machine: {}]",
            e.machine_reason.as_deref().unwrap_or("?")
        ));
    }
    if let Some(r) = e
        .detail
        .as_ref()
        .and_then(|d| d.get("response"))
        .and_then(|r| r.as_str())
    {
        s.push_str(&format!("  {}", printable(r)));
    }
    s
}

pub fn stats(
    config: &Config,
    domain: Option<&str>,
    since: &Option<String>,
    until: &Option<String>,
    json: bool,
) -> CliResult {
    let (since, until) = (time_arg("since", since)?, time_arg("until", until)?);
    let (rt, store) = open_store(config)?;
    let st = rt
        .block_on(store.stats(domain, since, until))
        .map_err(|e| e.to_string())?;
    let v = st.to_json();
    if json {
        println!("{v}");
    } else if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            println!("{k:<18} {val}");
        }
    }
    // Per sending domain: the providers judge each domain on its own.
    let names: Vec<String> = match domain {
        Some(d) => vec![d.to_string()],
        None => config.domains.iter().map(|d| d.name.clone()).collect(),
    };
    for name in names {
        let st = rt
            .block_on(store.stats(Some(&name), since, until))
            .map_err(|e| e.to_string())?;
        if let Some(w) = store::queries::complaint_warning(&name, &st) {
            eprintln!("{w}");
        }
    }
    Ok(())
}

/// A cell as a spreadsheet may safely open it: one that begins with `=`,
/// `+`, `-`, `@`, a tab or a CR would be read as a formula (User-Agent,
/// Referer, subject, tags and remote replies are attacker-controlled), so
/// it gets a leading `'`, as OWASP recommends for CSV injection.
pub fn csv_cell(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(FORMULA_STARTS) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

/// First characters a spreadsheet reads as the start of a formula.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Undoes `csv_cell` on import: a leading `'` before a formula character.
pub fn csv_uncell(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_STARTS) => rest,
        _ => cell,
    }
}

fn csv_writer(w: impl Write) -> csv::Writer<impl Write> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(w)
}

fn csv_row<W: Write>(w: &mut csv::Writer<W>, fields: &[&str]) -> Result<(), Stop> {
    w.write_record(fields.iter().map(|f| csv_cell(f).into_owned()))?;
    Ok(())
}

const EMAIL_CSV_FIELDS: [&str; 14] = [
    "email_id",
    "created_at",
    "domain",
    "from",
    "subject",
    "tags",
    "recipient",
    "status",
    "attempts",
    "delivered_at",
    "bounced_at",
    "opened_at",
    "clicked_at",
    "last_response",
];

/// `export emails|events --csv`: one row per recipient / event, written as
/// it is read.
pub fn export(
    config: &Config,
    what: &str,
    since: &Option<String>,
    until: &Option<String>,
) -> CliResult {
    let (since, until) = (time_arg("since", since)?, time_arg("until", until)?);
    let (rt, store) = open_store(config)?;
    let mut w = csv_writer(stream_out());
    let t = |v: Option<i64>| v.map(store::rfc3339).unwrap_or_default();
    let done = match what {
        "emails" => csv_row(&mut w, &EMAIL_CSV_FIELDS).and_then(|()| {
            streamed(
                |on| rt.block_on(store.each_email(since, until, on)),
                |e| {
                    let created = store::rfc3339(e.created_at);
                    let from = e.header_from.as_deref().unwrap_or(&e.mail_from);
                    let tags = e.tags.join(" ");
                    for r in &e.recipients {
                        let attempts = r.attempts.to_string();
                        let times =
                            [r.delivered_at, r.bounced_at, r.opened_at, r.clicked_at].map(t);
                        csv_row(
                            &mut w,
                            &[
                                &e.id,
                                &created,
                                &e.domain,
                                from,
                                e.subject.as_deref().unwrap_or_default(),
                                &tags,
                                &r.address,
                                &r.status,
                                &attempts,
                                &times[0],
                                &times[1],
                                &times[2],
                                &times[3],
                                r.last_response.as_deref().unwrap_or_default(),
                            ],
                        )?;
                    }
                    Ok(())
                },
            )
        }),
        "events" => csv_row(&mut w, &EVENT_FIELDS).and_then(|()| {
            let filter = EventFilter {
                since,
                until,
                ..EventFilter::default()
            };
            streamed(
                |on| rt.block_on(store.each_event(&filter, on)),
                |e| {
                    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
                    let cells: [String; 11] = [
                        e.id.to_string(),
                        e.email_id.clone(),
                        e.kind.clone(),
                        opt(&e.recipient),
                        store::rfc3339(e.at),
                        opt(&e.ip),
                        opt(&e.user_agent),
                        opt(&e.referer),
                        opt(&e.link),
                        e.machine.map(|m| m.to_string()).unwrap_or_default(),
                        opt(&e.machine_reason),
                    ];
                    csv_row(&mut w, &cells.each_ref().map(String::as_str))
                },
            )
        }),
        other => return Err(format!("export: {other:?} is not emails or events")),
    };
    let done = done.and_then(|()| w.flush().map_err(Stop::Io));
    finish(done, std::io::sink())
}

/// `dkim-keygen`: writes the key and prints the record name and value.
pub fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: &str,
    out_path: &std::path::Path,
) -> CliResult {
    let alg = match algorithm.to_ascii_lowercase().as_str() {
        "rsa" => crate::outbound::DkimAlgorithm::Rsa,
        "ed25519" => crate::outbound::DkimAlgorithm::Ed25519,
        other => return Err(format!("--algorithm: {other:?} is not rsa or ed25519")),
    };
    let key = crate::outbound::generate_key(domain, selector, alg, out_path)?;
    println!("{}", key.dns_name());
    println!("{}", key.dns_record());
    eprintln!(
        "wrote {} (mode 0600); publish a TXT record named {} with the value above",
        out_path.display(),
        key.dns_name()
    );
    Ok(())
}

/// The tracking host `serve` would put into new links for `domain`: the
/// choice stored by its domain checks (src/domains/tracking.rs), so a
/// changed `tracking_subdomain` shows the previous host until the new one
/// is verified. Without a store, nothing has been chosen yet: the
/// configured host.
fn preview_tracking_host(config: &Config, domain: &crate::config::DomainConfig) -> Option<String> {
    let configured = crate::domains::monitor::configured_host(domain);
    if configured.is_none() || !tls_reports::store_exists(config) {
        return configured;
    }
    let row = tls_reports::with_store(config, async |s| {
        s.domain_status(&domain.name)
            .await
            .map_err(|e| e.to_string())
    });
    let row = match row {
        Ok(row) => row,
        // A preview is still worth having; stderr says which host it used.
        Err(e) => {
            eprintln!(
                "tracking host: {} (the configured one: reading the one in use failed: {e})",
                configured.as_deref().unwrap_or_default()
            );
            return configured;
        }
    };
    let choice = crate::domains::tracking::choose(
        configured.as_deref(),
        &crate::domains::monitor::previous_hosts(domain),
        row.as_ref().and_then(|r| r.tracking_host.as_deref()),
        None,
    );
    if let Some(host) = &choice.host {
        eprintln!("tracking host: {host} ({})", choice.reason);
    }
    choice.host
}

/// `preview`: the message as it would be delivered to one recipient.
pub fn preview(config: &Config, rcpt: Option<&str>, sign: bool) -> CliResult {
    use std::io::Read;
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the message on stdin: {e}"))?;
    let end = crate::submission::policy::header_block_len(&raw);
    let from_domain = mail_parser::MessageParser::new()
        .parse_headers(&raw[..end])
        .and_then(|m| {
            m.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        })
        .ok_or("the message has no From: address, so no sending domain")?;
    let domain = config.domain(&from_domain).ok_or_else(|| {
        format!("{from_domain} (the From: domain) is not a configured [[domains]] entry")
    })?;
    let keys = crate::prepare::TokenKeys::load_or_create(
        &config.tracking_secret_path(),
        &config.tracking.previous_secret_files,
    )
    .map_err(|e| format!("tracking.secret_file: {e}"))?;
    let email_id = uuid::Uuid::now_v7();
    let tracking_host = preview_tracking_host(config, domain);
    let previous = domain.previous_tracking_hosts();
    // As the runner adds them (src/outbound/runner.rs, copy_for).
    let token = crate::feedback::return_path::encode(&keys, email_id, 0);
    let return_path_domain = domain
        .return_path
        .as_ref()
        .map(|rp| format!("{rp}.{from_domain}"));
    let feedback = (tracking_host.is_some() || return_path_domain.is_some()).then(|| {
        crate::prepare::Feedback {
            token: &token,
            return_path_domain: return_path_domain.as_deref(),
            list_unsubscribe: domain.list_unsubscribe,
        }
    });
    let opts = crate::prepare::TrackingOptions {
        email_id,
        rcpt_index: 0,
        scheme: &config.tracking.scheme,
        tracking_host: tracking_host.as_deref(),
        other_tracking_hosts: &previous,
        open_tracking: domain.open_tracking,
        click_tracking: domain.click_tracking,
        feedback,
    };
    let prepared = crate::prepare::prepare(&raw, &opts, &keys);
    // Line ends as the runner sends them (CRLF only), before signing.
    let mut message = crate::outbound::protocol::normalize_line_ends(&prepared.message);
    if sign {
        let mut all = crate::outbound::keys::domain_keys(config, false)
            .map_err(|e| format!("{e}; or use --no-sign"))?;
        let dkim = all.remove(&from_domain).unwrap_or_default();
        if !dkim.is_empty() {
            let mut signed = crate::outbound::sign(&message, &dkim)?;
            signed.extend_from_slice(&message);
            message = signed;
        }
    }
    eprintln!("email_id: {email_id}");
    if let Some(r) = rcpt {
        eprintln!("recipient: {r} (index 0)");
    }
    eprintln!(
        "links tracked: {}, pixels inserted: {}",
        prepared.links_tracked, prepared.pixels_inserted
    );
    for why in prepared.unchanged_parts {
        eprintln!("left unchanged: {why}");
    }
    std::io::stdout()
        .write_all(&message)
        .map_err(|e| format!("writing the message: {e}"))
}
