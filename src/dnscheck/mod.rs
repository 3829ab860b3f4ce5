//! `trackrelay dns-check`: for each configured domain, the DNS records it
//! needs, what is expected, what is published, and a status.
//!
//! Statuses, as hosted providers name them:
//! - `verified`: found and matches.
//! - `pending`: not found yet. Publish it; DNS may still be propagating.
//! - `failed`: a record exists but is wrong (the note says why). A lookup
//!   that could not be answered (timeout, SERVFAIL) is also `failed`, with
//!   the error in the note: it is not known to be right.
//! - `not_started`: nothing to check yet (the note says why), e.g. a managed
//!   DKIM key that the first `serve` has not generated.
//!
//! Records: one DKIM TXT per `dkim` entry (the `p=` must be our key's), SPF
//! at the domain (evaluated for the relay's addresses, see [`spf`]), DMARC
//! (recommended, not required), the return-path MX and SPF when
//! `return_path` is set, and the tracking host when `tracking_subdomain` is
//! set. SPF at the bare domain is required only without `return_path`: with
//! one, every envelope sender is under `{return_path}.{domain}` and that is
//! where receivers check SPF. With `[acme] enabled`, each tracking host
//! (current and previous) also gets a CAA row and a certificate row (not
//! required; see [`acme`]).
//!
//! [`check`] is the core (no output), [`run`] the command.

mod acme;
mod dnssec;
mod lookup;
mod records;
pub mod spf;

use crate::text::printable;
use std::fmt;
use std::io::Write;

use mail_auth::MessageAuthenticator;
use serde::Serialize;

use crate::config::{Config, DomainConfig};
use lookup::{normalise, Dns};
use spf::Relay;

/// One line of clap `about` for the subcommand.
pub const ABOUT: &str =
    "Check the DNS records each domain needs: DKIM, SPF, DMARC, return path, tracking host";

/// For clap `after_help`: what the statuses and the exit status mean.
pub const HELP: &str = "\
Statuses:
  verified      found and matches
  pending       not found yet: publish it (DNS may still be propagating)
  failed        a record exists but is wrong, or the lookup failed (the note says why)
  not_started   nothing to check yet (the note says why), e.g. a DKIM key not generated

Each domain also gets the status `serve` would record from this check
(not_started, pending, verified, failed, temporary_failure,
partially_verified, partially_failed), starting from the status stored by
`serve`'s background checks when there is a store: `domain_status` on every
JSON line, a last line in the table.

Exits 1 when any required record is not verified. DMARC is recommended, not
required. Lookups use [delivery] resolver when set, else the system resolver.

A last line says whether DNSSEC validates through that resolver, which DANE
needs (delivery.dane); with --json it goes to stderr. It does not change the
exit status.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    NotStarted,
    Pending,
    Verified,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NotStarted => "not_started",
            Status::Pending => "pending",
            Status::Verified => "verified",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Dkim,
    Spf,
    ReturnPathMx,
    ReturnPathSpf,
    Dmarc,
    Tracking,
    /// ACME: whether CAA lets the CA issue for a tracking host.
    Caa,
    /// ACME: the tracking host's certificate, issued or why not.
    Certificate,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Dkim => "dkim",
            RecordKind::Spf => "spf",
            RecordKind::ReturnPathMx => "return_path_mx",
            RecordKind::ReturnPathSpf => "return_path_spf",
            RecordKind::Dmarc => "dmarc",
            RecordKind::Tracking => "tracking",
            RecordKind::Caa => "caa",
            RecordKind::Certificate => "certificate",
        }
    }

    fn label(self) -> &'static str {
        match self {
            RecordKind::Dkim => "DKIM",
            RecordKind::Spf => "SPF",
            RecordKind::ReturnPathMx => "Return-Path MX",
            RecordKind::ReturnPathSpf => "Return-Path SPF",
            RecordKind::Dmarc => "DMARC",
            RecordKind::Tracking => "Tracking",
            RecordKind::Caa => "CAA",
            RecordKind::Certificate => "Certificate",
        }
    }
}

/// One record: what should be published, what is, and the verdict. With
/// `--json`, serialised as one object per line with exactly these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordCheck {
    pub domain: String,
    pub record: RecordKind,
    /// The DNS name to publish at (empty when there is none yet).
    pub name: String,
    /// "TXT", "MX" or "CNAME".
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub expected: String,
    /// The relevant records published there, as found.
    pub found: Vec<String>,
    pub status: Status,
    /// Whether dns-check's exit status depends on this record.
    pub required: bool,
    pub note: Option<String>,
}

