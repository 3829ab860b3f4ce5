//! What the store does for the queue: accepting an email with its
//! recipients, claiming due recipients under a lease, recording attempts.

use async_trait::async_trait;

#[async_trait]
pub trait QueueStore: Send + Sync {}
