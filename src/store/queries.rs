//! What the store answers: emails, events, statistics and the dashboard's
//! views; and retention, which prunes what those read.

use async_trait::async_trait;

#[async_trait]
pub trait QueryStore: Send + Sync {}
