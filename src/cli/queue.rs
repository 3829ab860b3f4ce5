//! `trackrelay queue`: list, retry and delete queued recipients.

use super::{finish, out, reader, CliResult, Stop};
use crate::config::Config;
use crate::store::{self, Tx};
use crate::text::printable;
use std::io::Write;

pub fn queue_list(config: &Config, json: bool, all: bool, limit: usize) -> CliResult {
    let conn = reader(config)?;
    let mut w = out();
    let mut n = 0usize;
    let done = if json {
        store::sqlite::queue::each(&conn, all, limit, |r| {
            writeln!(w, "{}", r.to_json()).map_err(Stop::Io)
        })
    } else {
        writeln!(
            w,
            "{:<36}  {:<32}  {:<9}  {:>8}  {:<24}  last response",
            "email_id", "recipient", "status", "attempts", "next attempt"
        )
        .map_err(Stop::Io)
        .and_then(|()| {
            store::sqlite::queue::each(&conn, all, limit, |r| {
                n += 1;
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
                .map_err(Stop::Io)
            })
        })
        .and_then(|()| writeln!(w, "{n} recipient(s)").map_err(Stop::Io))
    };
    finish(done, w)
}

pub fn queue_retry(config: &Config, id: &str) -> CliResult {
    let conn = store::open_writer(&config.database_path()).map_err(|e| e.to_string())?;
    let n = store::sqlite::queue::retry(&conn, id, store::now_ms()).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(format!("{id}: no waiting recipient with this email id"));
    }
    println!("{n} recipient(s) of {id} due now");
    Ok(())
}

pub fn queue_delete(config: &Config, id: &str) -> CliResult {
    let mut conn = store::open_writer(&config.database_path()).map_err(|e| e.to_string())?;
    let hooks = crate::serve::store_options(config).webhooks;
    let txn = conn.transaction().map_err(|e| e.to_string())?;
    let n = store::sqlite::queue::delete(&Tx::new(&txn, &hooks), id, store::now_ms())
        .map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())?;
    if n == 0 {
        return Err(format!("{id}: no waiting recipient with this email id"));
    }
    println!("{n} recipient(s) of {id} removed from the queue (recorded as email.failed)");
    Ok(())
}
