//! `trackrelay queue`: list, retry and delete queued recipients.

use super::{out, CliResult};
use crate::config::Config;
use crate::store::{self, Store};
use crate::text::printable;
use std::io::Write;

/// Rows read per round trip while listing: memory stays one page's worth
/// however long the queue is.
const PAGE: usize = 500;

pub fn queue_list(config: &Config, json: bool, all: bool, limit: usize) -> CliResult {
    let (rt, store) = super::open_store(config)?;
    let listed = rt.block_on(list(&store, json, all, limit));
    store.close();
    match listed {
        Err(Stop::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(Stop::Io(e)) => Err(format!("writing the output: {e}")),
        Err(Stop::Store(e)) => Err(format!("reading the store: {e}")),
        Ok(()) => Ok(()),
    }
}

/// Why the listing stopped: the store, or stdout (a closed pipe, as with
/// `| head`, is a normal end).
enum Stop {
    Store(store::StoreError),
    Io(std::io::Error),
}

async fn list(store: &Store, json: bool, all: bool, limit: usize) -> Result<(), Stop> {
    let limit = if limit == 0 { usize::MAX } else { limit };
    let mut w = out();
    if !json {
        writeln!(
            w,
            "{:<36}  {:<32}  {:<9}  {:>8}  {:<24}  last response",
            "email_id", "recipient", "status", "attempts", "next attempt"
        )
        .map_err(Stop::Io)?;
    }
    let mut n = 0usize;
    let mut after = None;
    while n < limit {
        let page = store
            .list(all, after.take(), PAGE.min(limit - n))
            .await
            .map_err(Stop::Store)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        for r in &page {
            n += 1;
            if json {
                writeln!(w, "{}", r.to_json()).map_err(Stop::Io)?;
            } else {
                writeln!(
                    w,
                    "{:<36}  {:<32}  {:<9}  {:>8}  {:<24}  {}",
                    r.email_id,
                    printable(&r.recipient),
                    r.status,
                    r.attempts,
                    r.next_attempt_at
                        .map(store::rfc3339)
                        .unwrap_or_else(|| "-".into()),
                    printable(r.last_response.as_deref().unwrap_or("-"))
                )
                .map_err(Stop::Io)?;
            }
        }
    }
    if !json {
        writeln!(w, "{n} recipient(s)").map_err(Stop::Io)?;
    }
    w.flush().map_err(Stop::Io)
}

pub fn queue_retry(config: &Config, id: &str) -> CliResult {
    let (rt, store) = super::open_store_rw(config)?;
    let n = rt.block_on(store.retry(id, store::now_ms()));
    store.close();
    let n = n.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(format!("{id}: no waiting recipient with this email id"));
    }
    println!("{n} recipient(s) of {id} due now");
    Ok(())
}

pub fn queue_delete(config: &Config, id: &str) -> CliResult {
    let (rt, store) = super::open_store_rw(config)?;
    let n = rt.block_on(store.delete(id, store::now_ms()));
    store.close();
    let n = n.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(format!("{id}: no waiting recipient with this email id"));
    }
    println!("{n} recipient(s) of {id} removed from the queue (recorded as email.failed)");
    Ok(())
}