pub use crate::dns::resolver;

/// Checks every record `domain` needs, in a fixed order: DKIM, SPF,
/// return path, DMARC, tracking. Never fails: problems are statuses.
pub async fn check(
    config: &Config,
    resolver: &MessageAuthenticator,
    domain: &DomainConfig,
) -> Vec<RecordCheck> {
    let mut dns = Dns::new(resolver);
    let relay = relay_of(&mut dns, config).await;
    let name = normalise(&domain.name);
    let mut out = Vec::new();

    for entry in &domain.dkim {
        out.push(records::dkim(&mut dns, config, domain, entry).await);
    }
    if domain.dkim.is_empty() {
        out.push(RecordCheck {
            domain: name.clone(),
            record: RecordKind::Dkim,
            name: String::new(),
            record_type: "TXT",
            expected: String::new(),
            found: Vec::new(),
            status: Status::NotStarted,
            required: true,
            note: Some(
                "no dkim entry for this domain, so its mail is sent unsigned; add \
                 dkim = [{ selector = \"s1\" }] and trackrelay generates the key"
                    .into(),
            ),
        });
    }

    let spf_row = |record, at: &str, required, r: spf::SpfResult| RecordCheck {
        domain: name.clone(),
        record,
        name: at.to_string(),
        record_type: "TXT",
        expected: r.expected,
        found: r.found,
        status: r.status,
        required,
        note: r.note,
    };
    let root = spf::check(&mut dns, &relay, &name).await;
    let mut root = spf_row(RecordKind::Spf, &name, domain.return_path.is_none(), root);
    if let Some(rp) = &domain.return_path {
        let rp_domain = format!("{}.{name}", normalise(rp));
        let why = format!("not required: receivers check SPF at {rp_domain}, the return path");
        root.note = Some(match root.note.take() {
            Some(note) => format!("{note}; {why}"),
            None => why,
        });
        out.push(root);
        let mut mx = records::return_path_mx(&mut dns, &relay, domain, &rp_domain).await;
        if config.inbound.listen.is_empty() {
            // The record can be right while nothing answers at it.
            let why = "but [inbound] listen is not set: nothing here takes the bounces and \
                       complaints it brings (set listen = [\"0.0.0.0:25\"])";
            mx.note = Some(match mx.note.take() {
                Some(note) if !note.is_empty() => format!("{note}; {why}"),
                _ => why.to_string(),
            });
        }
        out.push(mx);
        let rp_spf = spf::check(&mut dns, &relay, &rp_domain).await;
        out.push(spf_row(RecordKind::ReturnPathSpf, &rp_domain, true, rp_spf));
    } else {
        out.push(root);
    }

    out.push(records::dmarc(&mut dns, domain).await);
    out.extend(records::tracking(&mut dns, &relay, domain).await);
    out.extend(acme::rows(&mut dns, &relay, config, domain).await);
    out
}

pub use acme::issuable;

