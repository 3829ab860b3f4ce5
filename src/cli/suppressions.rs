//! `trackrelay suppressions list|add|remove|export|import`.

use super::{csv_row, csv_uncell, csv_writer, finish, out, printable, CliResult, Stop};
use crate::config::Config;
use crate::store::feedback::{self as sup, check_address, check_domain, check_reason};
use crate::store::{self, Store};
use std::io::Write;

const CSV_FIELDS: [&str; 6] = [
    "address",
    "domain",
    "reason",
    "event_id",
    "created_at",
    "expires_at",
];

/// Entries read per store read when printing the whole list.
const PAGE: usize = 1000;

/// Calls `on` for each entry (only those scoped to `domain` and the
/// every-domain ones, when given), in address order, a page at a time, so
/// a list of any length prints in constant memory. A store error stops
/// the walk and lands in `failed`.
fn each(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    domain: Option<&str>,
    failed: &mut Option<String>,
    mut on: impl FnMut(&sup::Suppression) -> Result<(), Stop>,
) -> Result<(), Stop> {
    let mut after = None;
    loop {
        let page = match rt.block_on(store.suppressions(domain, after.take(), PAGE)) {
            Ok(p) => p,
            Err(e) => {
                *failed = Some(format!("reading the store: {e}"));
                return Ok(());
            }
        };
        for s in &page {
            on(s)?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.cursor()),
            _ => return Ok(()),
        }
    }
}

/// `finish`, then the store's error if the walk had one.
fn done(done: Result<(), Stop>, w: impl Write, store: Store, failed: Option<String>) -> CliResult {
    let written = finish(done, w);
    store.close();
    match failed {
        Some(e) => Err(e),
        None => written,
    }
}

pub fn list(config: &Config, json: bool, domain: Option<&str>) -> CliResult {
    let domain = domain.map(check_domain).transpose()?;
    let (rt, store) = super::open_store(config)?;
    let mut failed = None;
    let mut w = out();
    let mut n = 0usize;
    let walked = if json {
        each(&rt, &store, domain.as_deref(), &mut failed, |s| {
            writeln!(w, "{}", s.to_json()).map_err(Stop::Io)
        })
    } else {
        writeln!(
            w,
            "{:<40}  {:<24}  {:<12}  {:<24}  expires",
            "address", "domain", "reason", "created"
        )
        .map_err(Stop::Io)
        .and_then(|()| {
            each(&rt, &store, domain.as_deref(), &mut failed, |s| {
                n += 1;
                writeln!(
                    w,
                    "{:<40}  {:<24}  {:<12}  {:<24}  {}",
                    printable(&s.address),
                    s.domain.as_deref().unwrap_or("*"),
                    s.reason,
                    store::rfc3339(s.created_at),
                    s.expires_at
                        .map(store::rfc3339)
                        .unwrap_or_else(|| "-".into())
                )
                .map_err(Stop::Io)
            })
        })
        .and_then(|()| {
            if failed.is_none() {
                writeln!(w, "{n} suppressed address(es)").map_err(Stop::Io)
            } else {
                Ok(())
            }
        })
    };
    done(walked, w, store, failed)
}

pub fn add(config: &Config, address: &str, domain: Option<&str>, reason: &str) -> CliResult {
    let address = check_address(address)?;
    let domain = domain.map(check_domain).transpose()?;
    let reason = check_reason(reason)?;
    let entry = sup::Suppression {
        address: address.clone(),
        domain: domain.clone(),
        reason: reason.as_str().into(),
        event_id: None,
        created_at: store::now_ms(),
        expires_at: None,
    };
    let (rt, store) = super::open_store_rw(config)?;
    let added = rt.block_on(store.add_suppression(entry));
    store.close();
    let added = added.map_err(|e| format!("writing the store: {e}"))?;
    let scope = domain.as_deref().unwrap_or("every domain");
    if added {
        println!("{address} suppressed for {scope} ({})", reason.as_str());
    } else {
        println!("{address} was already suppressed for {scope}");
    }
    Ok(())
}

