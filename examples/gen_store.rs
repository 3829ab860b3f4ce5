//! Generates a store that has lived for a year, for bench/queries.sh:
//! EMAILS emails (one recipient each, delivered) spread over 365 days
//! across 5 sending domains, and EVENTS events in all: each email's
//! `email.sent` and `email.delivered`, one "hot" email with HOT click
//! events, and the rest opens and clicks (a third machine) spread over the
//! other emails. Every row goes through the store's own write paths
//! (`emails::insert`, `queue::claim_due` + `queue::record`,
//! `events::insert`), so indexes, `opened_at`/`clicked_at` and the hourly
//! rollups are exactly what a serving relay would have written; only the
//! transactions are big (one per CHUNK emails) and `synchronous` is OFF.
//!
//!   cargo run --release --example gen_store -- DB [EMAILS] [EVENTS] [HOT]
//!   defaults: 1000000 10000000 1000000
//!
//! Writes `DB.ids`: the hot email id on the first line, then a sample of
//! 10,000 other email ids (one per line), for the benchmark's URLs.

use std::io::Write;
use std::time::Instant;
use trackrelay::events::{EventType, NewEvent};
use trackrelay::store::sqlite::emails::NewEmail;
use trackrelay::store::sqlite::queue::{Attempt, Outcome};
use trackrelay::store::{self, Tx};

const DAY: i64 = 86_400_000;
const CHUNK: usize = 20_000;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: gen_store DB [EMAILS] [EVENTS] [HOT]")?;
    let emails = arg(2, 1_000_000) as usize;
    let events = arg(3, 10_000_000);
    let hot = arg(4, 1_000_000);
    let path = std::path::PathBuf::from(path);
    if path.exists() {
        return Err(format!("{} exists; remove it first", path.display()).into());
    }
    // store::open_writer never creates a database (only `serve` does);
    // this tool makes a new one.
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    store::sqlite::schema::migrate(&mut conn)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?; // 256 MiB

    let domains = [
        "example.com",
        "example.org",
        "example.net",
        "shop.example",
        "news.example",
    ];
    // Per ordinary email, besides sent + delivered.
    let spare = events.saturating_sub(2 * emails as u64 + hot);
    let per_email = spare as f64 / emails.saturating_sub(1).max(1) as f64;
    let now = store::now_ms();
    let start = now - 365 * DAY;
    let step = (365 * DAY) / emails.max(1) as i64;
    let hot_at = emails * 9 / 10;
    let mut rng = Lcg(42);
    let mut ids = std::fs::File::create(path.with_extension("ids"))?;
    let mut sample = Vec::new();
    let mut stored_events: u64 = 0;
    let mut carry = 0.0f64;
    let t0 = Instant::now();
    let mut i = 0;
    while i < emails {
        let txn = conn.transaction()?;
        let tx = Tx::new(&txn, &[]);
        let end = (i + CHUNK).min(emails);
        let mut batch = Vec::with_capacity(end - i);
        for n in i..end {
            let id = uuid::Uuid::now_v7().to_string();
            let created = start + n as i64 * step;
            let domain = domains[n % domains.len()];
            let e = NewEmail {
                id: id.clone(),
                created_at: created,
                domain: domain.into(),
                mail_from: format!("news@{domain}"),
                header_from: Some(format!("News <news@{domain}>")),
                to_header: Some(format!("r{n}@x.test")),
                subject: Some(format!("Newsletter {n}")),
                message_id: Some(format!("<{id}@{domain}>")),
                tags: vec!["bench".into()],
                auth_user: Some("app".into()),
                client_ip: Some("127.0.0.1".into()),
                smtputf8: false,
                received: Vec::new(),
                body: b"Subject: x\r\n\r\nhello\r\n".to_vec().into(),
                recipients: vec![format!("r{n}@x.test")],
            };
            store::sqlite::emails::insert(&tx, &e)?;
            batch.push((id, created, n));
        }
        let last = batch.last().map(|b| b.1).unwrap_or(start);
        let claimed =
            store::sqlite::queue::claim_due(&tx, "gen-store", last + 1, 3_600_000, end - i)?;
        assert_eq!(claimed.len(), end - i, "every new recipient is due");
        let lease_ids: std::collections::HashMap<String, String> = claimed
            .into_iter()
            .map(|c| (c.email_id, c.lease_id))
            .collect();
        for (id, created, n) in &batch {
            store::sqlite::queue::record(
                &tx,
                &Attempt {
                    lease_id: lease_ids.get(id).cloned().unwrap_or_default(),
                    email_id: id.clone(),
                    idx: 0,
                    at: created + 5_000,
                    outcome: Outcome::Delivered,
                    response: "250 2.0.0 Ok".into(),
                    tls: Some("TLSv1.3".into()),
                    mx: Some("mx.x.test".into()),
                    tls_policy: None,
                },
            )?;
            stored_events += 2;
            let k = if *n == hot_at {
                writeln!(ids, "{id}")?;
                hot
            } else {
                carry += per_email;
                let k = carry.floor();
                carry -= k;
                k as u64
            };
            if *n != hot_at && sample.len() < 10_000 && rng.next(emails as u64 / 10_000 + 1) == 0 {
                sample.push(id.clone());
            }
            for j in 0..k {
                let kind = if j % 3 == 0 && *n != hot_at {
                    EventType::Opened
                } else {
                    EventType::Clicked
                };
                let mut ev = NewEvent::new(
                    id.clone(),
                    kind,
                    created + 60_000 + rng.next(3 * DAY as u64) as i64,
                );
                ev.rcpt_idx = Some(0);
                ev.recipient = Some(format!("r{n}@x.test"));
                ev.ip = Some("198.51.100.7".into());
                ev.user_agent = Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0".into());
                let machine = rng.next(3) == 0;
                ev.machine = Some(machine);
                ev.machine_reason = machine.then(|| "apple_mpp".to_string());
                if kind == EventType::Clicked {
                    ev.link = Some(format!("https://{}/offer?id={n}", domains[n % 5]));
                }
                store::sqlite::events::insert(&tx, &ev)?;
                stored_events += 1;
            }
        }
        txn.commit()?;
        i = end;
        eprintln!(
            "{i} emails, {stored_events} events, {:.0} s",
            t0.elapsed().as_secs_f64()
        );
    }
    for id in &sample {
        writeln!(ids, "{id}")?;
    }
    eprintln!(
        "done: {emails} emails, {stored_events} events in {:.0} s; ids in {}",
        t0.elapsed().as_secs_f64(),
        path.with_extension("ids").display()
    );
    Ok(())
}
