//! The PostgreSQL backend: one database shared by every relay node.
//!
//! A pool of connections; every write is its own transaction, committed
//! with `synchronous_commit` on where the caller asked for durability.
//! Queue and webhook claims take rows with `FOR UPDATE SKIP LOCKED` under a
//! lease naming the node, so nodes never wait for, or take, each other's
//! live work. A listening connection turns other nodes' `NOTIFY`s (new
//! mail, new webhook rows) into this node's wake-ups.

mod domains;
pub mod events;
mod feedback;
mod feedback_apply;
mod listen;
mod queries;
mod queue;
pub mod schema;
pub mod tls;
mod tracking;
mod webhooks;

use super::{Durability, Result, StoreError, Subscription};
use std::sync::Arc;

/// Notified by the queue on accept: runners on every node wake.
pub const QUEUE_CHANNEL: &str = "trackrelay_queue";
/// Notified when webhook outbox rows are added.
pub const OUTBOX_CHANNEL: &str = "trackrelay_outbox";

#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database?sslmode=...`. Never
    /// logged: it may carry the password.
    pub url: String,
    pub pool_size: usize,
    /// Extra trust anchors for the server's certificate (PEM).
    pub ca_file: Option<std::path::PathBuf>,
    pub node_id: String,
    pub webhooks: Vec<Subscription>,
}

pub struct Postgres {
    pub(crate) pool: deadpool_postgres::Pool,
    /// This node's name: in leases, events and metrics.
    pub(crate) node_id: String,
    /// Webhook endpoints: events of their types get outbox rows.
    pub(crate) hooks: Vec<Subscription>,
    pub(crate) outbox_wake: Arc<tokio::sync::Notify>,
    pub(crate) queue_wake: Arc<tokio::sync::Notify>,
    listener: tokio::task::JoinHandle<()>,
}

/// Context for driver errors: `.ctx("what was being done")`.
pub(crate) trait PgCtx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> PgCtx<T> for std::result::Result<T, tokio_postgres::Error> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| StoreError::new(what.to_string(), PgError(e)))
    }
}

/// A driver error that shows the server's message and SQLSTATE (the
/// driver's own Display says only "db error", which no operator can act on).
#[derive(Debug)]
pub(crate) struct PgError(pub tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(f, "{} ({})", db.message(), db.code().code())?;
                if let Some(d) = db.detail() {
                    write!(f, ": {d}")?;
                }
                Ok(())
            }
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Whether a failed write may succeed if its transaction is run again: a
/// deadlock or a serialization failure between nodes.
pub(crate) fn is_transient(e: &StoreError) -> bool {
    use tokio_postgres::error::SqlState;
    e.source
        .as_ref()
        .and_then(|s| s.downcast_ref::<PgError>())
        .and_then(|p| p.0.code())
        .is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        })
}

/// Starts a transaction; `Normal` durability turns `synchronous_commit`
/// off for it alone (tracking events: a crash of the server may lose the
/// last ones, never corrupt anything).
pub(crate) async fn begin(
    client: &mut deadpool_postgres::Object,
    durability: Durability,
) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await.ctx("starting a transaction")?;
    if durability == Durability::Normal {
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .ctx("setting synchronous_commit")?;
    }
    Ok(tx)
}

/// Parses a store URL without ever echoing it (it may hold a password).
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    url.parse::<tokio_postgres::Config>().map_err(|e| {
        StoreError::msg(format!(
            "store.url is not a usable PostgreSQL URL (postgres://user:password@host/database): {e}"
        ))
    })
}

fn connector(options: &PgOptions) -> Result<tls::MakeRustls> {
    let pem = match &options.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            StoreError::msg(format!("store.ca_file: reading {}: {e}", path.display()))
        })?),
        None => None,
    };
    tls::MakeRustls::new(pem.as_deref()).map_err(StoreError::msg)
}

impl Postgres {
    /// Connects, applies the migrations this database lacks (under an
    /// advisory lock, so nodes may start together) and starts listening for
    /// the other nodes' notifications.
    pub async fn connect(options: PgOptions) -> Result<Postgres> {
        let config = parse_url(&options.url)?;
        let tls = connector(&options)?;
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tls.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::new("building the PostgreSQL pool", e))?;
        {
            let mut client = pool
                .get()
                .await
                .map_err(|e| StoreError::new("connecting to PostgreSQL", e))?;
            schema::migrate(&mut client).await?;
        }
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let queue_wake = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(listen::run(
            config,
            tls,
            queue_wake.clone(),
            outbox_wake.clone(),
        ));
        Ok(Postgres {
            pool,
            node_id: options.node_id,
            hooks: options.webhooks,
            outbox_wake,
            queue_wake,
            listener,
        })
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::new("connecting to PostgreSQL", e))
    }
}

#[async_trait::async_trait]
impl super::Backend for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn health(&self) -> Result<()> {
        let client = self.client().await?;
        let version = schema::current_version(&client).await?;
        if version != schema::version() {
            return Err(StoreError::msg(format!(
                "the database is at schema version {version}, expected {}",
                schema::version()
            )));
        }
        client
            .query_one("SELECT count(*) FROM (SELECT 1 FROM emails LIMIT 1) e", &[])
            .await
            .ctx("the health probe")?;
        Ok(())
    }

    fn outbox_wake(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_wake.clone()
    }

    fn queue_wake(&self) -> Arc<tokio::sync::Notify> {
        self.queue_wake.clone()
    }

    fn close(&self) {
        self.listener.abort();
        self.pool.close();
    }
}
