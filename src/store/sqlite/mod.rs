//! The SQLite backend: one file, one writer thread, group commit.
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

mod checkpoint;
pub mod dashboard;
pub mod domains;
pub mod emails;
pub mod events;
pub mod feedback;
pub mod mta_sts;
pub mod queries;
pub mod queue;
pub mod reports;
pub mod retention;
pub mod rollups;
pub mod schema;
pub mod spool;
pub mod sql;
pub mod stats;
pub mod suppressions;
pub mod tls_reports;
pub mod tracking;
pub mod unsubscribe;
pub mod webhooks;

use rusqlite::{Connection, OpenFlags, Transaction};
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use super::{Result, StoreError};
pub use crate::time::{now_ms, parse_time, rfc3339};

pub use super::Durability;

type JobResult = std::result::Result<Box<dyn Any + Send>, StoreError>;
type JobFn = Box<dyn FnOnce(&Tx<'_>) -> JobResult + Send>;

/// What a write job sees: the batch's transaction, and the webhook
/// subscriptions, so an event and its outbox rows commit together.
pub struct Tx<'a> {
    pub conn: &'a Transaction<'a>,
    pub hooks: &'a [webhooks::Subscription],
    /// This node's name, for `detail.node` of the events stored ("" in
    /// unit tests: none).
    pub node: &'a str,
    /// Set when a job added webhook outbox rows: the webhook workers are
    /// woken after the commit.
    pub outbox_added: std::cell::Cell<bool>,
    /// Where bodies go; `None` (unit tests' bare transactions) keeps them
    /// in the row.
    pub spool: Option<&'a std::cell::RefCell<spool::Spool>>,
}

impl<'a> Tx<'a> {
    pub fn new(conn: &'a Transaction<'a>, hooks: &'a [webhooks::Subscription]) -> Self {
        Tx {
            conn,
            hooks,
            node: "",
            outbox_added: std::cell::Cell::new(false),
            spool: None,
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
    /// This node's name (`server.node_id`).
    pub node_id: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            webhooks: Vec::new(),
            node_id: crate::config::default_node_id(),
        }
    }
}

#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    outbox_wake: Arc<tokio::sync::Notify>,
    /// One process: only its own accepts wake its runner.
    queue_wake: Arc<tokio::sync::Notify>,
    /// The database file the writer opened; a different one at `path`
    /// means it was deleted or replaced under us.
    file: FileId,
    broken: Arc<Broken>,
}

/// How often an idle writer checks that its database file is still there,
/// so a deleted store is logged even when nothing is written.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Device and inode: a deleted or replaced database file has other ones
/// (or none) at the same path, while the open connection keeps writing to
/// the old, unlinked file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Why the file at `path` is not the one the writer has open. `sticky` is
/// true when it never gets better by itself (deleted or replaced).
struct FileProblem {
    reason: String,
    sticky: bool,
}

fn check_file(path: &Path, expected: FileId) -> std::result::Result<(), FileProblem> {
    match FileId::of(path) {
        Ok(id) if id == expected => Ok(()),
        Ok(_) => Err(FileProblem {
            reason: format!(
                "the database file {} was replaced while trackrelay had it open; \
                 writes would go to the old, unlinked file",
                path.display()
            ),
            sticky: true,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FileProblem {
            reason: format!(
                "the database file {} was deleted while trackrelay had it open; \
                 writes would be lost at the next restart",
                path.display()
            ),
            sticky: true,
        }),
        Err(e) => Err(FileProblem {
            reason: format!("cannot check the database file {}: {e}", path.display()),
            sticky: false,
        }),
    }
}

/// The reason the writer refuses every write, once it has one. Never
/// cleared: writing on would lose data, so it takes an operator (and a
/// restart) to resume.
#[derive(Default)]
struct Broken(Mutex<Option<String>>);

impl Broken {
    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, reason: String) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!("store: refusing every write until restarted: {reason}");
            *slot = Some(reason);
        }
    }
}

