//! The store: everything trackrelay keeps, behind one interface.
//!
//! The rest of trackrelay sees only the traits here (`QueueStore`,
//! `TrackingStore`, `FeedbackStore`, `DomainStore`, `QueryStore`, gathered
//! in `Backend`)
//! and the domain types they take and return. SQL and driver types live in
//! the two backends: `sqlite` (the default: one file, one process) and
//! `postgres` (one server shared by several relay nodes).

pub mod copy;
pub mod domains;
pub mod feedback;
pub mod open;
pub mod postgres;
pub mod queries;
pub mod queue;
pub mod retention;
pub mod sqlite;
pub mod tracking;

pub use domains::DomainStore;
pub use feedback::FeedbackStore;
pub use queries::QueryStore;
pub use queue::QueueStore;
pub use tracking::{Subscription, TrackingStore};

pub use crate::time::{now_ms, parse_time, rfc3339};
pub use sqlite::create_private_dir;
// Transitional: what callers used before the store became a trait. Each
// goes once the last caller is converted to the trait's methods.
pub use sqlite::{open_reader, open_writer, StoreOptions, Tx};

use async_trait::async_trait;
use std::sync::Arc;

/// The traits callers need in scope to call the store's methods.
pub mod prelude {
    pub use super::{DomainStore, FeedbackStore, QueryStore, QueueStore, TrackingStore};
}

#[derive(Debug)]
pub struct StoreError {
    pub context: String,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    pub fn new(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn msg(context: impl Into<String>) -> Self {
        StoreError {
            context: context.into(),
            source: None,
        }
    }

    pub fn within(self, context: &str) -> StoreError {
        StoreError {
            context: format!("{context}: {}", self.context),
            source: self.source,
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
    /// On disk before the caller hears back (SQLite `synchronous=FULL`,
    /// PostgreSQL `synchronous_commit=on`).
    Full,
    /// Survives a process crash, may lose the last commits on power loss.
    Normal,
}

/// One backend: every area of the store, and its own upkeep.
#[async_trait]
pub trait Backend:
    QueueStore + TrackingStore + FeedbackStore + DomainStore + QueryStore + Send + Sync
{
    /// `sqlite` or `postgres`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// This node's name (`server.node_id`): in leases, events and metrics.
    fn node_id(&self) -> &str;

    /// Whether the store can take writes now; the error says what is wrong.
    async fn health(&self) -> Result<()>;

    /// Notified after a commit that added webhook outbox rows (by any node,
    /// on a shared store).
    fn outbox_wake(&self) -> Arc<tokio::sync::Notify>;

    /// Notified when mail is accepted (by any node, on a shared store):
    /// the delivery runner's wake-up.
    fn queue_wake(&self) -> Arc<tokio::sync::Notify>;

    /// Finishes the writes under way and lets go of the database.
    fn close(&self);
}

/// The handle every part of trackrelay holds: cheap to clone, one backend
/// behind it.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Transitional: the closure interface of the SQLite backend, for the
    /// callers not yet converted to the traits.
    sqlite: Option<sqlite::Sqlite>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &(dyn Backend + 'static) {
        &*self.backend
    }
}

impl Store {
    /// Opens (creating and migrating if needed) a SQLite store.
    pub fn open(path: &std::path::Path, options: StoreOptions) -> Result<Store> {
        Ok(Store::from_sqlite(sqlite::Sqlite::open(path, options)?))
    }

    pub fn from_sqlite(db: sqlite::Sqlite) -> Store {
        Store {
            backend: Arc::new(db.clone()),
            sqlite: Some(db),
        }
    }

    pub fn from_postgres(db: postgres::Postgres) -> Store {
        Store {
            backend: Arc::new(db),
            sqlite: None,
        }
    }

    fn sqlite(&self) -> Result<&sqlite::Sqlite> {
        self.sqlite.as_ref().ok_or_else(|| {
            StoreError::msg(format!(
                "internal: a SQLite-only operation on the {} store",
                self.backend.kind()
            ))
        })
    }

    /// Transitional: see `sqlite::Sqlite::write`.
    pub async fn write<T, F>(&self, durability: Durability, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.sqlite()?.write(durability, f).await
    }

    /// Transitional: see `sqlite::Sqlite::read`.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.sqlite()?.read(f).await
    }

    /// Transitional: the SQLite file, for the callers that still open it.
    pub fn path(&self) -> &std::path::Path {
        match &self.sqlite {
            Some(db) => db.path(),
            None => std::path::Path::new(""),
        }
    }
}

/// The event's detail with `node` added (an object gains the key; no
/// detail becomes `{"node": ...}`).
pub(crate) fn detail_with_node(
    detail: Option<&serde_json::Value>,
    node: &str,
) -> Option<serde_json::Value> {
    match detail {
        Some(serde_json::Value::Object(map)) => {
            let mut map = map.clone();
            map.entry("node")
                .or_insert_with(|| serde_json::Value::String(node.to_string()));
            Some(serde_json::Value::Object(map))
        }
        Some(other) => Some(other.clone()),
        None => Some(serde_json::json!({ "node": node })),
    }
}
