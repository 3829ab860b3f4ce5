//! The SQLite side of `QueryStore`: the plain query functions of
//! `emails`, `events`, `stats`, `dashboard`, run on a pooled read-only
//! connection; `retry_group` and `prune` through the writer.

use super::{dashboard, emails, events, stats, Durability, Inner, Sqlite, StoreOptions};
use crate::events::StoredEvent;
use crate::store::queries::{
    Each, EmailInfo, EmailSearch, EventFilter, Found, Gauges, PruneBatch, Pruned, QueueGroup,
    Stats, SuppressionWhy, WebhookSent,
};
use crate::store::{Result, StoreError};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Rows a streaming read runs ahead of its consumer.
const AHEAD: usize = 256;

impl Sqlite {
    /// Opens an existing store for reading only: no writer thread, no
    /// migration, and no database created where there is none (the CLI's
    /// read commands, beside a running server or not). Writes fail.
    pub fn open_read_only(path: &Path, options: StoreOptions) -> Result<Sqlite> {
        if !path.exists() {
            return Err(super::missing_database(path));
        }
        let file = super::FileId::of(path)
            .map_err(|e| StoreError::msg(format!("reading {}: {e}", path.display())))?;
        Ok(Sqlite {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                options,
                jobs: Mutex::new(None),
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(None),
                outbox_wake: Arc::new(tokio::sync::Notify::new()),
                queue_wake: Arc::new(tokio::sync::Notify::new()),
                file,
                broken: Arc::new(super::Broken::default()),
            }),
        })
    }

    /// Runs `read` on a reader connection, which hands rows to the channel
    /// it is given, while `on` takes them here: memory stays `AHEAD` rows
    /// however many the read finds. When `on` breaks, the channel closes
    /// and the read stops at its next row.
    async fn stream<T, F>(&self, read: F, on: Each<'_, T>) -> Result<()>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection, &dyn Fn(T) -> bool) -> rusqlite::Result<()>
            + Send
            + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<T>(AHEAD);
        let reading = self.read(move |c| read(c, &|row| tx.blocking_send(row).is_ok()));
        let taking = async move {
            while let Some(row) = rx.recv().await {
                if on(row).is_break() {
                    break;
                }
            }
        };
        let (read, ()) = tokio::join!(reading, taking);
        read
    }
}

/// Why a streaming read ended early: the store, or a consumer gone
/// (which is no error).
enum Halt {
    Db(rusqlite::Error),
    Consumer,
}

impl From<rusqlite::Error> for Halt {
    fn from(e: rusqlite::Error) -> Self {
        Halt::Db(e)
    }
}

fn ended(r: std::result::Result<(), Halt>) -> rusqlite::Result<()> {
    match r {
        Ok(()) | Err(Halt::Consumer) => Ok(()),
        Err(Halt::Db(e)) => Err(e),
    }
}

#[async_trait::async_trait]
impl crate::store::queries::QueryStore for Sqlite {
    async fn email(&self, id: &str) -> Result<Option<EmailInfo>> {
        let id = id.to_string();
        self.read(move |c| emails::get(c, &id)).await
    }

    async fn email_known(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(emails::summary(c, &id)?.is_some() || events::exists_for_email(c, &id)?)
        })
        .await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>> {
        let filter = filter.clone();
        self.read(move |c| events::list(c, &filter)).await
    }

    async fn each_event(&self, filter: &EventFilter, on: Each<'_, StoredEvent>) -> Result<()> {
        let filter = filter.clone();
        self.stream(
            move |c, send| {
                ended(events::each(c, &filter, |e| {
                    send(e).then_some(()).ok_or(Halt::Consumer)
                }))
            },
            on,
        )
        .await
    }

    async fn each_email(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        on: Each<'_, EmailInfo>,
    ) -> Result<()> {
        self.stream(
            move |c, send| {
                ended(emails::each(c, since, until, |e| {
                    send(e).then_some(()).ok_or(Halt::Consumer)
                }))
            },
            on,
        )
        .await
    }

    async fn stats(
        &self,
        domain: Option<&str>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Stats> {
        let domain = domain.map(str::to_string);
        self.read(move |c| stats::compute(c, domain.as_deref(), since, until))
            .await
    }

    async fn series(
        &self,
        domain: Option<&str>,
        from: i64,
        to: i64,
        bucket: i64,
    ) -> Result<Vec<(i64, Stats)>> {
        let domain = domain.map(str::to_string);
        self.read(move |c| dashboard::series(c, domain.as_deref(), from, to, bucket))
            .await
    }

    async fn search(&self, s: &EmailSearch) -> Result<Found> {
        let s = s.clone();
        self.read(move |c| dashboard::search(c, &s)).await
    }

    async fn webhooks_for_email(&self, email_id: &str) -> Result<Vec<WebhookSent>> {
        let id = email_id.to_string();
        self.read(move |c| dashboard::webhooks_for_email(c, &id))
            .await
    }

    async fn queue_groups(&self, limit: usize) -> Result<Vec<QueueGroup>> {
        self.read(move |c| dashboard::queue_groups(c, limit)).await
    }

    async fn retry_group(
        &self,
        destination: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<usize> {
        let (dest, reason) = (destination.to_string(), reason.map(str::to_string));
        self.write(Durability::Normal, move |tx| {
            dashboard::retry_group(tx, &dest, reason.as_deref(), now)
        })
        .await
    }

    async fn suppressions_view(&self, prefix: &str, limit: usize) -> Result<Vec<SuppressionWhy>> {
        let prefix = prefix.to_string();
        self.read(move |c| dashboard::suppressions(c, &prefix, limit))
            .await
    }

    async fn gauges(&self) -> Result<Gauges> {
        self.read(|c| {
            let (pending, _delivered, failed) = super::webhooks::counts(c)?;
            Ok(Gauges {
                queue_depth: super::queue::depth(c)?,
                webhooks_pending: pending,
                webhooks_failed: failed,
                domain_statuses: super::domains::list(c)?
                    .into_iter()
                    .map(|r| (r.domain, r.status))
                    .collect(),
            })
        })
        .await
    }

    async fn prune(&self, p: PruneBatch) -> Result<Pruned> {
        self.write(Durability::Normal, move |tx| super::retention::prune(tx, p))
            .await
    }
}
