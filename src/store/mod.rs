//! The SQLite store: the only place SQL lives.
//!
//! One writer thread owns the only writing connection. Callers hand it jobs
//! (closures over a transaction); it takes every job that is waiting, runs
//! them in one transaction, each under its own savepoint so a failing job
//! rolls back alone, and commits once. While one commit is syncing, the next
//! jobs queue up and share the following commit: group commit without an
//! artificial delay. Jobs that need durability (an accepted message) make the
//! whole batch commit with `synchronous=FULL`; batches of tracking events
//! alone commit with `NORMAL`.
//!
//! Readers use their own connections (WAL lets them run beside the writer).
//! Queries are plain functions over `&Connection` in the submodules, so the
//! CLI can call them on a connection of its own.

pub mod emails;
pub mod events;
pub mod queue;
pub mod retention;
pub mod schema;
pub mod stats;
pub mod tracking;
pub mod webhooks;

use rusqlite::{Connection, OpenFlags, Transaction};
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub struct StoreError {
    pub context: String,
    pub source: Option<rusqlite::Error>,
}

impl StoreError {
    fn new(context: impl Into<String>, source: rusqlite::Error) -> Self {
        StoreError {
            context: context.into(),
            source: Some(source),
        }
    }
    fn msg(context: impl Into<String>) -> Self {
        StoreError {
            context: context.into(),
            source: None,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.context),
            None => write!(f, "{}", self.context),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed with `synchronous=FULL` before the caller hears back.
    Full,
    /// Committed with `synchronous=NORMAL`: survives a process crash, may
    /// lose the last commits on power loss.
    Normal,
}

type JobResult = std::result::Result<Box<dyn Any + Send>, StoreError>;
type JobFn = Box<dyn FnOnce(&Tx<'_>) -> JobResult + Send>;

/// What a write job sees: the batch's transaction, and the webhook
/// subscriptions, so an event and its outbox rows commit together.
pub struct Tx<'a> {
    pub conn: &'a Transaction<'a>,
    pub hooks: &'a [webhooks::Subscription],
    /// Set when a job added webhook outbox rows: the webhook workers are
    /// woken after the commit.
    pub outbox_added: std::cell::Cell<bool>,
}

impl<'a> Tx<'a> {
    pub fn new(conn: &'a Transaction<'a>, hooks: &'a [webhooks::Subscription]) -> Self {
        Tx {
            conn,
            hooks,
            outbox_added: std::cell::Cell::new(false),
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

struct Job {
    run: JobFn,
    durability: Durability,
    reply: tokio::sync::oneshot::Sender<JobResult>,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a write waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Most jobs one commit carries.
    pub max_batch: usize,
    /// Webhook endpoints: events of their types get outbox rows.
    pub webhooks: Vec<webhooks::Subscription>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            webhooks: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    outbox_wake: Arc<tokio::sync::Notify>,
}

pub use crate::time::{now_ms, parse_time, rfc3339};

fn open_connection(path: &Path, flags: OpenFlags, busy: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::new(format!("opening {}", path.display()), e))?;
    conn.busy_timeout(busy)
        .map_err(|e| StoreError::new("setting busy_timeout", e))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| StoreError::new("enabling foreign keys", e))?;
    Ok(conn)
}

/// Opens a connection for reading only (CLI commands, API queries).
pub fn open_reader(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(StoreError::msg(format!(
            "no database at {} (has `trackrelay serve` run with this config?)",
            path.display()
        )));
    }
    open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Duration::from_secs(5),
    )
}

/// Opens a connection that may write, for one-off operator commands
/// (`queue retry`, `queue delete`) that run beside a serving process.
pub fn open_writer(path: &Path) -> Result<Connection> {
    let mut conn = open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Duration::from_secs(10),
    )?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| StoreError::new("enabling WAL", e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| StoreError::new("setting synchronous", e))?;
    schema::migrate(&mut conn).map_err(|e| StoreError::new("migrating the schema", e))?;
    Ok(conn)
}