/// Creates a directory (and missing parents) readable by its owner only,
/// whatever the umask. An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates an empty database file 0600 unless one exists. SQLite gives its
/// -wal and -shm files the database file's mode, so they follow.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        // The umask may have taken more bits than asked; set exactly 0600.
        Ok(f) => f.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn open_connection(path: &Path, flags: OpenFlags, busy: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::new(format!("opening {}", path.display()), e))?;
    conn.busy_timeout(busy)
        .map_err(|e| StoreError::new("setting busy_timeout", e))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| StoreError::new("enabling foreign keys", e))?;
    // rusqlite keeps 16 prepared statements by default; the writer runs
    // more distinct ones than that (queue, events, rollups, webhooks,
    // reports, suppressions, domains), and each one pushed out is parsed
    // and planned again on its next use. (This did not change the feedback
    // processor's CPU in bench/inbound_linked.sh: the re-preparing seen
    // there is SQLite's own, `sqlite3Reprepare` from `sqlite3_step`.)
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

fn missing_database(path: &Path) -> StoreError {
    StoreError::msg(format!(
        "no database at {} (has `trackrelay serve` run with this config?)",
        path.display()
    ))
}

/// Opens a connection for reading only (CLI commands, API queries).
pub fn open_reader(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(missing_database(path));
    }
    open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Duration::from_secs(5),
    )
}

/// Opens a connection that may write, for one-off operator commands
/// (`queue retry`, `queue delete`) that run beside a serving process. It
/// never creates a database: only `serve` does, deliberately.
pub fn open_writer(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(missing_database(path));
    }
    let mut conn = open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Duration::from_secs(10),
    )?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| StoreError::new("enabling WAL", e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| StoreError::new("setting synchronous", e))?;
    schema::migrate(&mut conn).map_err(|e| StoreError::new("migrating the schema", e))?;
    Ok(conn)
}

/// Reads pages a working store must have: the header (schema version) and
/// the root page of `emails`.
fn probe(conn: &Connection) -> rusqlite::Result<i64> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    conn.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM emails LIMIT 1)",
        [],
        |r| r.get::<_, i64>(0),
    )?;
    Ok(version)
}