pub fn remove(config: &Config, address: &str, domain: Option<&str>) -> CliResult {
    let address = check_address(address)?;
    let domain = domain.map(check_domain).transpose()?;
    let scope = domain.as_deref().unwrap_or("every domain");
    let (rt, store) = super::open_store_rw(config)?;
    let removed = rt.block_on(store.remove_suppression(&address, domain.as_deref()));
    store.close();
    if removed.map_err(|e| format!("writing the store: {e}"))? {
        println!("{address} no longer suppressed for {scope}");
        Ok(())
    } else {
        Err(format!("{address} is not suppressed for {scope}"))
    }
}

pub fn export_csv(config: &Config) -> CliResult {
    let (rt, store) = super::open_store(config)?;
    let mut failed = None;
    let mut w = csv_writer(out());
    let walked = csv_row(&mut w, &CSV_FIELDS).and_then(|()| {
        each(&rt, &store, None, &mut failed, |s| {
            let event_id = s.event_id.map(|i| i.to_string()).unwrap_or_default();
            let expires = s.expires_at.map(store::rfc3339).unwrap_or_default();
            csv_row(
                &mut w,
                &[
                    &s.address,
                    s.domain.as_deref().unwrap_or(""),
                    &s.reason,
                    &event_id,
                    &store::rfc3339(s.created_at),
                    &expires,
                ],
            )
        })
    });
    let walked = walked.and_then(|()| w.flush().map_err(Stop::Io));
    done(walked, std::io::sink(), store, failed)
}

/// Reads the whole file first and writes nothing unless every row is
/// valid: a half-imported list is worse than a refused one.
pub fn import_csv(config: &Config, path: &std::path::Path) -> CliResult {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let Some(addr_col) = col("address") else {
        return Err(format!(
            "{}: no `address` column in the header line (expected {})",
            path.display(),
            CSV_FIELDS.join(",")
        ));
    };
    let (dom_col, reason_col, ev_col, created_col, exp_col) = (
        col("domain"),
        col("reason"),
        col("event_id"),
        col("created_at"),
        col("expires_at"),
    );
    let now = store::now_ms();
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let cell = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(csv_uncell).unwrap_or("");
        let row = (|| -> Result<sup::Suppression, String> {
            let address = check_address(cell(Some(addr_col)))?;
            let domain = match cell(dom_col).trim() {
                "" | "*" => None,
                d => Some(check_domain(d)?),
            };
            let reason = match cell(reason_col).trim() {
                "" => sup::Reason::Manual,
                r => check_reason(r)?,
            };
            let event_id = match cell(ev_col).trim() {
                "" => None,
                e => Some(
                    e.parse::<i64>()
                        .map_err(|_| format!("event_id {:?} is not a number", printable(e)))?,
                ),
            };
            let time = |name: &str, v: &str| {
                store::parse_time(v)
                    .ok_or_else(|| format!("{name} {:?} is not a time", printable(v)))
            };
            let created_at = match cell(created_col).trim() {
                "" => now,
                t => time("created_at", t)?,
            };
            let expires_at = match cell(exp_col).trim() {
                "" => None,
                t => Some(time("expires_at", t)?),
            };
            Ok(sup::Suppression {
                address,
                domain,
                reason: reason.as_str().into(),
                event_id,
                created_at,
                expires_at,
            })
        })();
        match row {
            Ok(r) => rows.push(r),
            Err(e) => problems.push(format!("line {line}: {e}")),
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(20).map(String::as_str).collect();
        return Err(format!(
            "{}: nothing imported, {} row(s) are invalid:\n  {}",
            path.display(),
            problems.len(),
            shown.join("\n  ")
        ));
    }
    let total = rows.len();
    let (rt, store) = super::open_store_rw(config)?;
    let added = rt.block_on(store.import_suppressions(rows));
    store.close();
    let added = added.map_err(|e| format!("writing the store: {e}"))?;
    println!(
        "{added} address(es) added, {} already suppressed",
        total - added
    );
    Ok(())
}
