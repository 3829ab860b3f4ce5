//! The PostgreSQL side of `QueueStore`.

#[async_trait::async_trait]
impl crate::store::queue::QueueStore for super::Postgres {}
