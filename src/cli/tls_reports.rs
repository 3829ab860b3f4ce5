//! `trackrelay tls-reports list|show|send`: the TLS reports (RFC 8460) of
//! outbound deliveries, per policy domain and UTC day.

use super::CliResult;
use crate::config::Config;
use crate::outbound::tls_report::{check_day, report_for_show};
use crate::store::Store;
use crate::text::printable;
use std::io::Write;

/// Whether there is a store to read: a SQLite file exists (a command
/// never creates one: only `serve` does, deliberately), or the store is a
/// PostgreSQL server.
pub(crate) fn store_exists(config: &Config) -> bool {
    config.store.backend != crate::config::StoreBackend::Sqlite || config.database_path().exists()
}

/// The configured store for a command beside (or without) a running
/// server; None when there is none yet.
pub(crate) async fn open_existing(config: &Config) -> Result<Option<Store>, String> {
    if !store_exists(config) {
        return Ok(None);
    }
    Store::open_existing(config)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Runs `f` on the configured store in a runtime of its own, then closes
/// the store.
pub(crate) fn with_store<T>(
    config: &Config,
    f: impl AsyncFnOnce(&Store) -> Result<T, String>,
) -> Result<T, String> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let store = Store::open_existing(config)
            .await
            .map_err(|e| e.to_string())?;
        let out = f(&store).await;
        store.close();
        out
    })
}

pub fn list(
    config: &Config,
    json: bool,
    day: Option<&str>,
    domain: Option<&str>,
    limit: usize,
) -> CliResult {
    let day = day
        .map(check_day)
        .transpose()
        .map_err(|e| format!("--day: {e}"))?;
    let domain = domain.map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase());
    let rows = with_store(config, async |store| {
        store
            .tls_report_list(day.as_deref(), domain.as_deref(), limit)
            .await
            .map_err(|e| format!("reading the store: {e}"))
    })?;
    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
    let written = (|| -> std::io::Result<()> {
        if json {
            for r in &rows {
                writeln!(w, "{}", r.to_json())?;
            }
            return Ok(());
        }
        writeln!(
            w,
            "{:<10}  {:<32}  {:<9}  {:>8}  {:>8}  destinations",
            "day", "policy domain", "status", "ok", "failed"
        )?;
        for r in &rows {
            let v = r.to_json();
            let rua: Vec<&str> = v["rua"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            writeln!(
                w,
                "{:<10}  {:<32}  {:<9}  {:>8}  {:>8}  {}",
                r.day,
                printable(&r.policy_domain),
                v["status"].as_str().unwrap_or("-"),
                r.successful,
                r.failed,
                printable(&if rua.is_empty() {
                    "-".to_string()
                } else {
                    rua.join(", ")
                })
            )?;
        }
        writeln!(w, "{} day(s)", rows.len())
    })()
    .and_then(|()| w.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing the output: {e}"))
        }
        _ => Ok(()),
    }
}

/// The report's JSON as it was (or, for a day not yet sent, would be)
/// sent. A report not yet sent says so on stderr.
pub fn show(config: &Config, domain: &str, day: &str) -> CliResult {
    let (json, stored) = with_store(config, async |store| {
        report_for_show(config, store, domain, day).await
    })?;
    if !stored {
        eprintln!("not sent (yet): the report as it would be built from today's counts");
    }
    let pretty = serde_json::from_str::<serde_json::Value>(&json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(json);
    println!("{pretty}");
    Ok(())
}

/// Sends the reports of `day` (default: yesterday, UTC) now, beside a
/// running server or not: report mail is queued in the store for the
/// server's queue runner; HTTPS reports are posted from here. A day
/// already decided is not sent again; today's counts are those the server
/// has written so far (it writes them every few seconds).
pub fn send(config: &Config, day: Option<&str>, domain: Option<&str>) -> CliResult {
    let day = match day {
        Some(d) => check_day(d).map_err(|e| format!("--day: {e}"))?,
        None => crate::outbound::tls_report::day_of(crate::store::now_ms() - 86_400_000),
    };
    let domain = domain.map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase());
    with_store(config, async |store| {
        let resolver = std::sync::Arc::new(crate::dns::resolver(config)?);
        let reporter = crate::outbound::tls_report::Reporter::new(
            config,
            store.clone(),
            resolver,
            std::sync::Arc::new(tokio::sync::Notify::new()),
        )?;
        reporter.send_day(&day, domain.as_deref()).await
    })?;
    list(config, false, Some(&day), domain.as_deref(), 100_000)
}
