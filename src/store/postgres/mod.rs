//! The PostgreSQL backend: one database shared by every relay node.
//!
//! A pool of connections; every write is its own transaction, committed
//! with `synchronous_commit` on where the caller asked for durability.
//! Queue and webhook claims take rows with `FOR UPDATE SKIP LOCKED` under a
//! lease naming the node, so nodes never wait for, or take, each other's
//! live work.

mod domains;
mod feedback;
mod queries;
mod queue;
mod tracking;

use super::{Result, StoreError, Subscription};
use std::sync::Arc;

#[allow(dead_code)] // hooks: used as the backend fills in
pub struct Postgres {
    pub(crate) pool: deadpool_postgres::Pool,
    /// This node's name: in leases, events and metrics.
    pub(crate) node_id: String,
    /// Webhook endpoints: events of their types get outbox rows.
    pub(crate) hooks: Vec<Subscription>,
    pub(crate) outbox_wake: Arc<tokio::sync::Notify>,
}

impl Postgres {
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
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| StoreError::new("the health probe", e))?;
        Ok(())
    }

    fn outbox_wake(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_wake.clone()
    }

    fn close(&self) {
        self.pool.close();
    }
}