impl Store {
    /// Opens (creating and migrating if needed) and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError {
                    context: format!("creating {}: {e}", dir.display()),
                    source: None,
                })?;
            }
        }
        let conn = open_writer(path)?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| StoreError::new("setting busy_timeout", e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let max_batch = options.max_batch.max(1);
        let hooks = options.webhooks.clone();
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let wake = outbox_wake.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch, hooks, wake))
            .map_err(|e| StoreError::msg(format!("starting the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                options,
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(writer)),
                outbox_wake,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Notified after every commit that added webhook outbox rows.
    pub fn outbox_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.outbox_wake.clone()
    }

    /// Runs `f` in the writer's next transaction and waits for the commit.
    pub async fn write<T, F>(&self, durability: Durability, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            run: Box::new(move |tx| {
                f(tx)
                    .map(|v| Box::new(v) as Box<dyn Any + Send>)
                    .map_err(|e| StoreError::new("write", e))
            }),
            durability,
            reply,
        };
        {
            let jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let sender = jobs
                .as_ref()
                .ok_or_else(|| StoreError::msg("the store is closed"))?;
            sender
                .send(job)
                .map_err(|_| StoreError::msg("the store writer has stopped"))?;
        }
        let out = rx
            .await
            .map_err(|_| StoreError::msg("the store writer has stopped"))??;
        out.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StoreError::msg("internal: write result of the wrong type"))
    }

    /// Runs a read on a pooled read-only connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = {
                let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
                pool.pop()
            };
            let conn = match conn {
                Some(c) => c,
                None => open_connection(
                    &inner.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    inner.options.busy_timeout,
                )?,
            };
            let out = f(&conn).map_err(|e| StoreError::new("read", e));
            let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 8 {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::msg(format!("read task failed: {e}")))?
    }

    /// Stops accepting jobs, lets the writer finish those queued, and waits.
    pub fn close(&self) {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    hooks: Vec<webhooks::Subscription>,
    outbox_wake: Arc<tokio::sync::Notify>,
) {
    let mut sync_full = true;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let want_full = batch.iter().any(|j| j.durability == Durability::Full);
        if want_full != sync_full {
            let level = if want_full { "FULL" } else { "NORMAL" };
            if conn.pragma_update(None, "synchronous", level).is_ok() {
                sync_full = want_full;
            }
        }
        if run_batch(&mut conn, batch, sync_full || !want_full, &hooks) {
            outbox_wake.notify_waiters();
        }
    }
}

/// One transaction for the whole batch; each job under its own savepoint.
/// Returns true when a committed job added webhook outbox rows.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    durable_enough: bool,
    hooks: &[webhooks::Subscription],
) -> bool {
    if !durable_enough {
        // Could not switch to FULL: refuse durable jobs rather than
        // acknowledge them on a weaker commit.
        for job in batch {
            let _ = job
                .reply
                .send(Err(StoreError::msg("could not enable synchronous=FULL")));
        }
        return false;
    }
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for job in batch {
                let _ = job.reply.send(Err(StoreError::msg(format!(
                    "starting a transaction: {msg}"
                ))));
            }
            return false;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    let ctx = Tx::new(&tx, hooks);
    for job in batch {
        let outcome = match tx.execute_batch("SAVEPOINT job") {
            Ok(()) => {
                let r = (job.run)(&ctx);
                let end = if r.is_ok() {
                    tx.execute_batch("RELEASE job")
                } else {
                    tx.execute_batch("ROLLBACK TO job; RELEASE job")
                };
                match (r, end) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(StoreError::new("releasing savepoint", e)),
                }
            }
            Err(e) => Err(StoreError::new("savepoint", e)),
        };
        results.push((job.reply, outcome));
    }
    let outbox_added = ctx.outbox_added.get();
    match tx.commit() {
        Ok(()) => {
            for (reply, outcome) in results {
                let _ = reply.send(outcome);
            }
            outbox_added
        }
        Err(e) => {
            // The transaction is rolled back when the commit fails (or when
            // it is dropped): nothing of the batch is on disk.
            let msg = e.to_string();
            for (reply, _) in results {
                let _ = reply.send(Err(StoreError::msg(format!("commit failed: {msg}"))));
            }
            let _ = conn.execute_batch("ROLLBACK");
            false
        }
    }
}