/// This relay as the DNS sees it: its hostname and that name's addresses.
async fn relay_of(dns: &mut Dns<'_>, config: &Config) -> Relay {
    let hostname = normalise(&config.server.hostname);
    let (addrs, addr_error) = match dns.addrs(&hostname).await {
        Ok(a) => (a, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Relay {
        hostname,
        addrs,
        addr_error,
    }
}

/// Whether every required record is verified (dns-check's exit status).
pub fn all_required_verified(checks: &[RecordCheck]) -> bool {
    checks
        .iter()
        .all(|c| !c.required || c.status == Status::Verified)
}

/// One JSON object per record, one per line.
pub fn render_json(checks: &[RecordCheck]) -> String {
    checks
        .iter()
        .filter_map(|c| serde_json::to_string(c).ok())
        .map(|line| line + "\n")
        .collect()
}

/// [`render_json`] with the domain's status on every line, as
/// `domain_status`.
pub fn render_json_with_status(
    checks: &[RecordCheck],
    status: crate::domains::DomainStatus,
) -> String {
    checks
        .iter()
        .filter_map(|c| {
            let mut v = serde_json::to_value(c).ok()?;
            v.as_object_mut()?
                .insert("domain_status".into(), status.as_str().into());
            serde_json::to_string(&v).ok()
        })
        .map(|line| line + "\n")
        .collect()
}

/// What `serve` stored, when there is a store to read (none, or one from
/// before domain statuses: every domain starts from not_started).
async fn stored_statuses(config: &Config) -> Vec<crate::store::domains::DomainRow> {
    let Ok(Some(store)) = crate::cli::tls_reports::open_existing(config).await else {
        return Vec::new();
    };
    let rows = store.domain_statuses().await.unwrap_or_default();
    store.close();
    rows
}

/// A table per domain: status, record, type and name on one line; expected,
/// found and note below it, unabridged so they can be copied into a zone.
pub fn render_table(checks: &[RecordCheck]) -> String {
    let mut out = String::new();
    let Some(first) = checks.first() else {
        return out;
    };
    let label = |c: &RecordCheck| {
        let mut l = c.record.label().to_string();
        if !c.required {
            l.push_str(" (recommended)");
        }
        l
    };
    let width = checks.iter().map(|c| label(c).len()).max().unwrap_or(0);
    out.push_str(&format!("{}\n", first.domain));
    out.push_str(&format!(
        "  {:<11}  {:<width$}  {:<5}  NAME\n",
        "STATUS", "RECORD", "TYPE"
    ));
    for c in checks {
        let name = if c.name.is_empty() { "-" } else { &c.name };
        out.push_str(&format!(
            "  {:<11}  {:<width$}  {:<5}  {name}\n",
            c.status.as_str(),
            label(c),
            c.record_type
        ));
        let pad = " ".repeat(15);
        if !c.expected.is_empty() {
            out.push_str(&format!("{pad}expected  {}\n", printable(&c.expected)));
        }
        if c.found.is_empty() {
            out.push_str(&format!("{pad}found     (nothing)\n"));
        }
        for f in &c.found {
            out.push_str(&format!("{pad}found     {}\n", printable(f)));
        }
        if let Some(note) = &c.note {
            out.push_str(&format!("{pad}note      {}\n", printable(note)));
        }
    }
    let required: Vec<_> = checks.iter().filter(|c| c.required).collect();
    let verified = required
        .iter()
        .filter(|c| c.status == Status::Verified)
        .count();
    out.push_str(&format!(
        "  {verified} of {} required records verified\n",
        required.len()
    ));
    out
}

// Records and notes carry text from DNS, which anyone controlling a zone
// on the way (an include's, a CNAME target's) writes: the table shows them
// through `printable`, so they cannot move the cursor, recolour the
// terminal or fake a line of the table.

/// The command: checks the configured domains (or only `domain`), prints a
/// table or JSON lines on stdout, and returns whether every required record
/// is verified. Err: nothing could be checked (unknown domain, no domains,
/// unusable resolver setting, stdout closed).
pub async fn run(config: &Config, domain: Option<&str>, json: bool) -> Result<bool, String> {
    // Not print!: a closed pipe (`| head`) must not panic.
    run_to(config, domain, json, &mut std::io::stdout()).await
}

/// [`run`], writing to `out`.
pub async fn run_to<W: Write>(
    config: &Config,
    domain: Option<&str>,
    json: bool,
    out: &mut W,
) -> Result<bool, String> {
    let domains: Vec<&DomainConfig> = match domain {
        Some(d) => vec![config
            .domain(d)
            .ok_or_else(|| format!("{d:?} is not a configured [[domains]] entry"))?],
        None => config.domains.iter().collect(),
    };
    if domains.is_empty() {
        return Err("no [[domains]] configured: nothing to check".into());
    }
    let resolver = resolver(config)?;
    let stored = stored_statuses(config).await;
    let mut all_ok = true;
    for (i, d) in domains.iter().enumerate() {
        let checks = check(config, &resolver, d).await;
        all_ok &= all_required_verified(&checks);
        let prev = stored
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(&d.name));
        let (state, reason) = crate::domains::rules::next(
            &crate::domains::monitor::state_of(prev),
            &checks,
            crate::time::now_ms(),
        );
        let text = if json {
            render_json_with_status(&checks, state.status)
        } else {
            let sep = if i > 0 { "\n" } else { "" };
            format!(
                "{sep}{}  domain status: {} ({})\n",
                render_table(&checks),
                state.status,
                printable(&reason)
            )
        };
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| format!("writing the dns-check report for {}: {e}", d.name))?;
    }
    // Not records of any domain (DNSSEC, the hostname's certificate): last
    // lines in the table; with --json on stderr, so that stdout stays one
    // record object per line.
    let mut last = vec![dnssec::line(config).await];
    last.extend(acme::hostname_line(config));
    for (i, line) in last.iter().enumerate() {
        let line = crate::text::printable(line).into_owned();
        if json {
            eprintln!("{line}");
        } else {
            let sep = if i == 0 { "\n" } else { "" };
            out.write_all(format!("{sep}{line}\n").as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| format!("writing the dns-check report: {e}"))?;
        }
    }
    Ok(all_ok)
}