impl Sqlite {
    /// Opens (creating and migrating if needed) and starts the writer thread.
    /// A new directory is made 0700 and a new database 0600.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Sqlite> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                create_private_dir(dir)
                    .map_err(|e| StoreError::msg(format!("creating {}: {e}", dir.display())))?;
            }
        }
        create_private_file(path)
            .map_err(|e| StoreError::msg(format!("creating {}: {e}", path.display())))?;
        let mut conn = open_writer(path)?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| StoreError::new("setting busy_timeout", e))?;
        // Each job runs in a savepoint of the batch's transaction, and a
        // savepoint journals the pages it changes; past 64 KB SQLite spills
        // that journal to a temporary file it opens, writes page by page
        // and deletes, once per batch (bench/relay.sh: ~0.1 openat and 3
        // pwrite per message). In memory it is a copy. Only this
        // connection: its statements are small, unlike the readers' sorts.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(|e| StoreError::new("setting temp_store", e))?;
        checkpoint::start(&mut conn, path, options.busy_timeout)?;
        let file = FileId::of(path)
            .map_err(|e| StoreError::msg(format!("reading {}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let broken = Arc::new(Broken::default());
        let writer = Writer {
            conn,
            path: path.to_path_buf(),
            file,
            hooks: options.webhooks.clone(),
            node: options.node_id.clone(),
            outbox_wake: outbox_wake.clone(),
            broken: broken.clone(),
            sync_full: true,
            spool: std::cell::RefCell::new(spool::Spool::new(path)),
        };
        let max_batch = options.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx, max_batch))
            .map_err(|e| StoreError::msg(format!("starting the writer thread: {e}")))?;
        Ok(Sqlite {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                options,
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(writer)),
                outbox_wake,
                queue_wake: Arc::new(tokio::sync::Notify::new()),
                file,
                broken,
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

    /// Whether the store can take writes now: the writer thread runs and
    /// answers, the database file is still the one it opened, and both the
    /// writer and a reader read real pages of it at the expected schema
    /// version. The error says what is wrong.
    pub async fn health(&self) -> Result<()> {
        if let Some(reason) = self.inner.broken.get() {
            return Err(StoreError::msg(reason));
        }
        let finished = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|h| h.is_finished());
        if finished {
            return Err(StoreError::msg("the store writer thread has stopped"));
        }
        if let Err(p) = check_file(&self.inner.path, self.inner.file) {
            if p.sticky {
                self.inner.broken.set(p.reason.clone());
            }
            return Err(StoreError::msg(p.reason));
        }
        let expected = schema::version() as i64;
        let check = |who: &str, version: i64| {
            if version == expected {
                Ok(())
            } else {
                Err(StoreError::msg(format!(
                    "the {who} sees schema version {version}, expected {expected}"
                )))
            }
        };
        let written = self.write(Durability::Normal, |tx| probe(tx)).await;
        check(
            "writer",
            written.map_err(|e| e.within("the writer's probe"))?,
        )?;
        let read = self.read(probe).await;
        check("reader", read.map_err(|e| e.within("a reader's probe"))?)
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
        let out = rx.await.map_err(|_| {
            StoreError::msg("the store writer dropped the write without an answer (see the log)")
        })??;
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

#[async_trait::async_trait]
impl super::Backend for Sqlite {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn node_id(&self) -> &str {
        &self.inner.options.node_id
    }

    async fn health(&self) -> Result<()> {
        Sqlite::health(self).await
    }

    fn outbox_wake(&self) -> Arc<tokio::sync::Notify> {
        Sqlite::outbox_wake(self)
    }

    fn queue_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.queue_wake.clone()
    }

    fn close(&self) {
        Sqlite::close(self)
    }
}

fn panic_message(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn fail_all(batch: Vec<Job>, reason: &str) {
    for job in batch {
        let _ = job.reply.send(Err(StoreError::msg(reason.to_string())));
    }
}

/// The writer thread's state: the only writing connection.
struct Writer {
    conn: Connection,
    path: PathBuf,
    file: FileId,
    hooks: Vec<webhooks::Subscription>,
    node: String,
    outbox_wake: Arc<tokio::sync::Notify>,
    broken: Arc<Broken>,
    sync_full: bool,
    spool: std::cell::RefCell<spool::Spool>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>, max_batch: usize) {
        loop {
            let first = match rx.recv_timeout(IDLE_CHECK) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(p) = check_file(&self.path, self.file) {
                        self.problem(p);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.batch(batch);
        }
    }

    fn problem(&self, p: FileProblem) {
        if p.sticky {
            self.broken.set(p.reason);
        } else {
            tracing::error!("store: {}", p.reason);
        }
    }

    fn batch(&mut self, batch: Vec<Job>) {
        if let Some(reason) = self.broken.get() {
            return fail_all(batch, &reason);
        }
        // Checked before every commit: a commit into a deleted file would be
        // acknowledged and then lost.
        if let Err(p) = check_file(&self.path, self.file) {
            let reason = p.reason.clone();
            self.problem(p);
            return fail_all(batch, &reason);
        }
        let want_full = batch.iter().any(|j| j.durability == Durability::Full);
        if want_full != self.sync_full {
            let level = if want_full { "FULL" } else { "NORMAL" };
            if self.conn.pragma_update(None, "synchronous", level).is_ok() {
                self.sync_full = want_full;
            }
        }
        let durable_enough = self.sync_full || !want_full;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_batch(
                &mut self.conn,
                batch,
                durable_enough,
                &self.hooks,
                &self.node,
                &self.spool,
            )
        }));
        match ran {
            Ok(true) => self.outbox_wake.notify_waiters(),
            Ok(false) => {}
            // Jobs' own panics are caught inside; this is the batch code's.
            // The unanswered jobs' callers hear that their write was dropped.
            Err(p) => tracing::error!(
                "store writer: a batch panicked and was rolled back: {}",
                panic_message(&*p)
            ),
        }
        // Whatever failed, the next batch must start outside a transaction;
        // a connection stuck inside one would fold later writes into it.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
            if !self.conn.is_autocommit() {
                self.broken.set(
                    "the writer's connection is stuck inside a transaction it cannot roll back"
                        .into(),
                );
            }
        }
    }
}

/// Runs a statement kept prepared: every job opens and releases a
/// savepoint, and parsing them again each time was most of their cost.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// One transaction for the whole batch; each job under its own savepoint.
/// A job that fails (or panics) is rolled back alone; if that rollback
/// itself fails, nothing of the batch can be trusted, so the whole batch
/// is rolled back and every job in it fails. Returns true when a committed
/// job added webhook outbox rows.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    durable_enough: bool,
    hooks: &[webhooks::Subscription],
    node: &str,
    spool: &std::cell::RefCell<spool::Spool>,
) -> bool {
    if !durable_enough {
        // Could not switch to FULL: refuse durable jobs rather than
        // acknowledge them on a weaker commit.
        fail_all(batch, "could not enable synchronous=FULL");
        return false;
    }
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            fail_all(batch, &format!("starting a transaction: {e}"));
            return false;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut abort: Option<String> = None;
    let ctx = Tx {
        node,
        spool: Some(spool),
        ..Tx::new(&tx, hooks)
    };
    let mut jobs = batch.into_iter();
    for job in jobs.by_ref() {
        if let Err(e) = run_cached(&tx, "SAVEPOINT job") {
            results.push((job.reply, Err(StoreError::new("savepoint", e))));
            continue;
        }
        let run = job.run;
        let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ctx))) {
            Ok(r) => r,
            Err(p) => {
                tracing::error!(
                    "store writer: a write panicked and was rolled back: {}",
                    panic_message(&*p)
                );
                Err(StoreError::msg("internal error: the write panicked"))
            }
        };
        let end = if r.is_ok() {
            run_cached(&tx, "RELEASE job")
        } else {
            tx.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        match end {
            Ok(()) => results.push((job.reply, r)),
            Err(e) => {
                let what = if r.is_ok() {
                    "releasing a savepoint"
                } else {
                    "rolling back a failed write"
                };
                abort = Some(format!("{what} failed ({e}), so its batch was rolled back"));
                let r = r.and(Err(StoreError::new(what, e)));
                results.push((job.reply, r));
                break;
            }
        }
    }
    if let Some(reason) = abort {
        tracing::error!("store writer: {reason}");
        if let Err(e) = tx.rollback() {
            tracing::error!("store writer: rolling back the batch failed too: {e}");
        }
        for (reply, outcome) in results {
            let _ = reply.send(outcome.and(Err(StoreError::msg(reason.clone()))));
        }
        fail_all(jobs.collect(), &reason);
        return false;
    }
    let outbox_added = ctx.outbox_added.get();
    // Bodies the batch appended are on disk before any row pointing at
    // them can be.
    if let Err(e) = spool.borrow_mut().sync() {
        let reason = format!("syncing message bodies failed ({e}), so their batch was rolled back");
        tracing::error!("store writer: {reason}");
        let _ = tx.rollback();
        for (reply, _) in results {
            let _ = reply.send(Err(StoreError::msg(reason.clone())));
        }
        return false;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn open(dir: &Path) -> Sqlite {
        Sqlite::open(&dir.join("data/t.sqlite3"), StoreOptions::default()).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A job for `run_batch` and the receiver of its answer.
    fn job(
        f: impl FnOnce(&Tx<'_>) -> rusqlite::Result<()> + Send + 'static,
    ) -> (Job, tokio::sync::oneshot::Receiver<JobResult>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let run: JobFn = Box::new(move |tx| {
            f(tx)
                .map(|v| Box::new(v) as Box<dyn Any + Send>)
                .map_err(|e| StoreError::new("write", e))
        });
        let job = Job {
            run,
            durability: Durability::Full,
            reply,
        };
        (job, rx)
    }

    fn scratch(dir: &Path) -> Connection {
        let c = Connection::open(dir.join("scratch.sqlite3")).unwrap();
        c.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        c
    }

    fn spool_of(dir: &Path) -> std::cell::RefCell<spool::Spool> {
        std::cell::RefCell::new(spool::Spool::new(&dir.join("scratch.sqlite3")))
    }

    #[test]
    fn a_batch_whose_bodies_cannot_be_synced_is_rolled_back_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = scratch(dir.path());
        let bodies = spool_of(dir.path());
        let (a, mut ra) = job(insert("a"));
        let spool_dir = spool::dir_for(&dir.path().join("scratch.sqlite3"));
        let (b, mut rb) = job(move |tx| {
            tx.spool.unwrap().borrow_mut().append(b"body").unwrap();
            // Gone before the batch's sync: its rows must not commit.
            std::fs::remove_dir_all(&spool_dir).unwrap();
            tx.execute("INSERT INTO t VALUES ('b')", []).map(|_| ())
        });
        run_batch(&mut c, vec![a, b], true, &[], "", &bodies);
        for r in [ra.try_recv().unwrap(), rb.try_recv().unwrap()] {
            let err = r.expect_err("nothing of the batch is acknowledged");
            assert!(
                err.to_string().contains("syncing message bodies failed"),
                "{err}"
            );
        }
        assert!(rows(&c).is_empty());
        assert!(c.is_autocommit());
        // The next batch appends to a new segment and commits.
        let (d, mut rd) = job(|tx| {
            tx.spool.unwrap().borrow_mut().append(b"next").unwrap();
            tx.execute("INSERT INTO t VALUES ('d')", []).map(|_| ())
        });
        run_batch(&mut c, vec![d], true, &[], "", &bodies);
        assert!(rd.try_recv().unwrap().is_ok());
        assert_eq!(rows(&c), ["d"]);
    }

    fn insert(v: &'static str) -> impl FnOnce(&Tx<'_>) -> rusqlite::Result<()> + Send {
        move |tx| tx.execute("INSERT INTO t VALUES (?1)", [v]).map(|_| ())
    }

    fn rows(c: &Connection) -> Vec<String> {
        let mut s = c.prepare("SELECT v FROM t ORDER BY v").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_panicking_job_fails_alone_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = scratch(dir.path());
        let (a, mut ra) = job(insert("a"));
        let (b, mut rb) = job(|tx| {
            tx.execute("INSERT INTO t VALUES ('b')", [])?;
            panic!("job b broke");
        });
        let (d, mut rd) = job(insert("d"));
        run_batch(&mut c, vec![a, b, d], true, &[], "", &spool_of(dir.path()));
        assert!(ra.try_recv().unwrap().is_ok());
        let err = rb.try_recv().unwrap().expect_err("the panicking job fails");
        assert!(err.to_string().contains("panicked"), "{err}");
        assert!(rd.try_recv().unwrap().is_ok());
        assert_eq!(rows(&c), ["a", "d"]);
        assert!(c.is_autocommit());
    }

    #[test]
    fn a_failed_savepoint_rollback_rolls_back_and_fails_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = scratch(dir.path());
        let (a, mut ra) = job(insert("a"));
        // Releasing its own savepoint makes the writer's `ROLLBACK TO job`
        // fail, leaving the job's row in the transaction.
        let (b, mut rb) = job(|tx| {
            tx.execute("INSERT INTO t VALUES ('b')", [])?;
            tx.execute_batch("RELEASE job")?;
            Err(rusqlite::Error::InvalidQuery)
        });
        let (d, mut rd) = job(insert("d"));
        run_batch(&mut c, vec![a, b, d], true, &[], "", &spool_of(dir.path()));
        for (name, rx) in [("a", &mut ra), ("b", &mut rb), ("d", &mut rd)] {
            let out = rx.try_recv().expect("every job is answered");
            assert!(out.is_err(), "job {name} must fail with its batch");
        }
        let why = ra.try_recv();
        assert!(why.is_err(), "answered once");
        assert!(rows(&c).is_empty(), "nothing of the batch is committed");
        assert!(c.is_autocommit(), "the transaction is over");

        // The next batch works.
        let (e, mut re) = job(insert("e"));
        run_batch(&mut c, vec![e], true, &[], "", &spool_of(dir.path()));
        assert!(re.try_recv().unwrap().is_ok());
        assert_eq!(rows(&c), ["e"]);
    }

    #[test]
    fn the_writer_survives_a_panicking_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        rt().block_on(async {
            let r = store
                .write(Durability::Full, |_| -> rusqlite::Result<()> {
                    panic!("boom")
                })
                .await;
            assert!(r.is_err());
            store
                .write(Durability::Full, |tx| tx.execute_batch("SELECT 1"))
                .await
                .expect("writes go on after a panic");
            store.health().await.expect("healthy");
        });
        store.close();
    }

    #[test]
    fn a_deleted_database_refuses_writes_and_fails_health() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        rt().block_on(async {
            store.health().await.expect("healthy at first");
            std::fs::remove_file(store.path()).unwrap();
            let err = store.health().await.expect_err("health sees the deletion");
            assert!(err.to_string().contains("was deleted"), "{err}");
            let err = store
                .write(Durability::Full, |tx| tx.execute_batch("SELECT 1"))
                .await
                .expect_err("a write into a deleted file is refused");
            assert!(err.to_string().contains("was deleted"), "{err}");
        });
        store.close();
    }

    #[test]
    fn a_replaced_database_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        rt().block_on(async {
            store
                .write(Durability::Full, |tx| tx.execute_batch("SELECT 1"))
                .await
                .unwrap();
            let other = dir.path().join("other");
            std::fs::write(&other, b"").unwrap();
            std::fs::rename(&other, store.path()).unwrap();
            let err = store
                .write(Durability::Full, |tx| tx.execute_batch("SELECT 1"))
                .await
                .expect_err("refused");
            assert!(err.to_string().contains("was replaced"), "{err}");
            assert!(store.health().await.is_err());
        });
        store.close();
    }

    #[test]
    fn health_fails_once_the_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.close();
        let err = rt().block_on(store.health()).expect_err("no writer");
        assert!(err.to_string().contains("writer"), "{err}");
    }

    #[test]
    fn health_fails_on_a_store_that_is_not_trackrelays() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        rt().block_on(async {
            store
                .write(Durability::Full, |tx| {
                    tx.execute_batch("PRAGMA user_version = 9999")
                })
                .await
                .unwrap();
            let err = store.health().await.expect_err("wrong schema");
            assert!(err.to_string().contains("schema version 9999"), "{err}");
        });
        store.close();
    }

    #[test]
    fn new_files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let old = unsafe { libc::umask(0o022) };
        let store = open(dir.path());
        unsafe { libc::umask(old) };
        rt().block_on(store.write(Durability::Full, |tx| {
            tx.execute_batch("CREATE TABLE x (v); INSERT INTO x VALUES (1)")
        }))
        .unwrap();
        let data = dir.path().join("data");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        for suffix in ["-wal", "-shm"] {
            let p = data.join(format!("t.sqlite3{suffix}"));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        store.close();
    }
}
